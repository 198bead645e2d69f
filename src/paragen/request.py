"""A decoding request, checked: every argument of ``generate``/``stream`` (and of a server
request) validated against the model before any work, and nothing built.

``check_request`` is pure apart from loading a built-in target's default heads; it returns a
``Request`` that the API turns into a decode (``paragen.api``) and the serving engine into
rows of a running batch (``paragen.serve.engine``). ``context`` builds the one thing both
need from it: the strategy's ``DecodeContext``, with one random generator per row.
"""

from __future__ import annotations

import dataclasses
import numbers
import random
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from paragen.cache import OneRowCache
from paragen.errors import (
    ContextLengthError,
    DeviceError,
    HeadsMismatchError,
    InvalidInputError,
    UnsupportedOptionError,
    VocabularyMismatchError,
)
from paragen.heads.io import default_heads
from paragen.models import device_of
from paragen.models.base import Model
from paragen.options import make_options
from paragen.sampling import SamplingParams
from paragen.strategies import get_strategy
from paragen.strategies.base import MAX_CALL_TOKENS, CountedModel, DecodeContext, Strategy

# The most prompts one ``generate`` call decodes together. Every row gets cache slots for the
# longest prompt + max_new_tokens up front, in every layer of the target and the draft, and
# every row joins every call: on a CPU a batch stops gaining throughput well before 64 rows
# (the calls become compute-bound), and 64 rows of a 1024-token context in a mid-size model
# already hold gigabytes of cache. Split a larger set of prompts into several calls.
MAX_BATCH = 64


@dataclass(frozen=True)
class Request:
    """A checked request: ``prompts`` as token ids (one or a batch), the strategy class and its
    options, sampling settings, and the models it runs on."""

    strategy: type[Strategy]
    options: Any
    prompts: list[list[int]]
    max_new_tokens: int
    sampling: SamplingParams
    seeds: tuple[int | None, ...]  # one per prompt
    stop: tuple[str, ...]
    draft: Model | None
    heads: Any

    @property
    def cache_length(self) -> int:
        """Cache slots per row: the longest prompt, the new tokens, and the strategy's pending drafts."""
        return max(map(len, self.prompts)) + self.max_new_tokens + self.strategy.slack(self.options)


def check_request(
    model: Model,
    prompts: list[str | Sequence[int]],
    strategy: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | Sequence[int] | None,
    stop: str | Sequence[str] | None,
    draft: Model | None,
    heads: Any,
    options: dict[str, Any],
) -> Request:
    """Check every argument against ``model``; a ``ParagenError`` that says what to do, or the ``Request``."""
    cls = get_strategy(strategy)
    opts = make_options(cls, options)
    sampling = _check_sampling(temperature, top_k, top_p)
    if not sampling.greedy and not cls.supports_sampling:
        raise UnsupportedOptionError(f"strategy '{cls.name}' is greedy-only: use temperature=0 or another strategy")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidInputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    _check_model(cls, model)
    _check_draft(cls, model, draft)
    _check_call_size(cls, opts, model)
    if heads is None and (cls.head_kinds or cls.takes_heads):  # the built-in heads for a built-in target, when shipped
        heads = default_heads(model, cls.head_kinds or cls.takes_heads)
    _check_heads(cls, model, heads)
    if len(prompts) > 1:
        _check_batched(cls, model, draft)
    ids = [_prompt_ids(model, p) for p in prompts]
    limit = model.info.max_length if draft is None else min(model.info.max_length, draft.info.max_length)
    longest = max(map(len, ids))
    if longest + max_new_tokens > limit:
        raise ContextLengthError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model context of {limit}: "
            "shorten the prompt or ask for fewer tokens"
        )
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if stops and model.tokenizer is None:
        raise InvalidInputError("stop strings need a model with a tokenizer")
    if any(not isinstance(s, str) or not s for s in stops):
        raise InvalidInputError("stop strings must be non-empty strings")
    return Request(cls, opts, ids, max_new_tokens, sampling, _check_seeds(seed, len(ids)), stops, draft, heads)


def _check_seeds(seed: Any, rows: int) -> tuple[int | None, ...]:
    """One seed per row: a list gives each prompt its own; one integer s gives row i the seed
    s + i, so the rows of a batch (equal prompts included) draw independent samples and row 0
    is the single-prompt call with seed s. A row with a given seed is the same text alone or
    in any batch (each row draws from a generator of its own)."""
    is_int = lambda x: isinstance(x, numbers.Integral) and not isinstance(x, bool)  # noqa: E731
    if seed is None:
        return (None,) * rows
    if is_int(seed):
        return tuple(int(seed) + i for i in range(rows))
    if isinstance(seed, Sequence) and not isinstance(seed, str) and all(map(is_int, seed)):
        if len(seed) != rows:
            raise InvalidInputError(f"{len(seed)} seeds for {rows} prompts: give one seed, or one per prompt")
        return tuple(int(s) for s in seed)
    raise InvalidInputError(f"seed must be an integer, a list of integers (one per prompt) or None, got {seed!r}")


def row_generator(model: Model, seed: int | None) -> torch.Generator:
    """A row's random generator, on the model's device (every draw of the loop stays there):
    seeded with ``seed``, so a seeded row draws the same numbers alone or in any batch."""
    return torch.Generator(device=device_of(model)).manual_seed(seed if seed is not None else random.randrange(2**63))


def context(model: Model, request: Request, generators: list[torch.Generator], cache_length: int) -> DecodeContext:
    """The DecodeContext of ``request``'s rows: one generator per row, caches of ``cache_length`` slots."""
    return DecodeContext(
        target=CountedModel(model),
        draft=CountedModel(request.draft) if request.draft is not None else None,
        sampling=request.sampling,
        generator=generators[0],
        generators=generators,
        heads=request.heads,
        cache_length=cache_length,
        # A packed weight format (int8-weights is lossy) is named in every Generation's stats.
        extra={"weights": fmt} if (fmt := getattr(model, "weight_format", None)) else {},
    )


def _check_batched(cls: type[Strategy], model: Model, draft: Model | None) -> None:
    if not cls.batched:
        from paragen.strategies import STRATEGIES

        batched = ", ".join(n for n, c in STRATEGIES.items() if c.batched)
        raise UnsupportedOptionError(f"strategy '{cls.name}' decodes one prompt at a time; the strategies that "
                                     f"decode a batch are {batched}: call generate once per prompt")
    if any(isinstance(m.new_cache(batch=1, max_length=1), OneRowCache) for m in (model, draft) if m is not None):
        raise UnsupportedOptionError("this backend decodes one prompt at a time (its cache has one length): "
                                     "load the model with backend='native' to decode a batch")


def _check_call_size(cls: type[Strategy], opts: Any, model: Model) -> None:
    """Refuse options whose model calls would not fit the context or ``MAX_CALL_TOKENS``
    (a huge lookahead window would otherwise run for minutes on gigabytes)."""
    n = cls.call_tokens(opts)
    limit, what = min((model.info.max_length, "the model context"), (MAX_CALL_TOKENS, "paragen's cap MAX_CALL_TOKENS"))
    if n > limit:
        hints = typing.get_type_hints(type(opts))
        names = ", ".join(f.name for f in dataclasses.fields(opts) if hints[f.name] is int) or "its options"
        raise UnsupportedOptionError(
            f"strategy '{cls.name}' with these options feeds {n} tokens per model call, more than {limit} "
            f"({what}): use smaller values of {names}"
        )


def _prompt_ids(model: Model, prompt: str | Sequence[int]) -> list[int]:
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise InvalidInputError("this model has no tokenizer: pass the prompt as a list of token ids")
        ids = model.tokenizer.encode(prompt)
    else:
        if any(not isinstance(t, numbers.Integral) for t in prompt):
            raise InvalidInputError("a prompt is a string or a list of token ids (a batch is a list of such prompts)")
        ids = [int(t) for t in prompt]
        bad = [t for t in ids if not 0 <= t < model.info.vocab_size]
        if bad:
            raise InvalidInputError(f"token ids {bad[:5]} are outside the vocabulary [0, {model.info.vocab_size})")
    if not ids:
        raise InvalidInputError("the prompt is empty: give at least one token of text to continue")
    return ids


def batch_prompts(prompt: Any) -> list[Any] | None:
    """The prompts of a batch (a list of strings or of token-id lists), or None for one prompt."""
    if isinstance(prompt, str) or not isinstance(prompt, Sequence):
        return None
    if len(prompt) == 0:
        raise InvalidInputError("empty list: give a prompt (a string or token ids) or a batch (a list of prompts)")
    texts = [isinstance(p, str) for p in prompt]
    lists = [not isinstance(p, (str, numbers.Integral)) and isinstance(p, Sequence) for p in prompt]
    if not any(texts) and not any(lists):
        return None  # token ids of one prompt (bad ids are _prompt_ids' to report)
    if any(texts) and any(lists):
        raise InvalidInputError("this batch mixes strings and token-id lists: give every prompt the same way")
    if not all(texts) and not all(lists):
        raise InvalidInputError("a batch is a list of prompts (strings or token-id lists), not a mix of prompts and ids")
    if len(prompt) > MAX_BATCH:
        raise InvalidInputError(f"a batch of {len(prompt)} prompts is above MAX_BATCH = {MAX_BATCH}: "
                                "split it into several generate calls")
    return list(prompt)


def _check_model(cls: type[Strategy], model: Model) -> None:
    if model.info.attention != cls.attention:
        runs = {"causal": "causal LMs", "bidirectional": "masked-diffusion models",
                "block_causal": "block-causal diffusion models"}
        raise UnsupportedOptionError(
            f"strategy '{cls.name}' runs {runs.get(cls.attention, cls.attention)}, and this model is "
            f"{model.info.attention}: pick a strategy for it, e.g. "
            f"'{ {'bidirectional': 'diffusion', 'block_causal': 'block_diffusion'}.get(model.info.attention, 'ar') }'"
        )


def _check_draft(cls: type[Strategy], target: Model, draft: Model | None) -> None:
    if cls.needs_draft and draft is None:
        raise InvalidInputError(f"strategy '{cls.name}' needs a draft model: pass draft=... (CLI: --draft NAME_OR_DIR)")
    if not cls.needs_draft and not cls.takes_draft and draft is not None:
        raise UnsupportedOptionError(f"strategy '{cls.name}' uses no draft model; drop the draft or pick 'speculative'")
    if draft is None:
        return
    if device_of(draft) != device_of(target):
        raise DeviceError(f"the draft is on {device_of(draft)} and the target on {device_of(target)}: "
                          "load both on one device (paragen.load(..., device=...), CLI --device)")
    same_size = draft.info.vocab_size == target.info.vocab_size
    tt, dt = target.tokenizer, draft.tokenizer
    same_tokens = tt is None or dt is None or tt.fingerprint() == dt.fingerprint()
    if not (same_size and same_tokens):
        raise VocabularyMismatchError(
            f"draft and target vocabularies differ (sizes {draft.info.vocab_size} vs {target.info.vocab_size}"
            f"{'' if same_tokens else ', different token tables'}): a draft must share the target's tokenizer"
        )


def _check_sampling(temperature: Any, top_k: Any, top_p: Any) -> SamplingParams:
    """SamplingParams, after type checks that name the wrong type (a string "0.5" is not 0.5)."""
    for name, value, kinds in (("temperature", temperature, numbers.Real), ("top_k", top_k, numbers.Integral),
                               ("top_p", top_p, numbers.Real)):
        if value is None and name != "temperature":
            continue
        if isinstance(value, bool) or not isinstance(value, kinds):
            need = "an integer" if kinds is numbers.Integral else "a number"
            raise InvalidInputError(f"{name} must be {need}, got {type(value).__name__} {value!r}")
    return SamplingParams(float(temperature), top_k, None if top_p is None else float(top_p))


def _check_heads(cls: type[Strategy], target: Model, heads: Any) -> None:
    """Heads are given exactly to the strategies that run on them, of a kind they read, for this target."""
    if cls.head_kinds and heads is None:
        raise HeadsMismatchError(f"strategy '{cls.name}' needs prediction heads and none are built in for this model: pass "
                                 "heads=paragen.load_heads(DIR, model) (CLI: --heads DIR); train them with `paragen train heads`")
    kinds = cls.head_kinds or cls.takes_heads
    if not kinds and heads is not None:
        raise UnsupportedOptionError(f"strategy '{cls.name}' uses no prediction heads; drop heads= or pick 'medusa'")
    if heads is None:
        return
    if heads.kind not in kinds:
        raise HeadsMismatchError(f"strategy '{cls.name}' runs on {' or '.join(kinds)} heads, "
                                 f"not {heads.kind} heads")
    embed, proj = target.head_weights()
    same = heads.proj.data_ptr() == proj.data_ptr() or (heads.proj.shape == proj.shape and torch.equal(heads.proj, proj))
    if not same:
        raise HeadsMismatchError("these heads are bound to another model: load them with paragen.load_heads(DIR, model) "
                                 "for the model you generate with")
