"""``paragen.infill``: a hole between a prefix and a suffix, decoded by ``diffusion``.

An oracle stub (a model that knows the whole text) shows the layout and the call count;
tiny random models in float64 show that the prefix and suffix are never changed and that
the caches read the suffix; bad input gets clear errors."""

from __future__ import annotations

import pytest
import torch

import paragen
from paragen.errors import ContextLengthError, InvalidInputError, UnsupportedOptionError
from paragen.models.base import Model, ModelInfo
from tests.helpers import DIFFUSION_EOS as EOS
from tests.helpers import DIFFUSION_MASK as MASK
from tests.helpers import DIFFUSION_V as V
from tests.helpers import tiny_diffusion as tiny


class Oracle(Model):
    """Knows the whole text ``truth``: its logits at position p are one-hot (scaled) on the
    token it predicts there (truth[p], or truth[p + 1] when shifted). It records every
    canvas it is fed, whole (no cache: it is called with the full canvas each time)."""

    def __init__(self, truth: list[int], shift: bool = False, max_length: int = 256) -> None:
        self.truth, self.tokenizer, self.fed = truth, None, []
        self.info = ModelInfo(vocab_size=V, max_length=max_length, eos_ids=(EOS,), mask_id=MASK,
                              attention="bidirectional", shift=shift)

    def forward(self, tokens, positions, cache=None, mask=None, return_hidden=False):
        assert cache is None, "the oracle reads whole canvases (cache='none')"
        self.fed.append(tokens[0].tolist())
        at = positions[0] + int(self.info.shift)
        want = torch.tensor([self.truth[p] if p < len(self.truth) else EOS for p in at.tolist()])
        return torch.nn.functional.one_hot(want, V).double()[None] * 50.0

    def new_cache(self, batch=1, max_length=None):
        raise AssertionError("the oracle is called without a cache")

    @property
    def dtype(self):
        return torch.float64


PREFIX, SPAN, SUFFIX = [3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5, 8]


@pytest.mark.parametrize("shift", [False, True])
def test_an_oracle_fills_the_hole_in_one_call_and_stops_at_end_of_text(shift):
    oracle = Oracle(PREFIX + SPAN + [EOS] * 5 + SUFFIX, shift=shift)  # a span, then pads, as --infill trains
    g = paragen.infill(oracle, PREFIX, SUFFIX, max_new_tokens=8, block_length=8)
    assert g.tokens == SPAN and g.stats.finish_reason == "eos"
    assert g.stats.target_calls == 1
    for canvas in oracle.fed:  # prefix and suffix as given, the hole between them
        assert canvas[:5] == PREFIX and canvas[-4:] == SUFFIX and len(canvas) == 5 + 8 + 4


def test_holes_at_the_start_at_the_end_and_empty():
    start = Oracle([EOS] + SPAN + [EOS, EOS] + SUFFIX)  # end-of-text stands before a hole at the start of a file
    assert paragen.infill(start, [], SUFFIX, max_new_tokens=5).tokens == SPAN
    assert start.fed[0][0] == EOS and start.fed[0][-4:] == SUFFIX
    end = Oracle(PREFIX + SPAN + [EOS])
    assert paragen.infill(end, PREFIX, [], max_new_tokens=4).tokens == SPAN
    empty = Oracle(PREFIX + [EOS] * 4 + SUFFIX)
    g = paragen.infill(empty, PREFIX, SUFFIX, max_new_tokens=4)
    assert g.tokens == [] and g.text == ""


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_a_real_model_reads_the_suffix_and_never_changes_it(cache):
    model = tiny(eos=EOS, seed=3)
    kw = dict(max_new_tokens=8, block_length=4, threshold=0.0, cache=cache)
    a = paragen.infill(model, PREFIX, SUFFIX, **kw)
    b = paragen.infill(model, PREFIX, [7, 7, 7, 7], **kw)
    assert a.tokens != b.tokens  # the hole depends on the suffix: full attention reads it
    assert MASK not in a.tokens and len(a.tokens) <= 8
    if cache == "none":  # without a cache, the hole equals a diffusion decode of the whole canvas
        logits = model(torch.tensor([PREFIX + [MASK] * 8 + SUFFIX]), torch.arange(17)[None])[0, 5:9]
        logits[:, MASK] = float("-inf")
        first = logits.argmax(-1).tolist()  # threshold 0: the first block in one call
        assert a.tokens[:4] == first[: len(a.tokens[:4])]


def test_bad_input_is_refused_with_what_to_do():
    oracle = Oracle(PREFIX + SPAN + SUFFIX, max_length=20)
    with pytest.raises(InvalidInputError, match="prefix or a suffix"):
        paragen.infill(oracle, [], [])
    with pytest.raises(ContextLengthError, match="smaller hole"):
        paragen.infill(oracle, PREFIX, SUFFIX, max_new_tokens=12)
    with pytest.raises(UnsupportedOptionError, match="not 'block_diffusion'"):
        paragen.infill(oracle, PREFIX, SUFFIX, strategy="block_diffusion")
    with pytest.raises(UnsupportedOptionError, match="drop grow"):
        paragen.infill(oracle, PREFIX, SUFFIX, max_new_tokens=4, grow=True)
    with pytest.raises(InvalidInputError, match="token ids"):
        paragen.infill(oracle, PREFIX, [V + 3])
    ar = tiny(attention="causal", mask=None)
    with pytest.raises(UnsupportedOptionError, match="autoregressive"):
        paragen.infill(ar, PREFIX, SUFFIX)
    block = tiny(attention="block_causal", block_size=4)
    with pytest.raises(UnsupportedOptionError, match="block-causal"):
        paragen.infill(block, PREFIX, SUFFIX)


def test_cli_suffix_file_refuses_an_ar_model_and_streaming(tmp_path, capsys):
    from paragen.cli import main

    suffix = tmp_path / "suffix.py"
    suffix.write_text("\n    return x\n")
    assert main(["generate", "--suffix-file", str(suffix), "def f(x):"]) == 2
    assert "autoregressive" in capsys.readouterr().err
    assert main(["generate", "--model", "code-diffusion", "--suffix-file", str(suffix), "--stream", "def f(x):"]) == 2
    assert "drop --stream" in capsys.readouterr().err
    assert main(["generate", "--model", "code-diffusion", "--suffix-file", str(tmp_path / "none.py"), "x"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_bench_holes_are_whole_lines_that_rebuild_the_text():
    from paragen.bench.infill import cut, first_lines, holes_of, normalised, parse_contenders, parses

    text = "def f(x):\n    y = x + 1\n    z = y * 2\n\n    w = z - 3\n    return w\n"
    holes = holes_of("t", text, body=1)
    assert [h.kind for h in holes] == ["single", "multi"]
    for h in holes:
        assert h.prefix + h.hole + h.suffix == text and h.hole.startswith("\n")
        assert parses(h, h.hole) and not parses(h, "\n    y = (")
    assert holes[0].hole == "\n    w = z - 3"  # the middle one of the 4 code lines
    assert holes[1].hole == "\n    z = y * 2\n\n    w = z - 3"  # 3 lines from a third of the way in
    assert cut("t", text, 1, 2).hole == "\n    y = x + 1\n    z = y * 2"
    assert normalised("\n    return w  \n\n") == "    return w"
    assert first_lines(" + 1\n    z = y\n    return z", 1) == "\n    z = y"  # from the first line break
    assert first_lines("\n    z = y\n    return z\n", 2) == "\n    z = y\n    return z"
    assert first_lines("x + 1", 1) == ""
    assert [c.label for c in parse_contenders("diffusion[threshold=0.5;cache=dual]")] == [
        "ar", "diffusion[threshold=0.5;cache=dual]"]
    with pytest.raises(InvalidInputError, match="contender"):
        parse_contenders("ar,lookup")
