"""``paragen train diffusion``: the objective's pieces, a tiny run that learns, exact resume,
block-causal training through the CLI, and --init from an AR model."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

import paragen
from paragen.cli import main
from paragen.errors import InvalidInputError, VocabularyMismatchError
from paragen.models.io import save_model
from paragen.models.native import NativeConfig, NativeModel
from paragen.tokenizer import Tokenizer
from paragen.train.corpus import find_corpus
from paragen.train.diffusion import (
    DiffusionTrainConfig,
    annealed_mask,
    bd3_mask,
    corrupt,
    denoise_logits,
    tail_starts,
    teacher_kl,
    train_diffusion,
)
from paragen.train.lm import SIZES
from paragen.train.tokenizer import train_tokenizer

FILES = 30


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> str:
    corpus = find_corpus()
    tok = train_tokenizer([corpus.read(f) for f in corpus.train_files[:FILES]], 300)  # < 300 may break the BPE
    path = tmp_path_factory.mktemp("tokenizer")
    tok.save(path)
    return str(path)


def config(tok_dir: str, out, **kw) -> DiffusionTrainConfig:
    base = dict(size="tiny", max_files=FILES, seq_len=64, batch_size=8, steps=60, warmup=10, eval_every=20,
                eval_windows=8, checkpoint_every=1000, tokenizer=tok_dir, out=str(out))
    return DiffusionTrainConfig(**{**base, **kw})


def test_bd3_mask_golden():
    m = bd3_mask(4, 2)[0].int().tolist()  # [noised 0..3 | clean 0..3], blocks {0,1} {2,3}
    assert m == [
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 1, 1],
    ]


def test_block_causal_training_sees_what_decoding_sees():
    """A noised block's logits in training (BD3 2L layout) equal block_diffusion's for the
    same live block over clean earlier blocks, and do not depend on later blocks."""
    cfg = NativeConfig(vocab_size=30, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, attention="block_causal", block_size=4, mask_token_id=1)
    model = NativeModel(cfg).init_weights(0, std=0.5).double().eval()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(2, 30, (1, 16), generator=g)
    xt = x0.clone()
    xt[0, [9, 10, 12, 13, 14, 15]] = 1  # block 2 half masked, block 3 masked
    train = denoise_logits(model, xt, x0, 4)[0, 8:12]
    live = torch.cat([x0[:, :8], xt[:, 8:12]], 1)  # decoding: clean blocks 0-1, live block 2
    blk = torch.arange(12) // 4
    decode = model(live, torch.arange(12)[None], mask=(blk[None, :] <= blk[:, None])[None])[0, 8:12]
    assert torch.allclose(train, decode, atol=1e-10)


def test_shifted_training_sees_what_decoding_sees():
    """Shifted (--shift): a noised block's first position is predicted from the clean half's
    position before it, the others from the noised position before them, as block_diffusion
    predicts them (the finished block's last logit, then the live block's rows)."""
    cfg = NativeConfig(vocab_size=30, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, attention="block_causal", block_size=4, mask_token_id=1, shift=True)
    model = NativeModel(cfg).init_weights(0, std=0.5).double().eval()
    x0 = torch.randint(2, 30, (1, 16), generator=torch.Generator().manual_seed(0))
    xt = x0.clone()
    xt[0, [8, 10, 12, 13, 14, 15]] = 1
    train = denoise_logits(model, xt, x0, 4, shift=True)[0, 8:12]
    blk = torch.arange(12) // 4
    live = torch.cat([x0[:, :8], xt[:, 8:12]], 1)
    decode = model(live, torch.arange(12)[None], mask=(blk[None, :] <= blk[:, None])[None])[0, 7:11]
    assert torch.allclose(train, decode, atol=1e-10)
    assert not torch.allclose(train, denoise_logits(model, xt, x0, 4)[0, 8:12])


def test_corrupt_keeps_the_prefix_clean_and_weights_by_one_over_t():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(2, 50, (64, 32), generator=g)
    block = DiffusionTrainConfig(seq_len=32, attention="block_causal", block_size=8)
    shifted = DiffusionTrainConfig(seq_len=32, shift=True)
    for cfg in (DiffusionTrainConfig(seq_len=32), block, shifted):
        x0_, xt, w, maskable = corrupt(x0, cfg, 1, g)
        assert torch.equal(x0_, x0)
        masked = xt == 1
        assert torch.equal(masked, w > 0) and not (masked & ~maskable).any()
        assert not cfg.shift or not maskable[:, 0].any()  # nothing predicts position 0
        assert torch.equal(xt[~masked], x0[~masked])
        assert (w[masked] >= 1).all() and (w[masked] <= 1 / cfg.eps).all()
        assert maskable[:, 0].float().mean() < 1  # some windows keep a clean prefix
        if cfg.block_size:  # one t per block: weights constant within a block
            for row in w.view(64, 4, 8):
                for blk in row:
                    assert blk[blk > 0].unique().numel() <= 1


def test_complementary_views_mask_each_maskable_token_once():
    g = torch.Generator().manual_seed(1)
    x0 = torch.randint(2, 50, (8, 32), generator=g)
    for cfg in (DiffusionTrainConfig(seq_len=32, complementary=True),
                DiffusionTrainConfig(seq_len=32, attention="block_causal", block_size=8, complementary=True)):
        rows, xt, w, maskable = corrupt(x0, cfg, 1, g)
        assert rows.shape == x0.shape and torch.equal(rows[:4], x0[:4]) and torch.equal(rows[4:], x0[:4])
        one, two = xt[:4] == 1, xt[4:] == 1
        assert torch.equal(one ^ two, maskable[:4]) and not (one & two).any()  # complements within the maskable
        assert torch.equal(w > 0, xt == 1) and (w[w > 0] <= 1 / cfg.eps).all()


def test_infill_layout_masks_only_the_hole_of_span_then_pads():
    g = torch.Generator().manual_seed(2)
    x0 = torch.randint(2, 50, (64, 48), generator=g)
    cfg = DiffusionTrainConfig(seq_len=48, shift=True, infill=1.0, infill_span=6, infill_pad=5)
    rows, xt, w, maskable = corrupt(x0, cfg, 1, g, eos_id=0)
    for r in range(64):
        hole = maskable[r].nonzero()[:, 0]
        s, e = int(hole[0]), int(hole[-1]) + 1
        assert torch.equal(hole, torch.arange(s, e)) and s >= 2 and e < 48  # clean on both sides
        pads = int((rows[r, s:e] == 0).sum())
        span = e - s - pads
        assert 1 <= span <= 6 and pads <= 5 and (rows[r, s + span : e] == 0).all()
        assert torch.equal(rows[r, : s + span], x0[r, : s + span])  # prefix and span as they were
        assert torch.equal(rows[r, e:], x0[r, s + span : 48 - pads])  # the suffix: the rest, cut to the window
    assert torch.equal(xt[~maskable], rows[~maskable])


def test_annealed_attention_opens_from_causal_to_full():
    g = torch.Generator().manual_seed(3)
    first = annealed_mask(16, 0, 10, g)[0]
    assert torch.equal(first, torch.ones(16, 16, dtype=torch.bool).tril())
    half = annealed_mask(64, 5, 10, g)[0]
    lower = torch.ones(64, 64, dtype=torch.bool).tril()
    assert half[lower].all() and 0.3 < half[~lower].float().mean() < 0.7
    assert annealed_mask(16, 10, 10, g) is None


def test_anneal_and_infill_refused_for_block_causal_models():
    with pytest.raises(InvalidInputError, match="full attention"):
        DiffusionTrainConfig(seq_len=256, attention="block_causal", block_size=8, infill=0.5)
    with pytest.raises(InvalidInputError, match="infill must be"):
        DiffusionTrainConfig(seq_len=32, infill=1.5)


@pytest.mark.slow
def test_loss_decreases_and_the_model_loads(tok_dir, tmp_path):
    rec = train_diffusion(config(tok_dir, tmp_path / "m"), progress=False)
    losses = [h["heldout_loss"] for h in rec["history"]]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.3, losses
    assert rec["heldout_loss"] < 5.5  # uniform guessing over 300 tokens: ln 300 = 5.70
    model = paragen.load(tmp_path / "m")
    tok = Tokenizer.from_dir(tok_dir)
    assert model.info.attention == "bidirectional" and model.info.mask_id == tok.mask_id
    assert model.info.eos_ids == (tok.eos_id,)
    g = paragen.generate(model, "def f(x):\n", "diffusion", max_new_tokens=8, block_length=4)
    assert tok.mask_id not in g.tokens


@pytest.mark.slow
def test_resume_matches_an_uninterrupted_run(tok_dir, tmp_path):
    whole = train_diffusion(config(tok_dir, tmp_path / "a", steps=24), progress=False)
    first = train_diffusion(config(tok_dir, tmp_path / "b", steps=24), progress=False, stop_at=10)
    assert first["steps"] == 10
    resumed = train_diffusion(config(tok_dir, tmp_path / "b", steps=24), resume=True, progress=False)
    assert resumed["steps"] == 24 and resumed["history"] == whole["history"]
    assert resumed["heldout_loss"] == whole["heldout_loss"]
    a = torch.load(tmp_path / ".a.work" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / ".b.work" / "checkpoint.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_block_causal_through_the_cli(tok_dir, tmp_path):
    out = tmp_path / "bd"
    args = ["train", "diffusion", "--out", str(out), "--size", "tiny", "--block-size", "8", "--shift", "--tokenizer", tok_dir,
            "--max-files", str(FILES), "--seq-len", "32", "--batch-size", "4", "--steps", "6", "--warmup", "2",
            "--eval-every", "100", "--eval-windows", "4", "--quiet"]
    assert main([*args, "--stop-at", "3"]) == 0  # in two chunks: stop at step 3, then resume
    assert json.loads((out / "training.json").read_text())["steps"] == 3
    assert main([*args, "--resume"]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 6 and record["config"]["block_size"] == 8 and record["config"]["shift"]
    model = paragen.load(out, dtype=torch.float64)
    assert model.info.attention == "block_causal" and model.info.block_size == 8 and model.info.shift
    assert paragen.load(out, backend="hf").info.shift
    kw = dict(max_new_tokens=12, threshold=0.5)
    cached = paragen.generate(model, "import os\n", "block_diffusion", **kw)
    full = paragen.generate(model, "import os\n", "block_diffusion", cache="none", **kw)
    assert cached.tokens == full.tokens and model.info.mask_id not in cached.tokens


@pytest.mark.slow
def test_init_from_an_ar_model(tok_dir, tmp_path):
    tok = Tokenizer.from_dir(tok_dir)
    ar = NativeModel(NativeConfig(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, **SIZES["tiny"])).init_weights(5)
    save_model(ar, tok, tmp_path / "ar")
    cfg = config(None, tmp_path / "sdar", init=str(tmp_path / "ar"), attention="block_causal", block_size=8, steps=0)
    train_diffusion(cfg, progress=False)  # zero steps: the AR weights, relabelled block-causal
    model, ref = paragen.load(tmp_path / "sdar"), paragen.load(tmp_path / "ar")
    assert model.info.attention == "block_causal" and model.info.mask_id == tok.mask_id
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


@pytest.mark.slow
def test_init_accepts_a_builtin_name(tmp_path):
    cfg = config(None, tmp_path / "d", init="code-draft", steps=0, eval_windows=2, max_files=3)
    train_diffusion(cfg, progress=False)  # once: "code-draft" is not a directory
    model, ref = paragen.load(tmp_path / "d"), paragen.load("code-draft")
    assert model.info.attention == "bidirectional"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_config_errors():
    with pytest.raises(ValueError, match="block_causal"):
        DiffusionTrainConfig(block_size=8)
    with pytest.raises(ValueError, match="dividing"):
        DiffusionTrainConfig(attention="block_causal", block_size=7, seq_len=64)
    with pytest.raises(ValueError, match="bidirectional"):
        DiffusionTrainConfig(attention="causal")


def test_infill_lines_cuts_holes_of_whole_lines():
    g = torch.Generator().manual_seed(4)
    x0 = torch.randint(3, 50, (64, 48), generator=g)
    x0[:, ::5] = 2  # token 2 starts a line: lines of 5 tokens
    starts = torch.zeros(50, dtype=torch.bool)
    starts[2] = True
    cfg = DiffusionTrainConfig(seq_len=48, shift=True, infill=1.0, infill_span=16, infill_pad=5, infill_lines=1.0)
    rows, xt, w, maskable = corrupt(x0, cfg, 1, g, eos_id=0, line_start=starts)
    for r in range(64):
        hole = maskable[r].nonzero()[:, 0]
        s, e = int(hole[0]), int(hole[-1]) + 1
        span = e - s - int((rows[r, s:e] == 0).sum())
        assert rows[r, s] == 2 and span in (5, 10, 15)  # starts on a line, 1..3 whole lines
        assert rows[r, e] == 2  # the suffix starts the next line
        assert torch.equal(rows[r, : s + span], x0[r, : s + span])
    with pytest.raises(InvalidInputError, match="infill_lines"):
        DiffusionTrainConfig(seq_len=32, infill=0.5, infill_lines=2.0)


def test_infill_tail_masks_the_end_of_the_hole_from_a_point_on():
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(2, 50, (32, 48), generator=g)
    cfg = DiffusionTrainConfig(seq_len=48, shift=True, infill=1.0, infill_span=8, infill_pad=8, infill_tail=1.0)
    rows, xt, w, maskable = corrupt(x0, cfg, 1, g, eos_id=0)
    for r in range(32):
        hole, masked = maskable[r].nonzero()[:, 0], (xt[r] == 1).nonzero()[:, 0]
        assert len(masked) >= 1 and masked[-1] == hole[-1]  # masked from a point of the hole to its end
        assert torch.equal(masked, torch.arange(int(masked[0]), int(hole[-1]) + 1))
    assert torch.equal(w > 0, xt == 1)


def test_block_tail_masks_each_block_from_a_point_to_its_end():
    g = torch.Generator().manual_seed(6)
    x0 = torch.randint(2, 50, (32, 48), generator=g)
    cfg = DiffusionTrainConfig(seq_len=48, shift=True, attention="block_causal", block_size=8, block_tail=1.0)
    rows, xt, w, maskable = corrupt(x0, cfg, 1, g)
    assert torch.equal(rows, x0) and torch.equal(w > 0, xt == 1)
    cuts = set()
    for r in range(32):
        for b in range(0, 48, 8):
            if not maskable[r, b:b + 8].all():  # the block holding the clean prefix's end
                continue
            masked = (xt[r, b:b + 8] == 1).nonzero()[:, 0]
            assert len(masked) >= 1 and masked[-1] == 7  # from a point to the block's end
            assert torch.equal(masked, torch.arange(int(masked[0]), 8))
            cuts.add(int(masked[0]))
    assert len(cuts) >= 6  # the point varies with each block's t
    half = replace(cfg, block_tail=0.5)
    _, xt, _, maskable = corrupt(torch.randint(2, 50, (64, 48), generator=g), half, 1, g)
    blocks, open_ = (xt == 1).view(64, 6, 8), maskable.view(64, 6, 8).all(-1)  # blocks after the clean prefix
    is_tail = (blocks.int().diff(dim=-1) >= 0).all(-1) & blocks[..., -1]  # masked positions form a tail
    assert 0.5 < is_tail[open_].float().mean() < 0.8  # half drawn as tails, plus random masks that happen to be
    with pytest.raises(InvalidInputError, match="block-tail"):
        DiffusionTrainConfig(seq_len=48, block_tail=0.5)


def test_tail_starts_golden():
    masked = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0]]).bool()
    # a tail from offset 2; a whole block (offset 0); not a tail; nothing masked
    assert tail_starts(masked, 4)[0].int().tolist() == [0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]


def test_teacher_kl_is_zero_where_the_block_model_sees_the_ar_context():
    """A one-layer block model holding an AR model's weights predicts a block's first position
    from the finished block before it exactly as the AR model does: KL 0 there. (With more
    layers the finished block's earlier positions have seen later ones of their block, so the
    computation differs, though the tokens seen are the same.) From offset 2 on, the live
    block's clean positions also see the masks after them: KL > 0. Checks that the teacher's
    logits at p - 1 are matched with the model's prediction of p."""
    shape = dict(vocab_size=30, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, mask_token_id=1)
    ar = NativeModel(NativeConfig(**shape)).init_weights(0, std=0.5).double().eval()
    block = NativeModel(NativeConfig(**shape, attention="block_causal", block_size=4, shift=True)).double().eval()
    block.load_state_dict(ar.state_dict())
    cfg = DiffusionTrainConfig(seq_len=16, attention="block_causal", block_size=4, shift=True, teacher="ar",
                               precision="fp32")
    x0 = torch.randint(2, 30, (2, 16), generator=torch.Generator().manual_seed(0))
    off = torch.arange(16) % 4
    for k, zero in ((0, True), (2, False)):
        masked = (off >= k).expand(2, -1)
        logits = denoise_logits(block, torch.where(masked, 1, x0), x0, 4, shift=True)
        kl = teacher_kl(logits, x0, masked, ar, cfg).item()
        assert (kl < 1e-10) if zero else (kl > 1e-3), (k, kl)


def test_teacher_needs_a_block_model_and_its_tokenizer(tok_dir, tmp_path):
    with pytest.raises(InvalidInputError, match="--teacher needs a block-causal"):
        DiffusionTrainConfig(teacher="code-target")
    with pytest.raises(InvalidInputError, match="teacher_weight"):
        DiffusionTrainConfig(attention="block_causal", block_size=8, teacher="code-target", teacher_weight=-1)
    cfg = config(tok_dir, tmp_path / "bd", attention="block_causal", block_size=8, block_tail=0.5,
                 teacher="code-target", steps=1)
    with pytest.raises(VocabularyMismatchError, match="another tokenizer"):
        train_diffusion(cfg, progress=False)  # code-target's tokenizer is not tok_dir's
    tok = Tokenizer.from_dir(tok_dir)
    ar = NativeModel(NativeConfig(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, **SIZES["tiny"])).init_weights(5)
    save_model(ar, tok, tmp_path / "ar")
    record = train_diffusion(replace(cfg, teacher=str(tmp_path / "ar"), steps=2, eval_every=1000), progress=False)
    assert record["config"]["teacher"] == str(tmp_path / "ar") and "KL to" in record["objective"]
    assert math.isfinite(record["heldout_loss"])
