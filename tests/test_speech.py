"""Speech: CTC rules, decoders against their oracles, features, bad input (tiny random models, no espeak-ng)."""

from __future__ import annotations

import itertools
import math
import shutil

import numpy as np
import pytest
import torch

from paragen.errors import AudioInputError, UnknownStrategyError, UnsupportedOptionError
from paragen.speech import align, data, vocab
from paragen.speech.api import decode_batch, decode_features, options_for, transcribe
from paragen.speech.decode import DECODERS, ctc, mask_predict
from paragen.speech.decode.base import GreedyOptions, ctc_best_path, max_length
from paragen.speech.decode.ctc_draft import CTCDraft
from paragen.speech.features import SAMPLE_RATE, load_audio, log_mel
from paragen.speech.model import SpeechModel, load_speech_model, save_speech_model
from paragen.streaming import exhaust as run
from tests.helpers import tiny_speech as tiny


def features(frames: int = 60, seed: int = 0) -> torch.Tensor:
    """Random log-mel features [frames, 80] (float64)."""
    return torch.randn(frames, 80, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def encoded(model: SpeechModel, frames: int = 60, seed: int = 0):
    """An utterance's features and its encoding, as a transcription computes it."""
    x = features(frames, seed)
    return x, model.encode(x[None], torch.tensor([frames]))


def run_strategy(model: SpeechModel, x: torch.Tensor, strategy, **options):
    """One utterance's Transcript with a strategy (a name or a class) and its keyword options."""
    cls = DECODERS[strategy] if isinstance(strategy, str) else strategy
    return decode_features(model, x, strategy, options_for(cls.name, options))


def drafting(draft: list[int]) -> type[CTCDraft]:
    """``ctc_draft`` with ``draft`` in place of the CTC hypothesis."""

    class Given(CTCDraft):
        def hypothesis(self, memory, row: int) -> list[int]:
            return list(draft)

    return Given


# ---------------------------------------------------------------- CTC rules


def test_collapse_merges_repeats_then_drops_blanks():
    a, b, _ = 3, 4, vocab.BLANK
    assert align.collapse([a, a, _, a, b, b]) == [a, a, b]
    assert align.collapse([_, _, _]) == []
    assert align.collapse([_, a, a, a, _]) == [a]
    assert align.collapse([a, b, a]) == [a, b, a]
    assert align.collapse([]) == []


def brute_force_best_labelling(lp: torch.Tensor) -> tuple[tuple[int, ...], float]:
    """argmax over labellings of the summed probability of all alignments that collapse to it."""
    S, V = lp.shape
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=S):
        key = tuple(align.collapse(list(path)))
        totals[key] = totals.get(key, 0.0) + math.exp(sum(lp[t, path[t]].item() for t in range(S)))
    best = max(totals, key=totals.get)
    return best, totals[best]


@pytest.mark.parametrize("seed", range(12))
def test_prefix_beam_search_at_full_beam_finds_the_exact_best_labelling(seed):
    g = torch.Generator().manual_seed(seed)
    S, V = 5, 3  # blank + labels 1, 2 (ids below MASK are fine for the search itself)
    lp = (torch.randn(S, V, generator=g, dtype=torch.float64) * 1.5).log_softmax(-1)
    best, _ = brute_force_best_labelling(lp)
    assert tuple(ctc.prefix_beam_search(lp, beam=10_000)) == best


@pytest.mark.parametrize("seed", range(6))
def test_ctc_prefix_scores_equal_sums_over_every_alignment(seed):
    """psi(g + c) = log of the total probability of the alignments whose labelling starts with
    g + c, and psi(g + eos) that of those whose labelling is g, for every g up to length 3,
    by enumerating all alignments (blank 0, eos 1 never emitted by CTC, labels 2 and 3)."""
    g = torch.Generator().manual_seed(seed)
    S, V, eos = 5, 4, 1
    lp = (torch.randn(S, V, generator=g, dtype=torch.float64) * 1.5).log_softmax(-1)
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(V), repeat=S):
        key = tuple(align.collapse(list(path)))
        totals[key] = totals.get(key, 0.0) + math.exp(sum(lp[t, path[t]].item() for t in range(S)))
    scorer = align.CTCPrefixScorer(lp, eos, never=(0,))
    prefixes = [()] + [p for n in (1, 2) for p in itertools.product((2, 3), repeat=n)]
    for prefix in prefixes:
        r, last = scorer.initial()[None], torch.tensor([-1])
        for tok in prefix:  # walk to the prefix, one extension at a time
            _, r_all = scorer.extend(r, last)
            r, last = r_all[:, :, :, tok], torch.tensor([tok])
        psi, _ = scorer.extend(r, last)
        for c in (2, 3):
            starts = sum(p for lab, p in totals.items() if lab[: len(prefix) + 1] == (*prefix, c))
            assert psi[0, c].exp().item() == pytest.approx(starts, rel=1e-9, abs=1e-300), (prefix, c)
        assert psi[0, eos].exp().item() == pytest.approx(totals.get(prefix, 0.0), rel=1e-9, abs=1e-300), prefix
        assert psi[0, 0] == float("-inf")


def test_ctc_prefix_scorer_on_the_issue_example_with_a_zero_posterior():
    """A frame where label 2 has probability 0: the whole labelling [2] still has probability
    .135 (= exp(-ctc_loss)), not NaN."""
    lp = torch.tensor([[.5, .2, .3], [.5, .5, 0.], [.4, .3, .3]], dtype=torch.float64).log()  # blank 0, eos 1, label 2
    sc = align.CTCPrefixScorer(lp, 1, never=(0,))
    _, r = sc.extend(sc.initial()[None], torch.tensor([-1]))
    psi, _ = sc.extend(r[:, :, :, 2], torch.tensor([2]))
    assert psi[0, 1].exp().item() == pytest.approx(0.135, rel=1e-12)
    assert not psi.isnan().any()


def frame_recursion(lp: torch.Tensor, labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward variables r [T, 2] of a labelling by the plain frame-by-frame CTC recursion
    (Graves et al. 2006), in probabilities, so that zeros are plain zeros."""
    y = lp.exp()
    T = y.shape[0]
    r = torch.zeros(T, 2, dtype=torch.float64)  # (ends emitting the last label, ends in a blank)
    if not labels:
        r[:, 1] = y[:, 0].cumprod(0)
        return r
    prev = frame_recursion(lp, labels[:-1])
    c = labels[-1]
    allowed = prev[:, 1] + (prev[:, 0] if len(labels) < 2 or labels[-2] != c else 0)
    r[0, 0] = y[0, c] if len(labels) == 1 else 0.0
    for t in range(1, T):
        r[t, 0] = (r[t - 1, 0] + allowed[t - 1]) * y[t, c]
        r[t, 1] = (r[t - 1, 1] + r[t - 1, 0]) * y[t, 0]
    return r


@pytest.mark.parametrize("seed", range(6))
def test_ctc_prefix_scores_with_zero_posteriors_match_the_frame_recursion_and_ctc_loss(seed):
    """Random posteriors with about a third of their entries set to 0 (-inf): every one-token
    extension's forward variables equal the frame-by-frame recursion's, and the end probability
    of each labelling equals exp(-ctc_loss), in float64; nothing is NaN."""
    g = torch.Generator().manual_seed(seed)
    T, V, eos = 7, 5, 1
    y = torch.rand(T, V, generator=g, dtype=torch.float64)
    y[torch.rand(T, V, generator=g) < 0.35] = 0.0
    y[:, 0] = y[:, 0].clamp_min(0.05)  # keep the blank possible so that some labellings stay reachable
    lp = (y / y.sum(1, keepdim=True)).log()
    scorer = align.CTCPrefixScorer(lp, eos, never=(0,))
    assert not scorer.closed_form_safe
    for prefix in [()] + [p for n in (1, 2) for p in itertools.product((2, 3, 4), repeat=n)]:
        r, last = scorer.initial()[None], torch.tensor([-1])
        for tok in prefix:
            _, r_all = scorer.extend(r, last)
            r, last = r_all[:, :, :, tok], torch.tensor([tok])
        psi, r_next = scorer.extend(r, last)
        assert not psi.isnan().any() and not r_next.isnan().any()
        for c in (2, 3, 4):
            want = frame_recursion(lp, [*prefix, c])
            assert torch.allclose(r_next[0, :, :, c].exp(), want, rtol=1e-10, atol=0), (prefix, c)
        if prefix:
            loss = torch.nn.functional.ctc_loss(lp[:, None], torch.tensor([prefix]), torch.tensor([T]),
                                                torch.tensor([len(prefix)]), reduction="sum", zero_infinity=False)
            assert psi[0, eos].exp().item() == pytest.approx(torch.exp(-loss).item(), rel=1e-9, abs=1e-300), prefix


def test_ctc_prefix_scorer_closed_form_equals_the_recursion_where_safe():
    """On finite posteriors both paths give the same scores: the closed form is only a faster
    way to run the recursion."""
    g = torch.Generator().manual_seed(0)
    lp = (torch.randn(40, 6, generator=g, dtype=torch.float64) * 2).log_softmax(-1)
    scorer = align.CTCPrefixScorer(lp, 1, never=(0,))
    assert scorer.closed_form_safe
    r = torch.stack([scorer.initial(), scorer.extend(scorer.initial()[None], torch.tensor([-1]))[1][0, :, :, 3]])
    last = torch.tensor([-1, 3])
    phi = torch.logaddexp(r[:, :, 1, None], torch.where((torch.arange(6)[None] == last[:, None])[:, None, :],
                                                        float("-inf"), r[:, :, 0, None]))
    rn0 = torch.where((last < 0)[:, None], lp[0][None, :], float("-inf"))
    for a, b in zip(scorer._closed_form(phi, rn0), scorer._frame_by_frame(phi, rn0)):
        assert torch.allclose(a.exp(), b.exp(), rtol=1e-9, atol=1e-300)


def test_joint_ctc_attention_beam():
    """ctc_weight = 0 is plain beam search; a joint search returns characters and never the
    blank or the mask; weights outside [0, 1] are refused."""
    model = tiny(0)
    x, _ = encoded(model)
    plain = run_strategy(model, x, "beam", beam=3).tokens
    assert run_strategy(model, x, "beam", beam=3, ctc_weight=0.0).tokens == plain
    for lam in (0.3, 1.0):
        out = run_strategy(model, x, "beam", beam=3, ctc_weight=lam).tokens
        assert all(t > vocab.MASK for t in out)
    with pytest.raises(ValueError, match="ctc_weight"):
        DECODERS["beam"].Options(ctc_weight=1.5)


def test_viterbi_finds_the_best_alignment_of_a_target():
    g = torch.Generator().manual_seed(0)
    S, V = 6, 4
    for _ in range(10):
        lp = torch.randn(1, S, V, generator=g).log_softmax(-1)
        y = torch.randint(1, V, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g).tolist()
        scores = [sum(lp[0, t, p[t]].item() for t in range(S)) for p in itertools.product(range(V), repeat=S)
                  if align.collapse(list(p)) == y]
        lab = align.viterbi(lp, torch.tensor([S]), [y])[0].tolist()
        assert align.collapse(lab) == y
        assert sum(lp[0, t, lab[t]].item() for t in range(S)) == pytest.approx(max(scores), abs=1e-5)


def test_segments_give_each_token_the_blanks_before_it():
    lab = torch.tensor([[0, 3, 3, 0, 4, 0, 3, 0, 0]])
    tokens, seg = align.segments(lab, torch.ones_like(lab, dtype=torch.bool))
    assert tokens == [[3, 4, 3]]
    assert seg[0].int().tolist() == [[1, 1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1]]


# ---------------------------------------------------------------- the AR decoder and its lossless draft


def no_cache_greedy(model: SpeechModel, enc, limit: int) -> list[int]:
    """The oracle: recompute the whole prefix every step, no cache."""
    out: list[int] = []
    while len(out) < limit:
        toks = torch.tensor([[vocab.EOS, *out]])
        nxt = int(model.decode(toks, torch.arange(toks.shape[1])[None], enc)[0, -1].argmax())
        if nxt == vocab.EOS:
            break
        out.append(nxt)
    return out


CASES = [(seed, bias) for seed in range(3) for bias in (0.0, 5.0)]  # bias 5: some outputs end early on EOS


@pytest.mark.parametrize(("seed", "eos_bias"), CASES)
def test_ar_with_cache_equals_the_no_cache_oracle(seed, eos_bias):
    model = tiny(seed, eos_bias)
    x, enc = encoded(model, frames=120, seed=seed)
    out = run_strategy(model, x, "ar")
    got = out.tokens
    assert got == no_cache_greedy(model, enc, max_length(enc))
    assert out.stats.decoder_calls == min(len(got) + 1, max_length(enc))
    toks = torch.tensor([[vocab.EOS, 5, 6, 7, 8]])
    full = model.decode(toks, torch.arange(5)[None], enc)
    cache = model.new_cache(1, 8)
    steps = []
    for t in range(5):
        steps.append(model.decode(toks[:, t : t + 1], torch.tensor([[t]]), enc, cache))
        cache.commit(1)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("seed", "eos_bias"), CASES)
def test_ctc_draft_equals_ar_greedy_for_any_draft(seed, eos_bias):
    model = tiny(seed, eos_bias)
    x, enc = encoded(model, frames=120, seed=seed)
    reference = run_strategy(model, x, "ar").tokens
    g = torch.Generator().manual_seed(seed)
    limit = max_length(enc)
    drafts = {
        "ctc": None,
        "perfect": reference,
        "adversarial": [vocab.MASK + 1 + (t - vocab.MASK) % 28 for t in reference],  # every character wrong
        "random": torch.randint(3, 31, (20,), generator=g).tolist(),
        "empty": [],
        "too long": torch.randint(3, 31, (3 * limit,), generator=g).tolist(),
    }
    for name, draft in drafts.items():
        got = run_strategy(model, x, "ctc_draft" if draft is None else drafting(draft)).tokens
        assert got == reference, name


@pytest.mark.parametrize("seed", range(4))
def test_ctc_draft_equals_joint_ctc_attention_greedy(seed):
    """With ctc_weight, ctc_draft's output is ar[ctc_weight]'s for any draft: the same joint
    choices, made from the CTC state of the committed characters (float64)."""
    model = tiny(seed, eos_bias=2.0)
    x, _ = encoded(model, frames=120, seed=seed)
    plain = run_strategy(model, x, "ar").tokens
    g = torch.Generator().manual_seed(seed)
    for lam in (0.3, 0.7):
        reference = run_strategy(model, x, "ar", ctc_weight=lam).tokens
        assert all(t > vocab.MASK for t in reference)
        got = run_strategy(model, x, "ctc_draft", ctc_weight=lam).tokens
        assert got == reference, lam
        for draft in (reference, plain, torch.randint(3, 31, (15,), generator=g).tolist()):
            out = run_strategy(model, x, drafting(draft), ctc_weight=lam)
            assert out.tokens == reference
            assert out.stats.decoder_calls == 1 or draft is not reference  # the answer as the draft: one call
        if reference != plain:  # the CTC term changed a choice: it is in play
            break
    else:
        pytest.fail("the CTC term never changed the output: the fixture does not exercise it")
    with pytest.raises(ValueError, match="ctc_weight"):
        GreedyOptions(ctc_weight=1.0)


@pytest.mark.parametrize("seed", range(4))
def test_ctc_tree_equals_ar_with_its_ctc_weight(seed):
    """The n-best tree's output is ar's (greedy, and joint CTC/attention with ctc_weight) in
    float64, for any number of branches, alone and in a batch."""
    model = tiny(seed, eos_bias=1.0)
    xs = [features(100 + 30 * i, seed=seed + i) for i in range(3)]
    for lam in (0.0, 0.4):
        reference = [decode_features(model, x, "ar", options_for("ar", {"ctc_weight": lam})).tokens for x in xs]
        for branches, nodes in ((0, 96), (4, 96), (16, 12)):
            opts = options_for("ctc_tree", {"ctc_weight": lam, "branches": branches, "nodes": nodes})
            alone = [decode_features(model, x, "ctc_tree", opts) for x in xs]
            assert [t.tokens for t in alone] == reference, (lam, branches)
            batch = run(decode_batch(model, xs, "ctc_tree", opts))
            assert [t.tokens for t in batch] == reference
            assert [t.stats.decoder_calls for t in batch] == [t.stats.decoder_calls for t in alone]


def test_ctc_tree_alternatives_are_the_unsure_characters():
    from paragen.speech.decode.ctc_tree import alternatives

    a, b, c, _ = 5, 6, 7, vocab.BLANK
    labels = torch.tensor([a, a, _, _, b, c])
    probs = torch.full((6, 31), 0.001)
    probs[torch.arange(6), labels] = 0.9
    probs[1, c] = 0.3  # a substitution of the first a by c
    probs[3, b] = 0.2  # a character CTC may have dropped between a and b
    hyp, alts = alternatives(labels, probs)
    assert hyp == [a, b, c]
    assert alts[0].at == 0 and alts[0].token == c and alts[0].skip == 1 and alts[0].score == pytest.approx(0.3)
    assert alts[1].at == 1 and alts[1].token == b and alts[1].skip == 0 and alts[1].score == pytest.approx(0.2)


def test_ctc_draft_with_the_answer_as_draft_takes_one_call():
    model = tiny(1)
    x, _ = encoded(model, seed=1)
    reference = run_strategy(model, x, "ar").tokens
    out = run_strategy(model, x, drafting(reference))
    assert out.tokens == reference
    assert out.stats.decoder_calls == 1


@pytest.mark.parametrize("seed", range(3))
def test_ctc_draft_realigns_after_each_kind_of_ctc_error(seed):
    """One CTC error costs at most two more calls, wherever it is: the draft after a correction
    is the hypothesis re-aligned to the committed text (a deletion used to cost a call per
    character after it)."""
    model = tiny(seed, eos_bias=1.0)
    x, _ = encoded(model, frames=160, seed=seed)
    full = run_strategy(model, x, "ar").tokens
    ref = [t for t in full if t != vocab.EOS]  # the characters
    assert len(ref) >= 12, "the fixture's output must be long enough to err in its middle"
    k = next(i for i in range(len(ref) // 3, len(ref) - 3) if len({ref[i - 1], ref[i], ref[i + 1]}) == 3)
    other = next(c for c in range(vocab.MASK + 1, 31) if c not in (ref[k - 1], ref[k], ref[k + 1]))
    errors = {"deletion": ref[:k] + ref[k + 1 :], "substitution": ref[:k] + [other] + ref[k + 1 :],
              "insertion": ref[:k] + [other] + ref[k:]}
    for name, draft in errors.items():
        out = run_strategy(model, x, drafting(draft))
        assert out.tokens == full, name
        assert out.stats.decoder_calls <= 3, (name, out.stats.decoder_calls)


def test_ctc_draft_aligner_finds_where_the_committed_text_ends():
    from paragen.speech.decode.ctc_draft import Aligner

    a = Aligner(list("abcdef"))
    a.feed(list("abx"))  # x for c: a substitution, the longest of the tied prefixes
    assert a.rest() == list("def")
    a.feed(list("c"))  # it was a deletion after all: abxc is abc with x inserted
    assert a.rest() == list("def") and a.fed == 4
    b = Aligner(list("abcdef"))
    b.feed(list("abd"))  # d is the hypothesis's next but one: CTC inserted c
    assert b.rest() == list("ef")


def test_beam_of_one_is_greedy():
    model = tiny(2)
    x, _ = encoded(model, seed=2)
    t = decode_features(model, torch.randn(60, 80, generator=torch.Generator().manual_seed(2), dtype=torch.float64), "beam",
                        options=None)
    assert t.stats.decoder_calls >= 1
    assert run_strategy(model, x, "beam", beam=1).tokens == run_strategy(model, x, "ar").tokens


# ---------------------------------------------------------------- NAR decoders


def test_mask_predict_with_t_equal_to_length_commits_one_token_per_iteration():
    model = tiny(0)
    x, enc = encoded(model)
    L = len(align.collapse(ctc_best_path(enc)[0].tolist()))  # the length mask-predict takes from CTC
    assert L >= 5, "the fixture's CTC hypothesis must have a few tokens"
    out = run_strategy(model, x, "mask_predict", iterations=L)
    tokens, kept = out.tokens, out.stats.extra["kept_per_iteration"]
    assert kept == list(range(1, L + 1))
    assert out.stats.decoder_calls == L
    assert len(tokens) == L and vocab.MASK not in tokens and all(t > vocab.MASK for t in tokens)


def oracle_cmlm(answer: list[int]) -> SpeechModel:
    """A speech model (tiny's encoder and CTC) whose CMLM decoder always predicts ``answer``."""

    class Oracle(SpeechModel):
        def cmlm_logits(self, tokens, segments, enc):
            logits = torch.zeros(*tokens.shape, self.config.vocab_size, dtype=self.dtype)
            for b in range(tokens.shape[0]):
                logits[b, torch.arange(len(answer)), torch.tensor(answer)] = 10.0
            return logits

    base = tiny(0, cmlm_layers=1)
    model = Oracle(base.config).double().eval()
    model.load_state_dict(base.state_dict())
    return model


def test_mask_predict_with_a_perfect_cmlm_decoder_restores_every_mask_in_one_iteration():
    model = oracle_cmlm([])
    x, enc = encoded(model)
    L = len(align.collapse(ctc_best_path(enc)[0].tolist()))
    assert L >= 5, "the fixture's CTC hypothesis must have a few tokens"
    answer = [vocab.MASK + 1 + i % 26 for i in range(L)]
    model = oracle_cmlm(answer)
    one = run_strategy(model, x, "mask_predict", iterations=1)
    assert [t for t in one.tokens if t != vocab.EOS] == answer and one.stats.decoder_calls == 1
    assert one.stats.extra["kept_per_iteration"] == [L]
    for T in (2, 4):  # T iterations call the decoder T times, and a perfect decoder never changes its mind
        out = run_strategy(model, x, "mask_predict", iterations=T)
        assert out.tokens == one.tokens and out.stats.decoder_calls == T


def test_the_cmlm_decoder_sees_its_tokens_and_their_frames():
    """mask_predict runs the CMLM decoder when the model has one, batched as alone; a model
    grown with add_cmlm keeps every other weight and starts its CMLM from the NAR decoder."""
    model = tiny(1, cmlm_layers=1)
    xs = [features(60 + 20 * i, seed=i) for i in range(3)]
    alone = [decode_features(model, x, "mask_predict").tokens for x in xs]
    assert [t.tokens for t in run(decode_batch(model, xs, "mask_predict"))] == alone
    x, enc = encoded(model)
    labels, _ = ctc_best_path(enc)
    tokens, seg = align.segments(labels[None], torch.ones(1, len(labels), dtype=torch.bool))
    t = torch.tensor(tokens)
    masked = torch.full_like(t, vocab.MASK)
    assert not torch.allclose(model.cmlm_logits(t, seg, enc), model.cmlm_logits(masked, seg, enc))
    shifted = seg.roll(1, dims=2)  # the same tokens spoken elsewhere
    assert not torch.allclose(model.cmlm_logits(t, seg, enc), model.cmlm_logits(t, shifted, enc))
    plain = tiny(2)
    grown = plain.add_cmlm(1)
    state = grown.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in plain.state_dict().items())
    assert torch.equal(state["cmlm_head.weight"], state["nar_head.weight"]) and grown.config.cmlm_layers == 1
    with pytest.raises(ValueError, match="no CMLM decoder"):
        plain.cmlm_logits(t, seg, enc)


def test_ctc_tokens_collapse_as_ctc_and_keep_each_tokens_best_frame():
    labels = [0, 5, 5, 0, 5, 7, 7, 7, 0, 0]
    conf = [0.9, 0.2, 0.6, 0.9, 0.4, 0.1, 0.8, 0.3, 0.9, 0.9]
    tokens, scores = mask_predict.ctc_tokens(labels, conf)
    assert tokens == align.collapse(labels) == [5, 5, 7]
    assert scores == [0.6, 0.4, 0.8]


def test_mask_ctc_keeps_confident_ctc_tokens_and_fills_the_rest_easy_first():
    model = tiny(0)
    x, enc = encoded(model)
    labels, conf = ctc_best_path(enc)
    tokens, scores = mask_predict.ctc_tokens(labels.tolist(), conf.tolist())
    assert len(tokens) >= 3, "the fixture's CTC hypothesis must have a few tokens"

    def mask_ctc(threshold: float, iterations: int) -> tuple[list[int], list[int], int]:
        t = run_strategy(model, x, "mask_predict", init="ctc", threshold=threshold, iterations=iterations)
        return t.tokens, t.stats.extra["kept_per_iteration"], t.stats.decoder_calls

    # nothing below the threshold: the CTC hypothesis, with no decoder call
    out, kept, calls = mask_ctc(min(scores) / 2, iterations=4)
    assert out == tokens and kept == [] and calls == 0
    # every token below it: T = L fills exactly one mask per call, most confident first
    L = len(tokens)
    out, kept, calls = mask_ctc(1.0, iterations=L)
    assert kept == list(range(1, L + 1)) and calls == L
    assert vocab.MASK not in out and all(t > vocab.MASK for t in out)
    # one token masked: one call, and only that position may change
    low = scores.index(min(scores))
    out, kept, calls = mask_ctc(sorted(scores)[1], iterations=4)
    assert kept == [L] and [t for i, t in enumerate(out) if i != low] == [t for i, t in enumerate(tokens) if i != low]
    with pytest.raises(ValueError, match="init"):
        mask_predict.MaskPredictOptions(init="lengths")
    with pytest.raises(ValueError, match="threshold"):
        mask_predict.MaskPredictOptions(init="ctc", threshold=0.0)


def test_cass_nat_decodes_in_one_call_and_samples_in_two():
    model = tiny(0)
    x, enc = encoded(model)
    out = run_strategy(model, x, "cass_nat")
    labels = align.collapse(ctc_best_path(enc)[0].tolist())  # the CTC hypothesis
    assert out.stats.decoder_calls == 1 and len(out.tokens) == len(labels) and out.stats.extra["alignments"] == 1
    out = run_strategy(model, x, "cass_nat", samples=6, threshold=1.0)
    assert out.stats.extra["alignments"] > 1 and out.stats.decoder_calls == 2  # one NAR call for all, one AR rescoring call


def test_unknown_strategy_and_bad_options_are_clear_errors():
    model = tiny(0)
    wave = np.sin(np.arange(8000) / 10).astype(np.float32)
    with pytest.raises(UnknownStrategyError, match="choose one of"):
        transcribe(model.float(), wave, strategy="nope")
    with pytest.raises(UnsupportedOptionError, match="no option"):
        transcribe(model.float(), wave, strategy="ctc", width=3)
    with pytest.raises(UnsupportedOptionError, match="beam"):
        transcribe(model.float(), wave, strategy="ctc", beam=0)


# ---------------------------------------------------------------- features and audio input


def test_features_are_the_same_code_at_training_and_inference(tmp_path):
    import soundfile as sf

    assert data.log_mel is log_mel  # the corpus builder computes its features with the inference function
    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(16000) / SAMPLE_RATE)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wave, SAMPLE_RATE, subtype="FLOAT")
    torch.testing.assert_close(log_mel(load_audio(tmp_path / "a.wav")), log_mel(wave), rtol=0, atol=0)
    assert log_mel(wave).shape == (101, 80)
    sf.write(tmp_path / "b.wav", np.repeat(wave[:, None], 2, 1), SAMPLE_RATE)  # stereo: mixed to mono
    assert load_audio(tmp_path / "b.wav").shape == wave.shape


def test_other_sample_rates_are_resampled(tmp_path):
    import soundfile as sf

    wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050)).astype(np.float32)
    sf.write(tmp_path / "c.wav", wave, 22050)
    assert abs(len(load_audio(tmp_path / "c.wav")) - SAMPLE_RATE) <= 2


def test_bad_audio_is_one_clear_error(tmp_path):
    import soundfile as sf

    (tmp_path / "text.wav").write_text("this is not audio")
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    sf.write(tmp_path / "long.wav", np.zeros(31 * SAMPLE_RATE, dtype=np.float32), SAMPLE_RATE)
    cases = {tmp_path / "missing.wav": "no such file", tmp_path: "not a readable file", tmp_path / "text.wav": "not an audio",
             tmp_path / "empty.wav": "empty", tmp_path / "long.wav": "longer than"}
    for path, message in cases.items():
        with pytest.raises(AudioInputError, match=message):
            load_audio(path)
    model = tiny(0).float()
    with pytest.raises(AudioInputError, match="NaN"):
        transcribe(model, np.full(8000, np.nan, dtype=np.float32), sample_rate=SAMPLE_RATE)
    with pytest.raises(AudioInputError, match="too short"):
        transcribe(model, np.zeros(100, dtype=np.float32), sample_rate=SAMPLE_RATE)


def test_transcribe_command_reports_bad_input_in_one_line(tmp_path, capsys):
    from paragen.cli import main

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    save_speech_model(tiny(0).float(), model_dir)
    assert main(["transcribe", str(tmp_path / "missing.wav"), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]


def test_save_and_load_round_trip(tmp_path):
    model = tiny(0).float()
    save_speech_model(model, tmp_path, dtype=torch.float32)
    back = load_speech_model(tmp_path)
    x = torch.randn(1, 40, 80)
    torch.testing.assert_close(back.encode(x).ctc_logits, model.encode(x).ctc_logits)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs the espeak-ng program")
def test_the_built_in_model_transcribes_a_synthesised_sentence():
    import paragen
    from paragen.models.io import builtin_models
    from paragen.speech.metrics import error_rate

    if "speech-en" not in builtin_models():
        pytest.skip("speech-en is not built in")
    model = paragen.load("speech-en")
    sentence = "return the number of items in the list"
    wave = data.synthesise(sentence, "en-us+m3", 170, 50)
    out = {s: paragen.transcribe(model, wave, strategy=s, sample_rate=SAMPLE_RATE)
           for s in ("ar", "ctc", "ctc_draft", "cass_nat")}
    # the shipped model is weak (about 1 CPU hour of training): these bounds say it hears the sentence, no more
    for strategy, bound in (("ctc", 0.25), ("cass_nat", 0.25), ("ar", 0.35)):
        assert error_rate([out[strategy].text], [sentence], "char") < bound, (strategy, out[strategy].text)
    assert out["ctc_draft"].tokens == out["ar"].tokens
    assert out["ctc_draft"].stats.decoder_calls < out["ar"].stats.decoder_calls


# ---------------------------------------------------------------- data and bench (no espeak-ng)


def test_sentences_keep_plain_english_only():
    text = ("Return the number of items. See RFC 2822 for details. Call foo_bar() first. The HTTPServer class is "
            "here. Built-in names are looked up last! Too short.")
    assert data.sentences(text, 3, 14) == ["Return the number of items.", "Built-in names are looked up last!"]
    assert vocab.normalize("Built-in names: don't 'quote' it.") == "built in names don't quote it"


def fake_speech_dir(tmp_path, n: int = 2):
    """A data directory with the layout of `paragen data speech`, holding tones instead of speech."""
    import json

    import soundfile as sf

    d = tmp_path / "data"
    (d / "wav").mkdir(parents=True)
    (d / "manifest.json").write_text("{}")
    for name in ("heldout", "heldout_voice"):
        (d / "wav" / name).mkdir()
        rows = []
        for i in range(n):
            wave = (0.2 * np.sin(2 * np.pi * (200 + 50 * i) * np.arange(12000) / SAMPLE_RATE)).astype(np.float32)
            sf.write(d / "wav" / name / f"{name}-{i}.wav", wave, SAMPLE_RATE)
            rows.append({"id": f"{name}-{i}", "text": "a tone", "seconds": 0.75})
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def test_speech_bench_runs_every_contender_against_ar(tmp_path):
    from paragen.speech.bench import parse_contenders, run_speech_bench

    labels = [c.label for c in parse_contenders("ctc[beam=3],cass_nat[samples=3;rescore=nar],ctc_draft")]
    assert labels == ["ar", "ctc[beam=3]", "cass_nat[samples=3;rescore=nar]", "ctc_draft"]
    with pytest.raises(UnsupportedOptionError):
        parse_contenders("ar,ctc[width=3]")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    save_speech_model(tiny(0).float(), model_dir, dtype=torch.float32)
    bench = run_speech_bench(str(model_dir), str(fake_speech_dir(tmp_path)),
                             "ar,ctc,ctc_draft,mask_predict,cass_nat,ar[ctc_weight=0.5],ctc_draft[ctc_weight=0.5]", 2,
                             tmp_path / "out", threads=1, progress=False)
    for rows in bench["summary"].values():
        by = {s["strategy"]: s for s in rows}
        assert by["ctc_draft"]["exact"] == 1.0 and by["ar"]["exact"] == 1.0
        assert by["ctc_draft[ctc_weight=0.5]"]["exact"] == 1.0  # against ar[ctc_weight=0.5]
        assert by["ctc"]["decoder_calls"] == 0 and by["cass_nat"]["decoder_calls"] == 1
        assert by["mask_predict"]["decoder_calls"] == 4 or by["mask_predict"]["chars_per_call"] == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"bench.json", "bench.md", "report.html"}


def test_load_generate_and_transcribe_for_a_speech_model(tmp_path):
    import paragen
    from paragen.errors import InvalidInputError

    save_speech_model(tiny(0).float(), tmp_path, dtype=torch.float32)
    model = paragen.load(str(tmp_path))
    assert isinstance(model, SpeechModel)
    wave = syllables(0.75)  # speech-like: a steady tone would (rightly) be warned about
    a = paragen.generate(model, wave, strategy="ctc_draft", sample_rate=SAMPLE_RATE)
    b = paragen.transcribe(model, wave, strategy="ar", sample_rate=SAMPLE_RATE)
    assert a.tokens == b.tokens and a.stats.encoder_calls == 1
    with pytest.raises(InvalidInputError, match="speech model"):
        paragen.stream(model, "def f():")


# ---------------------------------------------------------------- batches and streaming on the shared driver

BATCH_RUNS = [("ar", {}), ("ar", {"ctc_weight": 0.3}), ("ctc_draft", {}), ("ctc_draft", {"ctc_weight": 0.3}),
              ("ctc", {}), ("ctc", {"beam": 3}), ("mask_predict", {}), ("mask_predict", {"init": "ctc", "threshold": 0.99}),
              ("cass_nat", {}), ("cass_nat", {"samples": 4, "threshold": 1.0}),
              ("cass_nat", {"samples": 4, "threshold": 1.0, "rescore": "nar"})]


@pytest.mark.parametrize(("name", "options"), BATCH_RUNS)
def test_a_batch_of_utterances_equals_each_utterance_alone(name, options):
    """Utterances of different lengths decoded together (one encoder call, shared decoder calls,
    rows leaving as they finish) give each utterance's own transcript, calls and statistics (float64)."""
    model = tiny(1, eos_bias=3.0)
    feats = [features(frames, seed) for frames, seed in ((60, 0), (131, 1), (90, 2), (47, 3))]
    opts = options_for(name, options)
    batch = run(decode_batch(model, feats, name, opts, trace=True))
    alone = [decode_features(model, x, name, opts, trace=True) for x in feats]
    assert len({len(t.tokens) for t in alone}) > 1  # rows finish at different steps
    for got, want in zip(batch, alone, strict=True):
        assert (got.tokens, got.text) == (want.tokens, want.text)
        assert got.stats.decoder_calls == want.stats.decoder_calls and got.stats.encoder_calls == 1
        assert got.stats.extra == want.stats.extra
        assert [c.committed for c in got.trace.calls] == [c.committed for c in want.trace.calls]


def test_a_decoder_cache_carries_its_rows_memories_through_select_and_extend():
    """The bound decoder's cache holds each row's memory: rows that leave (select, repeats too)
    or join (extend, a longer memory: padded and masked) decode as they would alone."""
    model = tiny(0)
    short, long = (model.encode(features(n, s)[None], torch.tensor([n])) for n, s in ((60, 0), (90, 1)))
    joined = short.extend(long)
    assert joined.memory.shape[1] == long.memory.shape[1] and joined.lengths.tolist() == [*short.lengths, *long.lengths]
    toks, pos = torch.tensor([[vocab.EOS], [vocab.EOS]]), torch.zeros(2, 1, dtype=torch.long)
    cache = model.bind(short).new_cache(1, 4)
    cache.extend(model.bind(long).new_cache(1, 4))
    both = model.bind(joined)(toks, pos, cache=cache)
    for b, enc in enumerate((short, long)):
        alone = model.bind(enc)(toks[:1], pos[:1])
        torch.testing.assert_close(both[b : b + 1], alone, rtol=0, atol=1e-12)
    cache.select([1, 1, 0])
    assert cache.rows == [0, 0, 0] and torch.equal(cache.memory.pad, joined.select([1, 1, 0]).pad)


def test_beam_decodes_one_utterance_at_a_time():
    model = tiny(0)
    with pytest.raises(UnsupportedOptionError, match="one utterance at a time"):
        run(decode_batch(model, [features(60, 0), features(70, 1)], "beam"))


def test_transcribe_a_batch_of_audio_equals_each_alone():
    import paragen

    model = tiny(0).float()
    waves = [syllables(0.75, seed=0), syllables(1.5, seed=1), syllables(1.1, seed=2)]
    for strategy in ("ar", "ctc_draft", "cass_nat"):
        batch = paragen.transcribe(model, waves, strategy, sample_rate=SAMPLE_RATE)
        assert isinstance(batch, list) and len(batch) == len(waves)
        for wave, got in zip(waves, batch, strict=True):
            want = paragen.transcribe(model, wave, strategy, sample_rate=SAMPLE_RATE)
            assert got.tokens == want.tokens and got.stats.decoder_calls == want.stats.decoder_calls, strategy
        assert [t.text for t in paragen.generate(model, waves, strategy, sample_rate=SAMPLE_RATE)] == [t.text for t in batch]


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_streaming_yields_the_text_of_the_final_transcript(name):
    import paragen

    model = tiny(0).float()
    wave = syllables(1.5)
    stream = paragen.stream(model, wave, name, sample_rate=SAMPLE_RATE)
    pieces = list(stream)
    final = stream.generation
    assert "".join(pieces) == final.text == paragen.transcribe(model, wave, name, sample_rate=SAMPLE_RATE).text
    assert final.tokens == paragen.transcribe(model, wave, name, sample_rate=SAMPLE_RATE).tokens
    if name in ("ar", "ctc_draft") and final.stats.decoder_calls > 1:
        assert len(pieces) > 1  # committed text arrives as it is decoded, not at the end


def test_stream_checks_its_arguments_before_the_first_piece():
    import paragen
    from paragen.errors import InvalidInputError

    model = tiny(0).float()
    wave = syllables(0.75)
    with pytest.raises(UnsupportedOptionError, match="max_new_tokens"):
        paragen.stream(model, wave, sample_rate=SAMPLE_RATE, max_new_tokens=5)
    with pytest.raises(UnsupportedOptionError, match="no option"):
        paragen.stream(model, wave, "ctc", sample_rate=SAMPLE_RATE, iterations=3)
    with pytest.raises(InvalidInputError, match="one utterance"):
        paragen.stream(model, [wave, wave], sample_rate=SAMPLE_RATE)
    with pytest.raises(AudioInputError, match="sample rate"):
        paragen.stream(model, wave)


def test_transcribe_command_streams_the_same_text(tmp_path, capsys):
    import soundfile as sf

    from paragen.cli import main

    save_speech_model(tiny(0).float(), tmp_path)
    for i, seconds in enumerate((1.5, 0.9)):
        sf.write(tmp_path / f"{i}.wav", syllables(seconds, seed=i), SAMPLE_RATE)
    files = [str(tmp_path / "0.wav"), str(tmp_path / "1.wav")]
    for strategy in ("ar", "ctc_draft", "mask_predict"):
        args = [*files, "--model", str(tmp_path), "--strategy", strategy]
        assert main(["transcribe", *args]) == 0
        plain = capsys.readouterr().out
        assert main(["transcribe", *args, "--stream"]) == 0
        assert capsys.readouterr().out == plain and plain.count("\n") == 2
    assert main(["transcribe", *files, "--model", str(tmp_path), "--stream", "--json"]) == 2
    assert "pick one" in capsys.readouterr().err


def fake_feature_dir(tmp_path, n: int = 6):
    """A data directory with the layout of `paragen data speech` (features, no audio): random
    log-mels of a few hundred frames for short transcripts."""
    import json

    d = tmp_path / "feats"
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"command": "fake", "splits": {}}))
    g = torch.Generator().manual_seed(0)
    for split in ("train", "heldout", "heldout_voice"):
        frames = [120 + 20 * i for i in range(n)]
        feats = torch.randn(sum(frames), 80, generator=g).half()
        offsets = torch.tensor([0, *np.cumsum(frames).tolist()])
        torch.save({"features": feats, "offsets": offsets}, d / f"{split}.pt")
        rows = [{"id": f"{split}-{i}", "text": ["a tone", "two words", "hello"][i % 3]} for i in range(n)]
        (d / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


@pytest.mark.slow
def test_train_speech_and_continue_with_init(tmp_path):
    """`paragen train speech` writes a loadable model; `--init` continues it with its shape and
    feature normalisation, whatever the shape flags say."""
    import json

    from paragen.speech.model import load_speech_model
    from paragen.speech.train import SpeechTrainConfig, train_speech

    data = fake_feature_dir(tmp_path)
    small = dict(data=str(data), batch=3, steps=4, warmup=1, eval_every=2, eval_utterances=3, checkpoint_every=2,
                 d_model=32, encoder_layers=1, decoder_layers=1, nar_layers=1)
    first = train_speech(SpeechTrainConfig(out=str(tmp_path / "a"), **small), progress=False)
    a = load_speech_model(tmp_path / "a")
    assert first["steps"] == 4 and json.loads((tmp_path / "a" / "training.json").read_text())["steps"] == 4
    second = train_speech(SpeechTrainConfig(out=str(tmp_path / "b"), **{**small, "d_model": 64, "encoder_layers": 2},
                                            init=str(tmp_path / "a")), progress=False)
    b = load_speech_model(tmp_path / "b")
    assert b.config == a.config and second["model"] == first["model"]
    assert second["init"]["from"] == str(tmp_path / "a") and second["init"]["command"] == first["command"]
    assert torch.equal(b.feat_mean, a.feat_mean) and torch.equal(b.feat_std, a.feat_std)
    assert not torch.equal(b.head.weight, a.head.weight)  # it trained


def test_teacher_transcripts_are_the_teachers_and_a_resumed_step_writes_each_once(tmp_path):
    import json

    from paragen.errors import InvalidInputError
    from paragen.speech.data import load_split
    from paragen.speech.distill import distill_speech, teacher_texts

    data = fake_feature_dir(tmp_path)
    teacher = tiny(0, eos_bias=2.0).float()
    split = load_split(data, "train")
    expected = [decode_features(teacher, split.item(i), "ar").text for i in range(len(split))]
    path = distill_speech(str(data), teacher, "tiny", "ar", batch=4, progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in split.rows] and [r["text"] for r in rows] == expected
    assert teacher_texts(data, [r["id"] for r in split.rows]) == expected
    # a run stopped after two utterances and half a line: the next run keeps the two (not
    # transcribed again: their marked texts stay) and writes every other utterance once
    partial = path.with_name(path.name + ".partial")
    kept = [{"id": r["id"], "text": "kept"} for r in split.rows[:2]]
    partial.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"id": "train-2", "te')
    path.unlink()
    distill_speech(str(data), teacher, "tiny", "ar", batch=4, progress=False)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in split.rows]
    assert [r["text"] for r in rows] == ["kept", "kept", *expected[2:]] and not partial.exists()
    partial.write_text("")
    with pytest.raises(InvalidInputError, match="another teacher"):
        distill_speech(str(data), teacher, "tiny", "ctc", progress=False)
    with pytest.raises(InvalidInputError, match="speech-distill"):
        teacher_texts(tmp_path, ["x"])


@pytest.mark.slow
def test_train_speech_distilled_with_a_cmlm_decoder(tmp_path):
    """--distill trains the NAR side on the teacher's transcripts; --cmlm-layers adds a CMLM
    decoder to an --init model without one; the result loads and mask-predicts with it."""
    from paragen.speech.distill import distill_speech
    from paragen.speech.train import SpeechTrainConfig, train_speech

    data = fake_feature_dir(tmp_path)
    small = dict(data=str(data), batch=3, steps=3, warmup=1, eval_every=3, eval_utterances=3, checkpoint_every=3,
                 d_model=32, encoder_layers=1, decoder_layers=1, nar_layers=1)
    train_speech(SpeechTrainConfig(out=str(tmp_path / "a"), **small), progress=False)
    with pytest.raises(Exception, match="speech-distill"):
        train_speech(SpeechTrainConfig(out=str(tmp_path / "b"), **small, distill=True), progress=False)
    distill_speech(str(data), load_speech_model(tmp_path / "a"), "a", progress=False)
    train_speech(SpeechTrainConfig(out=str(tmp_path / "b"), **small, init=str(tmp_path / "a"), cmlm_layers=1,
                                   distill=True), progress=False)
    a, b = load_speech_model(tmp_path / "a"), load_speech_model(tmp_path / "b")
    assert b.config.cmlm_layers == 1
    assert not torch.equal(b.cmlm_head.weight, a.nar_head.weight)  # started from it, then trained
    assert isinstance(decode_features(b, features(200), "mask_predict").text, str)


# ---------------------------------------------------------------- input level, sample rate, empty input


def syllables(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """Speech-like synthetic audio at 16 kHz: voiced bursts (a 120-180 Hz pulse train's harmonics
    under a syllable envelope) separated by pauses, over faint noise; peak about 0.5."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 120 + 60 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 2  # 2.5 syllables a second, a pause after each
    wave = 0.25 * voiced * envelope + rng.normal(0, 1e-3, len(t))
    return wave.astype(np.float32)


def test_features_and_transcripts_do_not_depend_on_the_input_level(tmp_path):
    """The same audio at x0.05 .. x5 (a float WAV keeps x5 unclipped) gives the same features, so
    the same transcript; silence is refused; a steady tone is warned about."""
    import soundfile as sf

    from paragen.speech.features import AudioLevelWarning

    wave = syllables()
    model = tiny(0).float()
    reference = log_mel(wave)
    expected = transcribe(model, wave, sample_rate=SAMPLE_RATE).tokens
    for level in (0.05, 0.3, 5.0):
        sf.write(tmp_path / "x.wav", wave * level, SAMPLE_RATE, subtype="FLOAT")
        scaled = load_audio(tmp_path / "x.wav")
        torch.testing.assert_close(log_mel(scaled), reference, rtol=0, atol=1e-3)
        assert transcribe(model, tmp_path / "x.wav").tokens == expected, level
    with pytest.raises(AudioInputError, match="silent .all zeros"):
        transcribe(model, np.zeros(2 * SAMPLE_RATE, dtype=np.float32), sample_rate=SAMPLE_RATE)
    with pytest.raises(AudioInputError, match="silent"):
        transcribe(model, wave * 1e-5, sample_rate=SAMPLE_RATE)  # -90 dBFS: below the -70 dBFS floor
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
    with pytest.warns(AudioLevelWarning, match="steady noise or a tone") as caught:
        transcribe(model, tone, sample_rate=SAMPLE_RATE)
    assert caught[0].filename == __file__  # attributed to the caller's line, not paragen's


def test_a_waveform_array_needs_its_sample_rate(tmp_path):
    import soundfile as sf

    model = tiny(0).float()
    wave = syllables()
    with pytest.raises(AudioInputError, match="does not say its sample rate: pass sample_rate="):
        transcribe(model, wave)
    with pytest.raises(AudioInputError, match="positive integer"):
        transcribe(model, wave, sample_rate=16000.5)
    sf.write(tmp_path / "a.wav", wave, SAMPLE_RATE)
    with pytest.raises(AudioInputError, match="carries its own"):
        transcribe(model, tmp_path / "a.wav", sample_rate=SAMPLE_RATE)
    # the same audio at 22.05 kHz, said so, is resampled: the features of the 16 kHz original
    import soxr

    slow = soxr.resample(wave, SAMPLE_RATE, 22050).astype(np.float32)
    from paragen.speech.api import waveform

    back, wrong = waveform(slow, 22050), waveform(slow, SAMPLE_RATE)
    assert abs(len(back) - len(wave)) <= 2
    n = min(len(back), len(wave))
    gap = (log_mel(back[:n]) - log_mel(wave[:n])).abs().mean()
    assert gap < 0.05 and (log_mel(wrong[:n]) - log_mel(wave[:n])).abs().mean() > 20 * gap


def test_empty_audio_says_empty(tmp_path, capsys, monkeypatch):
    import io

    from paragen.cli import main

    (tmp_path / "zero.wav").write_bytes(b"")
    for source in (b"", tmp_path / "zero.wav"):
        with pytest.raises(AudioInputError, match=r"empty \(0 bytes\)"):
            load_audio(source)
    with pytest.raises(AudioInputError) as refused:
        load_audio(b"not audio at all")
    assert "BytesIO" not in str(refused.value) and str(refused.value).startswith("<bytes>: not an audio file")
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    save_speech_model(tiny(0).float(), model_dir)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert main(["transcribe", "-", "--model", str(model_dir)]) == 2
    assert capsys.readouterr().err == ("paragen: error: standard input is empty: pipe an audio file in, e.g. "
                                       "paragen transcribe - < clip.wav\n")


def test_a_lossy_decoder_says_so_in_its_stats_line(tmp_path, capsys):
    import soundfile as sf

    from paragen.cli import main

    save_speech_model(tiny(0).float(), tmp_path)
    sf.write(tmp_path / "a.wav", syllables(), SAMPLE_RATE)
    for strategy, lossy in (("ctc", True), ("ar", False)):
        assert main(["transcribe", str(tmp_path / "a.wav"), "--model", str(tmp_path), "--strategy", strategy, "--stats"]) == 0
        assert capsys.readouterr().err.rstrip().endswith(", lossy]") == lossy, strategy
