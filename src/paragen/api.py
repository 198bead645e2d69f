"""The public surface: ``load()``, ``generate()``, ``stream()``."""

from __future__ import annotations

import dataclasses
import numbers
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from paragen.driver import Generation, decode
from paragen.errors import (
    ContextLengthError,
    HeadsMismatchError,
    InvalidInputError,
    UnsupportedOptionError,
    VocabularyMismatchError,
)
from paragen.models import load
from paragen.models.base import Model
from paragen.sampling import SamplingParams
from paragen.strategies import get_strategy
from paragen.strategies.base import CountedModel, DecodeContext, Strategy

__all__ = ["Generation", "generate", "load", "make_options", "stream"]


def make_options(cls: type[Strategy], options: dict[str, Any]) -> Any:
    """Build a strategy's frozen options; strings (from the CLI) are converted by field type."""
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "none"
        raise UnsupportedOptionError(f"strategy '{cls.name}' has no option {', '.join(unknown)} (its options: {valid})")
    converted = {}
    for key, value in options.items():
        kind = type(fields[key].default)
        if isinstance(value, str) and kind is not str:
            try:
                value = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
            except ValueError:
                raise UnsupportedOptionError(f"{cls.name}: option {key} needs a {kind.__name__}, got '{value}'") from None
        converted[key] = value
    return cls.Options(**converted)


def _prompt_ids(model: Model, prompt: str | Sequence[int]) -> list[int]:
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise InvalidInputError("this model has no tokenizer: pass the prompt as a list of token ids")
        ids = model.tokenizer.encode(prompt)
    else:
        if any(not isinstance(t, numbers.Integral) for t in prompt):
            raise InvalidInputError(
                "a prompt is a string or a list of token ids; batches are not supported: call once per prompt"
            )
        ids = [int(t) for t in prompt]
        bad = [t for t in ids if not 0 <= t < model.info.vocab_size]
        if bad:
            raise InvalidInputError(f"token ids {bad[:5]} are outside the vocabulary [0, {model.info.vocab_size})")
    if not ids:
        raise InvalidInputError("the prompt is empty: give at least one token of text to continue")
    return ids


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
    if not cls.needs_draft and draft is not None:
        raise UnsupportedOptionError(f"strategy '{cls.name}' uses no draft model; drop the draft or pick 'speculative'")
    if draft is None:
        return
    same_size = draft.info.vocab_size == target.info.vocab_size
    tt, dt = target.tokenizer, draft.tokenizer
    same_tokens = tt is None or dt is None or tt.fingerprint() == dt.fingerprint()
    if not (same_size and same_tokens):
        raise VocabularyMismatchError(
            f"draft and target vocabularies differ (sizes {draft.info.vocab_size} vs {target.info.vocab_size}"
            f"{'' if same_tokens else ', different token tables'}): a draft must share the target's tokenizer"
        )


def _check_heads(cls: type[Strategy], target: Model, heads: Any) -> None:
    """Heads are given exactly to the strategies that run on them, of a kind they read, for this target."""
    if cls.head_kinds and heads is None:
        raise HeadsMismatchError(f"strategy '{cls.name}' needs prediction heads: pass heads=paragen.load_heads(DIR, model) "
                                 "(CLI: --heads DIR); train them with `paragen train heads`")
    if not cls.head_kinds and heads is not None:
        raise UnsupportedOptionError(f"strategy '{cls.name}' uses no prediction heads; drop heads= or pick 'medusa'")
    if heads is None:
        return
    if heads.kind not in cls.head_kinds:
        raise HeadsMismatchError(f"strategy '{cls.name}' runs on {' or '.join(cls.head_kinds)} heads, "
                                 f"not {heads.kind} heads")
    embed, proj = target.head_weights()
    same = heads.proj.data_ptr() == proj.data_ptr() or (heads.proj.shape == proj.shape and torch.equal(heads.proj, proj))
    if not same:
        raise HeadsMismatchError("these heads are bound to another model: load them with paragen.load_heads(DIR, model) "
                                 "for the model you generate with")


def stream(
    model: Model,
    prompt: str | Sequence[int],
    strategy: str = "ar",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: str | Sequence[str] | None = None,
    draft: Model | None = None,
    heads: Any = None,
    **options: Any,
) -> Iterator[str]:
    """Yield committed text pieces as they are decoded; the generator returns the Generation.

    ``heads``: prediction heads for the strategies that run on them (``paragen.load_heads``).

    Batch size is one: a list of prompts is not accepted (call once per prompt).
    """
    cls = get_strategy(strategy)
    opts = make_options(cls, options)
    sampling = SamplingParams(temperature, top_k, top_p)
    if not sampling.greedy and not cls.supports_sampling:
        raise UnsupportedOptionError(f"strategy '{cls.name}' is greedy-only: use temperature=0 or another strategy")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InvalidInputError(f"max_new_tokens must be a positive integer, got {max_new_tokens}")
    _check_model(cls, model)
    _check_draft(cls, model, draft)
    _check_heads(cls, model, heads)
    ids = _prompt_ids(model, prompt)
    limit = model.info.max_length if draft is None else min(model.info.max_length, draft.info.max_length)
    if len(ids) + max_new_tokens > limit:
        raise ContextLengthError(
            f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model context of {limit}: "
            "shorten the prompt or ask for fewer tokens"
        )
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if stops and model.tokenizer is None:
        raise InvalidInputError("stop strings need a model with a tokenizer")
    if any(not s for s in stops):
        raise InvalidInputError("stop strings must be non-empty")
    generator = torch.Generator().manual_seed(seed if seed is not None else random.randrange(2**63))
    ctx = DecodeContext(
        target=CountedModel(model),
        draft=CountedModel(draft) if draft is not None else None,
        sampling=sampling,
        generator=generator,
        heads=heads,
        cache_length=len(ids) + max_new_tokens + cls.slack(opts),
    )
    with torch.inference_mode():
        gen = yield from decode(cls(ctx, opts), ctx, ids, max_new_tokens, model.tokenizer, model.info.eos_ids, stops)
    return gen


def generate(model: Model, prompt: str | Sequence[int], strategy: str = "ar", **kwargs: Any) -> Generation:
    """Decode a continuation of ``prompt`` with a strategy; see ``stream`` for the arguments.

    Returns ``Generation(tokens, text, stats)`` with the new tokens only.
    """
    it = stream(model, prompt, strategy, **kwargs)
    while True:
        try:
            next(it)
        except StopIteration as done:
            return done.value
