"""Cache property tests: any sequence of appends, truncates and tree keeps gives the logits of
recomputing from scratch, for the native cache and the transformers adapter's cache."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paragen.cache import KVCache
from paragen.models.hf import HFModel
from tests.helpers import tiny_model

NATIVE = tiny_model(21, vocab=30)

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(st.integers(0, 29), min_size=1, max_size=6), st.integers(0, 6)),
        st.tuples(st.just("truncate"), st.integers(0, 40)),
        st.tuples(st.just("tree"), st.lists(st.tuples(st.integers(0, 29), st.integers(0, 5)), min_size=1, max_size=6),
                  st.integers(0, 5)),
    ),
    min_size=1, max_size=8,
)


def tree_layout(nodes: list[tuple[int, int]]) -> tuple[list[int], list[int], torch.Tensor]:
    """Nodes (token, parent choice) -> parents (-1 = root), depths, ancestor mask [T, T]."""
    parents, depths = [], []
    for i, (_, choice) in enumerate(nodes):
        parent = -1 if i == 0 else min(choice, i) - 1  # -1 or an earlier node
        parents.append(parent)
        depths.append(0 if parent < 0 else depths[parent] + 1)
    mask = torch.zeros(len(nodes), len(nodes), dtype=torch.bool)
    for i in range(len(nodes)):
        j = i
        while j >= 0:
            mask[i, j] = True
            j = parents[j]
    return parents, depths, mask


def path_to(parents: list[int], leaf: int) -> list[int]:
    path = []
    while leaf >= 0:
        path.append(leaf)
        leaf = parents[leaf]
    return path[::-1]


def check(model, cache, seq: list[int]) -> None:
    """Next-token logits with the cache equal a full recompute over seq + probe."""
    probe = 7
    with torch.inference_mode():
        cached = model(torch.tensor([[probe]]), torch.tensor([[len(seq)]]), cache=cache)[0, -1]
        full = model(torch.tensor([seq + [probe]]), torch.arange(len(seq) + 1)[None])[0, -1]
    torch.testing.assert_close(cached, full, rtol=1e-9, atol=1e-9)


def apply_ops(model, cache, operations) -> None:
    seq: list[int] = [1]
    with torch.inference_mode():
        model(torch.tensor([seq]), torch.tensor([[0]]), cache=cache)
    cache.commit(1)
    for op in operations:
        if op[0] == "append":
            tokens, n = op[1], min(op[2], len(op[1]))
            model(torch.tensor([tokens]), torch.arange(len(seq), len(seq) + len(tokens))[None], cache=cache)
            cache.commit(n)
            seq += tokens[:n]
        elif op[0] == "truncate":
            n = min(op[1], len(seq))
            cache.truncate(n)
            del seq[n:]
        else:
            nodes, leaf = op[1], min(op[2], len(op[1]) - 1)
            parents, depths, mask = tree_layout(nodes)
            tokens = [t for t, _ in nodes]
            positions = torch.tensor([[len(seq) + d for d in depths]])
            model(torch.tensor([tokens]), positions, cache=cache, mask=mask[None])
            path = path_to(parents, leaf)
            cache.keep(path)
            seq += [tokens[i] for i in path]
        if seq:
            check(model, cache, seq)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations=ops)
def test_native_cache_matches_recompute(operations):
    apply_ops(NATIVE, NATIVE.new_cache(max_length=128), operations)


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory, tokenizer):
    from paragen.models.io import save_model

    path = save_model(NATIVE, tokenizer, tmp_path_factory.mktemp("hf") / "m", dtype=torch.float64)
    return HFModel.from_dir(path, torch.float64)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(operations=ops)
def test_hf_cache_matches_recompute(hf_model, operations):
    apply_ops(hf_model, hf_model.new_cache(), operations)


def test_cache_rejects_overflow_and_bad_truncate():
    cache = KVCache(1, 1, 1, 4, max_length=3, dtype=torch.float32)
    with pytest.raises(IndexError):
        cache.write(0, torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(IndexError):
        cache.truncate(1)


def test_rows_of_trees_match_each_row_alone():
    """Per-row trees: ``tree_mask`` lets row b's new tokens see its committed slots and its own
    tree only, and ``keep_rows`` keeps each row's path; the logits after that equal each row's
    sequence recomputed alone (ragged rows, different paths, a row keeping just its root)."""
    model = NATIVE
    seqs = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]]
    # each row's tree: root, two children, a grandchild under the second child (parents by index)
    trees = [[5, 20, 21, 22], [7, 23, 24, 25], [11, 26, 27, 28]]
    parents = [-1, 0, 0, 2]
    shape = torch.zeros(4, 4, dtype=torch.bool)
    for i, p in enumerate(parents):
        if p >= 0:
            shape[i] = shape[p]
        shape[i, i] = True
    paths = [[0, 2, 3], [0], [0, 1]]  # offsets kept per row (root first)
    cache = model.new_cache(batch=3, max_length=16)
    with torch.inference_mode():
        x = torch.tensor([s[:-1] + [0] * (6 - len(s)) for s in seqs])
        model(x, cache.slots(5), cache=cache, mask=cache.mask(5))
        cache.commit_rows([len(s) - 1 for s in seqs])
        depth = torch.tensor([0, 1, 1, 2])
        positions = torch.tensor([[len(s) - 1] for s in seqs]) + depth
        tree_logits = model(torch.tensor(trees), positions, cache=cache, mask=cache.tree_mask(shape.repeat(3, 1, 1)))
        for b, s in enumerate(seqs):  # every node scored as its root-to-node chain alone
            for node in range(4):
                chain, n = [], node
                while n >= 0:
                    chain.insert(0, trees[b][n])
                    n = parents[n]
                alone = model(torch.tensor([s[:-1] + chain]), torch.arange(len(s) - 1 + len(chain))[None])[0, -1]
                torch.testing.assert_close(tree_logits[b, node], alone, rtol=1e-9, atol=1e-9)
        cache.keep_rows(paths)
        assert cache.rows == [len(s) - 1 + len(p) for s, p in zip(seqs, paths)]
        kept = [s[:-1] + [trees[b][i] for i in p] for b, (s, p) in enumerate(zip(seqs, paths))]
        nxt = torch.tensor([[3], [4], [5]])
        after = model(nxt, cache.slots(1), cache=cache, mask=cache.mask(1))[:, 0]
        for b, k in enumerate(kept):
            alone = model(torch.tensor([k + [int(nxt[b])]]), torch.arange(len(k) + 1)[None])[0, -1]
            torch.testing.assert_close(after[b], alone, rtol=1e-9, atol=1e-9)
