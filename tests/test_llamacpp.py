"""The llamacpp backend (paragen.models.llamacpp): logits against the native backend on the same
weights, every lossless strategy against the backend's own ``ar`` (greedy: batch 1, ragged
batches, trees; sampled: the TV test of tests/test_sampling.py), cache operations against a
recomputation, clear errors for what it cannot run, and the bench's llama.cpp peers."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

import paragen
from paragen.errors import InvalidInputError, ModelLoadError, ParagenError, UnsupportedOptionError
from paragen.models.io import save_model
from paragen.models.native import NativeConfig, NativeModel
from paragen.sampling import SamplingParams
from tests.helpers import tv, tv_bound

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install 'paragen[llamacpp]')")
from paragen.models.llamacpp import LlamaCppModel, TreeTooLargeError, load_llamacpp  # noqa: E402

PROMPT = "def add(a, b):\n    return a + b\n\nclass Point:\n"


@pytest.fixture(scope="module")
def dirs(model_dir, tokenizer, tmp_path_factory) -> tuple:
    """The conftest tiny model (float32, real tokenizer) and a smaller draft on the same tokenizer."""
    draft = NativeModel(NativeConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, eos_token_id=tokenizer.eos_id,
    )).init_weights(5, std=0.3)
    return model_dir, save_model(draft, tokenizer, tmp_path_factory.mktemp("draft") / "draft", dtype=torch.float32)


@pytest.fixture(scope="module")
def models(dirs) -> dict:
    target, draft = dirs
    return {"native": paragen.load(target), "target": paragen.load(target, backend="llamacpp", threads=1),
            "draft": paragen.load(draft, backend="llamacpp", threads=1)}


@pytest.fixture(scope="module")
def ids(models) -> list[int]:
    return models["native"].tokenizer.encode(PROMPT)


def full(model, seq: list[int]) -> torch.Tensor:
    """Logits of every position of ``seq`` from one call without a cache [T, V]: the recomputation."""
    return model(torch.tensor([seq]), torch.arange(len(seq))[None])[0]


# ---------------------------------------------------------------- parity with the native backend


def test_logits_and_hidden_states_equal_the_native_backend_on_the_same_weights(models, ids):
    native, lc = models["native"], models["target"]
    seq = ids + native.tokenizer.encode("    def __init__(self, x):\n        self.x = x\n")
    with torch.inference_mode():
        want, want_h = native(torch.tensor([seq]), torch.arange(len(seq))[None], return_hidden=True)
        got, got_h = lc(torch.tensor([seq]), torch.arange(len(seq))[None], return_hidden=True)
    diff = (got[0] - want[0]).abs().amax(-1)  # [T]
    scale = float(want.abs().max())
    bad = (diff > 1e-5 * max(scale, 1.0)).nonzero().flatten().tolist()
    # The first divergent position is reported, not hidden behind a global tolerance.
    assert not bad, f"first divergence at position {bad[0]} of {len(seq)}: {float(diff[bad[0]]):.3g} (max |logit| {scale:.3g})"
    torch.testing.assert_close(got_h[0], want_h[0], atol=1e-5, rtol=1e-5)
    assert lc.weight_format is None and lc.info.eos_ids == native.info.eos_ids
    assert lc.info.vocab_size == native.info.vocab_size


def test_f16_and_q8_0_are_labelled_lossy_and_stay_close(dirs, models, ids):
    native = models["native"]
    want = full(native, ids).detach()
    for dtype, tolerance in (("fp16-weights", 0.05), ("int8-weights", 0.5)):
        lc = paragen.load(dirs[0], backend="llamacpp", dtype=dtype, threads=1)
        assert "lossy" in lc.weight_format
        assert float((full(lc, ids) - want).abs().max().detach()) < tolerance * float(want.abs().max())
        out = paragen.generate(lc, ids, "ar", max_new_tokens=4)
        assert "lossy" in out.stats.extra["weights"]


def test_a_gguf_file_loads_with_the_tokenizer_beside_it(models, dirs, tmp_path):
    import shutil

    from paragen.models.gguf import write_gguf

    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (dirs[0] / name).exists():
            shutil.copy(dirs[0] / name, tmp_path / name)
    path = write_gguf(models["native"], tmp_path / "tiny.gguf", "f32")
    lc = paragen.load(path, backend="llamacpp", threads=1)
    assert lc.tokenizer is not None
    a = paragen.generate(lc, PROMPT, "ar", max_new_tokens=12)
    assert a.tokens == paragen.generate(models["target"], PROMPT, "ar", max_new_tokens=12).tokens
    alone = tmp_path / "alone"
    alone.mkdir()
    (tmp_path / "tiny.gguf").rename(alone / "tiny.gguf")
    with pytest.warns(paragen.models.NoTokenizerWarning):
        bare = paragen.load(alone / "tiny.gguf", backend="llamacpp", threads=1)
    ids = models["native"].tokenizer.encode(PROMPT)
    assert paragen.generate(bare, ids, "ar", max_new_tokens=12).tokens == a.tokens


# ---------------------------------------------------------------- every lossless strategy, greedy


def heads_for(model, kind: str):
    from paragen.heads import new_heads

    return new_heads(model, kind, 3, seed=1, std=0.3, zero_out=False)


CASES = [
    ("lookup", {}), ("lookup", {"max_ngram": 1, "max_draft": 2}), ("jacobi", {}), ("lookahead", {}),
    ("lookahead", {"window": 3, "ngram": 3, "guesses": 2}), ("speculative", {"draft": True}),
    ("tree", {"draft": True}), ("tree", {"draft": True, "shape": "static", "widths": "3,2,1"}),
    ("spectr", {"draft": True}), ("blockwise", {"heads": "blockwise"}), ("medusa", {"heads": "medusa"}),
    ("hydra", {"heads": "hydra"}), ("eagle", {"heads": "eagle"}),
]


def options(models, opts: dict) -> dict:
    out = dict(opts)
    if out.pop("draft", False):
        out["draft"] = models["draft"]
    if "heads" in out:
        out["heads"] = heads_for(models["target"], out["heads"])
    return out


@pytest.mark.parametrize("name,opts", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_every_lossless_strategy_equals_ar_on_the_backend(models, ids, name, opts):
    lc = models["target"]
    want = paragen.generate(lc, ids, "ar", max_new_tokens=24).tokens
    assert paragen.generate(lc, ids, name, max_new_tokens=24, **options(models, opts)).tokens == want


def test_ar_on_the_backend_equals_native_ar(models, ids):
    a = paragen.generate(models["target"], ids, "ar", max_new_tokens=32).tokens
    assert a == paragen.generate(models["native"], ids, "ar", max_new_tokens=32).tokens


def test_a_draft_identical_to_the_target_is_accepted(models, ids):
    lc = models["target"]
    want = paragen.generate(lc, ids, "ar", max_new_tokens=24)
    for name in ("speculative", "tree"):
        out = paragen.generate(lc, ids, name, max_new_tokens=24, draft=lc)
        assert out.tokens == want.tokens and out.stats.target_calls < want.stats.target_calls / 2


BATCHED = ["ar", "lookup", "speculative", "tree", "spectr", "medusa", "eagle"]


@pytest.mark.parametrize("name", BATCHED)
def test_ragged_batches_equal_each_prompts_ar(models, ids, name):
    lc = models["target"]
    prompts = [ids, ids[:4], ids[:11]]
    want = [paragen.generate(lc, p, "ar", max_new_tokens=16).tokens for p in prompts]
    opts = {"speculative": {"draft": True}, "tree": {"draft": True}, "spectr": {"draft": True},
            "medusa": {"heads": "medusa"}, "eagle": {"heads": "eagle"}}.get(name, {})
    rows = paragen.generate(lc, prompts, name, max_new_tokens=16, **options(models, opts))
    assert [r.tokens for r in rows] == want


# ---------------------------------------------------------------- sampling: the backend's ar distribution


def exact_warped(model, prompt: list[int], length: int, params: SamplingParams) -> dict:
    """P(x_1..x_L | prompt) under ``params`` from the model's no-cache calls, expanding only the
    tokens the warp keeps (top-k: a few sequences, where tests/test_sampling.py enumerates V^L)."""
    from paragen.sampling import warp

    if length == 0:
        return {(): 1.0}
    p = warp(full(model, prompt)[-1].detach(), params)
    out = {}
    for t in p.nonzero().flatten().tolist():
        for rest, q in exact_warped(model, prompt + [t], length - 1, params).items():
            out[(t, *rest)] = float(p[t]) * q
    return out


@pytest.fixture(scope="module")
def near_draft(dirs, tokenizer, tmp_path_factory):
    """The target with noise on its weights: it agrees with the target often, not always (a
    random draft's top-k misses the target's altogether, so nothing would be accepted)."""
    g = torch.Generator().manual_seed(0)
    model = paragen.load(dirs[0])
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1 * p.std())
    return save_model(model, tokenizer, tmp_path_factory.mktemp("near") / "near", dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize("strategy,params", [
    ("speculative", SamplingParams(1.0, top_k=3)),
    ("tree", SamplingParams(0.8, top_k=3)),
])
def test_sampled_rows_follow_the_backends_ar_distribution(dirs, near_draft, strategy, params):
    """Copies of a prompt in batches of 16 rows; top-k keeps the exact
    distribution (from the backend's own no-cache calls) to a few sequences. See
    tests/helpers.py for the bound."""
    lc = load_llamacpp(dirs[0], threads=1)
    draft = load_llamacpp(near_draft, threads=1)
    prompt = lc.tokenizer.encode("def add(a, b):\n")
    length, copies, calls = 2, 16, 120
    n = copies * calls
    exact = exact_warped(lc, prompt, length, params)
    extra = {"tree": {"shape": "static", "widths": "2,1", "draw": "without"}}.get(strategy, {})
    counts: Counter = Counter()
    accepted = proposed = 0
    for call in range(calls):
        rows = paragen.generate(lc, [prompt] * copies, strategy, max_new_tokens=length, temperature=params.temperature,
                                top_k=params.top_k, seed=[call * copies + j for j in range(copies)], draft=draft, **extra)
        for r in rows:
            counts[tuple(r.tokens)] += 1
            accepted += sum(r.stats.extra["accepted"])
            proposed += sum(r.stats.extra["proposed"])
    assert tv(counts, exact, n) < tv_bound(len(exact), n)
    assert 0 < accepted < proposed  # the residual path ran too


# ---------------------------------------------------------------- cache operations against recomputation


def test_truncate_then_feed_equals_recomputation(models, ids):
    lc = models["target"]
    cache = lc.new_cache()
    lc(torch.tensor([ids]), torch.arange(len(ids))[None], cache=cache)
    cache.commit(len(ids))
    extra = [5, 6, 7]
    lc(torch.tensor([extra]), torch.arange(len(ids), len(ids) + 3)[None], cache=cache)
    cache.commit(3)
    cache.truncate(len(ids) - 2)  # forget two prompt tokens and the extras
    tail = [9, 10, 11]
    got = lc(torch.tensor([tail]), torch.arange(len(ids) - 2, len(ids) + 1)[None], cache=cache)[0]
    torch.testing.assert_close(got, full(lc, ids[:-2] + tail)[-3:], atol=1e-5, rtol=1e-5)


def test_keeping_a_tree_path_equals_recomputation(models, ids):
    """A tree root -> (a -> c, b -> d): keep root, b, d; the next token sees exactly them."""
    lc = models["target"]
    cache = lc.new_cache()
    n = len(ids) - 1
    lc(torch.tensor([ids[:-1]]), torch.arange(n)[None], cache=cache)
    cache.commit(n)
    tokens = [ids[-1], 20, 21, 22, 23]  # root, a, b, c (under a), d (under b)
    parent = [-1, 0, 0, 1, 2]
    tree = torch.zeros(5, 5, dtype=torch.bool)
    for i in range(5):
        j = i
        while j >= 0:
            tree[i, j] = True
            j = parent[j]
    depth = [0, 1, 1, 2, 2]
    logits = lc(torch.tensor([tokens]), torch.tensor([[n + d for d in depth]]), cache=cache,
                mask=cache.tree_mask(tree[None]))[0]
    torch.testing.assert_close(logits[4], full(lc, ids + [21, 23])[-1], atol=1e-5, rtol=1e-5)
    cache.keep([0, 2, 4])
    assert cache.length == n + 3
    got = lc(torch.tensor([[30]]), torch.tensor([[n + 3]]), cache=cache)[0, 0]
    torch.testing.assert_close(got, full(lc, ids + [21, 23, 30])[-1], atol=1e-5, rtol=1e-5)


def test_a_drafters_level_by_level_tree_then_truncate_and_keep_equals_recomputation(models, ids):
    """The draft cache's pattern (strategies/drafter.py): levels fed with masks over every slot
    and committed, then truncate to the base and keep the accepted path."""
    lc = models["target"]
    cache = lc.new_cache()
    base = len(ids)
    lc(torch.tensor([ids]), torch.arange(base)[None], cache=cache)
    cache.commit(base)
    level1 = torch.zeros(2, base + 2, dtype=torch.bool)
    level1[:, :base] = True
    level1[0, base], level1[1, base + 1] = True, True
    lc(torch.tensor([[40, 41]]), torch.tensor([[base, base]]), cache=cache, mask=level1)
    cache.commit(2)
    level2 = torch.zeros(2, base + 4, dtype=torch.bool)  # 42 under 40, 43 under 41
    level2[:, :base] = True
    level2[0, [base, base + 2]] = True
    level2[1, [base + 1, base + 3]] = True
    out = lc(torch.tensor([[42, 43]]), torch.tensor([[base + 1, base + 1]]), cache=cache, mask=level2)[0]
    torch.testing.assert_close(out[1], full(lc, ids + [41, 43])[-1], atol=1e-5, rtol=1e-5)
    cache.commit(2)
    cache.truncate(base)
    cache.keep([1, 3])  # 41 then 43
    got = lc(torch.tensor([[44]]), torch.tensor([[base + 2]]), cache=cache)[0, 0]
    torch.testing.assert_close(got, full(lc, ids + [41, 43, 44])[-1], atol=1e-5, rtol=1e-5)


def test_rows_leaving_and_joining_a_batch_equal_recomputation(models, ids):
    lc = models["target"]
    prompts = [ids[:7], ids[:3], ids[:10]]
    cache = lc.new_cache(batch=3)
    width = max(map(len, prompts))
    padded = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    lc(padded, cache.slots(width), cache=cache, mask=cache.mask(width))
    cache.commit_rows([len(p) for p in prompts])
    free = len(lc.llama.free)
    cache.select([2, 0])  # the middle row finished: its sequence id is free again at once
    assert len(lc.llama.free) == free + 1
    joining = lc.new_cache(batch=1)
    lc(torch.tensor([ids[:5]]), torch.arange(5)[None], cache=joining)
    joining.commit(5)
    cache.extend(joining)
    rows = [prompts[2], prompts[0], ids[:5]]
    got = lc(torch.tensor([[50], [51], [52]]), cache.slots(1), cache=cache)[:, 0]
    for b, (row, t) in enumerate(zip(rows, (50, 51, 52))):
        torch.testing.assert_close(got[b], full(lc, row + [t])[-1], atol=1e-5, rtol=1e-5)
    assert cache.rows == [10, 7, 5]


def test_caches_give_their_rows_back(dirs):
    lc = load_llamacpp(dirs[0], threads=1, n_seq_max=2)
    for _ in range(5):  # more caches than sequence ids, one after another
        paragen.generate(lc, [1, 2, 3], "ar", max_new_tokens=3)
    cache = lc.new_cache(batch=2)
    with pytest.raises(InvalidInputError) as e:
        lc.new_cache(batch=1)
    assert "n_seq_max" in one_line(e)
    del cache, e
    lc.new_cache(batch=2)


# ---------------------------------------------------------------- bad input: one clear line each


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and len(text) < 400, text
    return text


def test_a_gguf_of_an_unsupported_architecture_is_refused(tmp_path):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(tmp_path / "bert.gguf"), "bert")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelLoadError) as e:
        paragen.load(tmp_path / "bert.gguf", backend="llamacpp")
    assert "architecture 'bert'" in one_line(e)
    with pytest.raises(ModelLoadError) as e:
        (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
        paragen.load(tmp_path / "junk.gguf", backend="llamacpp")
    one_line(e)


def test_a_tree_over_the_rows_sequence_ids_is_refused(dirs, ids):
    lc = load_llamacpp(dirs[0], threads=1, n_seq_max=3)  # the refused call's cache (one id) lives on in e
    draft = load_llamacpp(dirs[1], threads=1)
    with pytest.raises(TreeTooLargeError) as e:
        paragen.generate(lc, ids, "tree", max_new_tokens=8, draft=draft, shape="static", widths="4,1")
    assert "n_seq_max 3" in one_line(e)
    # two leaves fit: the same call shape runs
    out = paragen.generate(lc, ids, "tree", max_new_tokens=8, draft=draft, shape="static", widths="2,1")
    assert out.tokens == paragen.generate(lc, ids, "ar", max_new_tokens=8).tokens


def test_heads_are_refused_where_the_states_do_not_give_the_logits(dirs, ids):
    lc = paragen.load(dirs[0], backend="llamacpp", threads=1)
    embed, proj = lc.head_weights()
    lc._heads = (embed, proj * 2)  # as if llama.cpp's embeddings were not what its projection reads
    with pytest.raises(UnsupportedOptionError) as e:
        lc(torch.tensor([ids]), torch.arange(len(ids))[None], return_hidden=True)
    assert "native and hf" in one_line(e)


def test_bidirectional_calls_and_diffusion_models_are_refused_naming_the_backends(models, ids, tokenizer, tmp_path):
    lc = models["target"]
    with pytest.raises(UnsupportedOptionError) as e:
        lc(torch.tensor([ids]), torch.arange(len(ids))[None], mask=torch.ones(len(ids), len(ids), dtype=torch.bool))
    assert "native and hf" in one_line(e)
    diffusion = NativeModel(NativeConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, attention="bidirectional", mask_token_id=tokenizer.mask_id,
    )).init_weights(1)
    path = save_model(diffusion, tokenizer, tmp_path / "diffusion", dtype=torch.float32)
    with pytest.raises(UnsupportedOptionError) as e:
        paragen.load(path, backend="llamacpp")
    assert "backend native" in one_line(e)
    with pytest.raises(ParagenError) as e:
        paragen.generate(lc, ids, "diffusion", max_new_tokens=4)
    one_line(e)


def test_token_ids_outside_the_vocabulary_are_refused(models):
    with pytest.raises(InvalidInputError) as e:
        models["target"](torch.tensor([[1, 10_000]]), torch.arange(2)[None])
    assert "vocabulary" in one_line(e)


@pytest.mark.parametrize("kwargs,message", [
    ({"dtype": "bfloat16"}, "GGUF weight types"), ({"compile": True}, "CPU, uncompiled"),
])
def test_bad_load_arguments(dirs, kwargs, message):
    with pytest.raises(InvalidInputError) as e:
        paragen.load(dirs[0], backend="llamacpp", **kwargs)
    assert message in one_line(e)


# ---------------------------------------------------------------- the bench: peers and the backend


def test_bench_llamacpp_peers_and_backend_rows_are_exact(dirs, tmp_path, capsys):
    from paragen.cli import main

    target, draft = dirs
    for backend, strategies in (("native", "ar,llamacpp,llamacpp-f16"), ("llamacpp", "ar,speculative,lookup,llamacpp")):
        out = tmp_path / backend
        rc = main(["bench", "--strategies", strategies, "--task", "humaneval", "--limit", "2", "--max-new-tokens", "6",
                   "--model", str(target), "--draft", str(draft), "--backend", backend, "--threads", "1",
                   "--no-progress", "--out", str(out)])
        assert rc == 0
        summary = json.loads((out / "bench.json").read_text())["summary"]
        assert list(summary) == strategies.split(",")
        assert summary["llamacpp"]["exact"] == 1.0 and summary["llamacpp"]["peer"]
        for name in strategies.split(","):
            if name != "llamacpp-f16":
                assert summary[name]["exact"] == 1.0, (backend, name)
    capsys.readouterr()


def test_cli_generates_on_the_backend_from_a_directory_or_a_gguf_file(dirs, models, tmp_path, capsys):
    import shutil

    from paragen.cli import main
    from paragen.models.gguf import write_gguf

    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (dirs[0] / name).exists():
            shutil.copy(dirs[0] / name, tmp_path / name)
    gguf = write_gguf(models["native"], tmp_path / "tiny.gguf", "f32")
    texts = []
    for model in (dirs[0], gguf):
        assert main(["generate", "--model", str(model), "--backend", "llamacpp", "--strategy", "lookup",
                     "--max-new-tokens", "6", "--threads", "1", PROMPT]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] and texts[0] == texts[1]


def test_the_backend_is_a_model(models):
    assert isinstance(models["target"], LlamaCppModel) and isinstance(models["target"], paragen.models.Model)


@pytest.mark.parametrize("strategy", ["ar", "speculative", "tree", "eagle"])
def test_the_serving_engine_runs_on_the_backend(models, ids, strategy):
    """Requests joining and leaving the engine's running batch (cache.extend / select) equal each
    prompt alone on the backend."""
    from paragen.request import check_request
    from paragen.serve.engine import Engine, Entry
    from tests.helpers import drive, result

    lc = models["target"]
    prompts, budgets = [ids, ids[:3], ids[:8], ids[:5]], [10, 4, 7, 9]
    extra = options(models, {"speculative": {"draft": True}, "tree": {"draft": True},
                             "eagle": {"heads": "eagle"}}.get(strategy, {}))
    draft, heads = extra.pop("draft", None), extra.pop("heads", None)
    entries = []
    for p, n in zip(prompts, budgets):
        events: list = []
        request = check_request(lc, [p], strategy, n, 0.0, None, None, None, None, draft, heads, {})
        entries.append((Entry(request, lambda kind, value, ev=events: ev.append((kind, value))), events))
    drive(Engine(lc, max_batch=3), {0: [entries[0][0], entries[1][0]], 2: [entries[2][0]], 3: [entries[3][0]]})
    for (_, events), p, n in zip(entries, prompts, budgets):
        alone = paragen.generate(lc, p, "ar", max_new_tokens=n).tokens
        assert result(events).tokens == alone
