"""Test doubles and helpers shared by the test modules (test modules import from here, never
from each other): tiny random models, the distribution-test tools and their 4-token models,
drafts and heads that are always wrong or always right, prompts, and small configs.

Everything is deterministic (seeded) and tiny: building a model here takes milliseconds.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from typing import Any

import torch

from paragen.models.base import Model
from paragen.models.native import NativeConfig, NativeModel
from paragen.reference import reference_greedy
from paragen.sampling import SamplingParams, warp
from paragen.speech import vocab as speech_vocab
from paragen.speech.model import SpeechConfig, SpeechModel
from paragen.strategies import STRATEGIES

# ---------------------------------------------------------------- tiny random models

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "def sub(a, b):\n    return a - b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nprint(os.path.join('a', 'b'))\n",
] * 20


def tiny_model(
    seed: int = 0, vocab: int = 50, std: float = 0.5, attention: str = "causal", eos: int | None = None,
    max_len: int = 512, layers: int = 2, bias: bool = False,
) -> NativeModel:
    """A random float64 model. A large init std gives peaked, varied distributions (less argmax ties)."""
    cfg = NativeConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_len, attention=attention, eos_token_id=eos,
        attention_bias=bias, tie_word_embeddings=not bias,
    )
    model = NativeModel(cfg).init_weights(seed, std=std).double().eval()
    if bias:  # Qwen2-style q/k/v biases: make them non-zero so parity tests see them
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return model


MODELS = {seed: tiny_model(seed) for seed in range(3)}  # the oracle tests' targets, and drafts for each other
EOS_MODEL = tiny_model(7, vocab=12, eos=3)  # small vocabulary: EOS comes up often
OTHER_DRAFT = tiny_model(5)  # a different random model as the draft: it is mostly rejected


def tiny_speech(seed: int = 0, eos_bias: float = 0.0, cmlm_layers: int = 0) -> SpeechModel:
    """A random float64 speech model with peaked outputs (large weights: no near-ties in argmax);
    ``eos_bias`` raises EOS's logit so that outputs end before the length limit; ``cmlm_layers``
    > 0 gives it a CMLM decoder."""
    torch.manual_seed(seed)
    m = SpeechModel(SpeechConfig(d_model=32, heads=2, ff=64, encoder_layers=1, decoder_layers=2, nar_layers=1,
                                 cmlm_layers=cmlm_layers, conv_channels=4, dropout=0.0))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("head.weight"):
                p.mul_(8.0)
        m.head.bias[speech_vocab.EOS] += eos_bias
    return m.double().eval()


# ---------------------------------------------------------------- distribution tests
# E[TV] <= 0.5 * sqrt(K / N) for K outcomes, and TV moves by at most 1/N per sample, so
# (McDiarmid) P(TV > E + t) <= exp(-2 N t^2); t = sqrt(ln(1e6) / (2N)) keeps a correct
# sampler's failure rate below one in a million.


def tv_bound(k: int, n: int) -> float:
    return 0.5 * math.sqrt(k / n) + math.sqrt(math.log(1e6) / (2 * n))


def tv(counts: Counter, exact: dict, n: int) -> float:
    keys = set(counts) | set(exact)
    return 0.5 * sum(abs(counts.get(x, 0) / n - exact.get(x, 0.0)) for x in keys)


def exact_sequence_distribution(model, prompt: list[int], length: int, params: SamplingParams) -> dict:
    """P(x_1..x_L | prompt) by enumeration, with the no-cache model and the same warp."""
    V = model.info.vocab_size
    out = {}
    with torch.inference_mode():
        for seq in itertools.product(range(V), repeat=length):
            prob, ctx = 1.0, list(prompt)
            for t in seq:
                logits = model(torch.tensor([ctx]), torch.arange(len(ctx))[None])[0, -1]
                prob *= float(warp(logits, params)[t])
                ctx.append(t)
            if prob > 0:
                out[seq] = prob
    return out


V = 4  # the distribution tests' vocabulary: every sequence of a few tokens can be enumerated
TARGET = tiny_model(11, vocab=V, std=0.3)  # flat enough that rejections and residuals matter
DRAFT = tiny_model(12, vocab=V, std=0.6)  # a different model: rejections do happen
PROMPT = [0, 1, 2, 0, 1]  # repeats, so lookup finds drafts


# ---------------------------------------------------------------- drafts, heads and cases


class AdversarialDraft(Model):
    """A draft that never agrees with the target: its argmax is the target's argmax + 1."""

    def __init__(self, target: Model) -> None:
        self.target, self.info, self.tokenizer = target, target.info, None

    def forward(self, tokens, positions, cache=None, mask=None):
        logits = self.target(tokens, positions, cache=cache, mask=mask)
        wrong = (logits.argmax(-1) + 1) % logits.shape[-1]
        return torch.nn.functional.one_hot(wrong, logits.shape[-1]).to(logits.dtype) * 10.0

    def new_cache(self, batch=1, max_length=None):
        return self.target.new_cache(batch, max_length)

    @property
    def dtype(self):
        return self.target.dtype


class OracleHeads(torch.nn.Module):
    """Test double: heads that know the target's greedy future, wrong where ``wrong`` says.

    The states of the oracle trajectory are computed once with no cache; a state seen while
    decoding is looked up by nearest neighbour (equal up to rounding), and head j answers
    the token j + 2 places after it: the draft of a perfect drafter, or of a partly wrong one.
    """

    def __init__(self, target, prompt: list[int], n: int, kind: str, num_heads: int = 4, wrong: float = 0.0, seed: int = 0):
        super().__init__()
        self.kind, self.num_heads = kind, num_heads
        self.embed, self.proj = target.head_weights()
        self.future = prompt + reference_greedy(target, prompt, n + num_heads + 2)
        with torch.inference_mode():
            _, hidden = target(torch.tensor([self.future]), torch.arange(len(self.future))[None], return_hidden=True)
        self.keys = hidden[0]
        # Repeated tokens can give equal states (attention over equal values): a lookup is then
        # ambiguous, and the tests skip such trajectories.
        gaps = torch.cdist(self.keys, self.keys) + torch.eye(len(self.keys), dtype=self.keys.dtype)
        self.unambiguous = bool((gaps > 1e-6).all())
        g = torch.Generator().manual_seed(seed)
        self.wrong = torch.rand(len(self.future), num_heads, generator=g) < wrong
        self.V = self.proj.shape[0]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[H] -> logits [K, V]: one-hot-like on the oracle's token (or a wrong one); [B, H] -> [B, K, V]."""
        if hidden.dim() == 2:
            return torch.stack([self(h) for h in hidden])
        d = (self.keys - hidden).norm(dim=-1)
        i = int(d.argmin())
        assert float(d[i]) < 1e-6, "a state off the oracle's trajectory: the output already differs"
        out = torch.zeros(self.num_heads, self.V, dtype=hidden.dtype)
        for j in range(self.num_heads):
            t = self.future[i + 2 + j] if i + 2 + j < len(self.future) else 0
            out[j, (t + 1) % self.V if self.wrong[i, j] else t] = 10.0
        return out

    def head(self, j: int, hidden: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Hydra's interface: the same answer for every node of a level."""
        return torch.stack([self(h)[j] for h in hidden])


NO_DRAFTS = {"ar", "diffusion", "block_diffusion"}  # nothing guessed, nothing verified: no draft counts


def stats_case(name: str, seed: int):
    """(model, keyword arguments) that run strategy ``name`` on a tiny float64 model."""
    from paragen.heads import new_heads

    cls = STRATEGIES[name]
    if cls.attention != "causal":
        cfg = NativeConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, attention=cls.attention, mask_token_id=49,
                           block_size=4 if cls.attention == "block_causal" else None)
        return NativeModel(cfg).init_weights(seed, std=0.5).double().eval(), {}
    model, kw = MODELS[0], {}
    if cls.needs_draft:
        kw["draft"] = MODELS[1 + seed % 2]
    if cls.head_kinds:
        kw["heads"] = new_heads(model, cls.head_kinds[0], 3, seed=seed, std=0.3, zero_out=seed % 2 == 0)
    return model, kw


def ragged_prompts(seed: int, n: int, vocab: int, repeat: bool = True) -> list[list[int]]:
    """n prompts of lengths 1..20; some repeat a pattern, so lookup finds drafts in them."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(1, 20)
        base = [rng.randrange(vocab) for _ in range(rng.randint(1, 4))]
        out.append((base * 20)[:length] if repeat and i % 2 else [rng.randrange(vocab) for _ in range(length)])
    return out


# ---------------------------------------------------------------- the serving engine


def drive(engine: Any, arrivals: dict[int, list[Any]], max_steps: int = 2000) -> int:
    """Step the engine, adding each step's arrivals first, until nothing is left; the steps taken."""
    for step in range(max_steps):
        for entry in arrivals.get(step, []):
            engine.add(entry)
        if engine.idle and step > max(arrivals, default=0):
            return step
        engine.step()
    raise AssertionError("the engine did not finish")


def result(events: list) -> Any:
    kind, value = events[-1]
    assert kind == "done", events[-1]
    return value


# ---------------------------------------------------------------- training


TINY_TRAIN = dict(size="tiny", max_files=30, seq_len=64, batch_size=8, vocab_size=300, precision="fp32", warmup=4,
                  eval_every=20, checkpoint_every=10, eval_windows=16)


DIFFUSION_V, DIFFUSION_MASK, DIFFUSION_EOS = 40, 39, 38  # the diffusion tests' vocabulary, mask and end-of-text


def tiny_diffusion(attention: str = "bidirectional", block_size: int | None = None, eos: int | None = None,
                   seed: int = 0, mask: int | None = DIFFUSION_MASK, shift: bool = False) -> NativeModel:
    """A tiny random diffusion (or, with attention="causal", AR) model in float64."""
    cfg = NativeConfig(
        vocab_size=DIFFUSION_V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, attention=attention, block_size=block_size, mask_token_id=mask, eos_token_id=eos,
        shift=shift,
    )
    return NativeModel(cfg).init_weights(seed, std=0.5).double().eval()
