"""The public surface: ``load()``, ``generate()``, ``stream()``."""

from __future__ import annotations

import contextlib
import dataclasses
import numbers
import random
import typing
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import torch

from paragen.cache import OneRowCache
from paragen.driver import Generation, decode
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
from paragen.models import load as load_lm
from paragen.models.base import Model
from paragen.sampling import SamplingParams
from paragen.strategies import get_strategy
from paragen.strategies.base import MAX_CALL_TOKENS, CountedModel, DecodeContext, Strategy

__all__ = ["DEFAULT_THREADS", "MAX_BATCH", "Generation", "Stream", "generate", "load", "make_options", "stream",
           "torch_threads"]

# The most prompts one ``generate`` call decodes together. Every row gets cache slots for the
# longest prompt + max_new_tokens up front, in every layer of the target and the draft, and
# every row joins every call: on a CPU a batch stops gaining throughput well before 64 rows
# (the calls become compute-bound), and 64 rows of a 1024-token context in a mid-size model
# already hold gigabytes of cache. Split a larger set of prompts into several calls.
MAX_BATCH = 64

# torch CPU threads for `paragen generate` and `paragen bench` unless --threads says otherwise.
# Measured with scripts/threads.sh on a 2-core machine under load (load average 6-7, training
# jobs running): code-target ar 114-199 tok/s on 1 thread against 4-8 tok/s on 2; lookahead
# 75-125 against 5-7. Batch-1 decoding of small models has little work to split per token, and
# a thread that waits for a busy core stalls every step. Quiet, 2 threads gain 1.5x (ar 264-279
# tok/s against 394-406; lookahead 181-184 against 269-290): a third lost when quiet against
# 95% lost when loaded, so 1 is the default and --threads 2 the advice for a quiet machine.
DEFAULT_THREADS = 1


# Spellings a boolean option accepts from the CLI (case-insensitive); anything else is an error,
# so a typo like "ture" never turns into a silent False.
BOOLEAN_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _convert(strategy: str, key: str, kind: type, value: Any) -> Any:
    """``value`` as a ``kind`` (bool, int, float or str), from a Python value or a CLI string.

    Strict: an int option refuses 2.7 and "2.7", a bool option refuses 2 and "ture".
    """
    what = {bool: "a boolean (true/false, 1/0, yes/no)", int: "an integer", float: "a number",
            str: "a string"}.get(kind, kind.__name__)
    bad = UnsupportedOptionError(f"{strategy}: option {key} needs {what}, got {value!r}")
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool:
            if text.lower() not in BOOLEAN_WORDS:
                raise bad
            return BOOLEAN_WORDS[text.lower()]
        try:
            return kind(text)
        except ValueError:
            raise bad from None
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise bad
    return kind(value)


def make_options(cls: type, options: dict[str, Any]) -> Any:
    """Build a strategy's (or a bench peer's) frozen options from keyword values or CLI strings.

    Each value is checked against its field's type (see ``_convert``); the options
    dataclass's own ``__post_init__`` then checks ranges.
    """
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "none"
        raise UnsupportedOptionError(f"strategy '{cls.name}' has no option {', '.join(unknown)} (its options: {valid})")
    hints = typing.get_type_hints(cls.Options)
    return cls.Options(**{key: _convert(cls.name, key, hints[key], value) for key, value in options.items()})


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


def _batch(prompt: Any) -> list[Any] | None:
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
    if not cls.needs_draft and draft is not None:
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


class Stream:
    """The committed text pieces of one generation, and its ``Generation`` once exhausted.

    Iterate it for the text; afterwards ``.generation`` holds the tokens, text and stats
    (``None`` before the end). ``next()`` also ends with ``StopIteration`` whose ``value``
    is the Generation, as a generator's return value would be.
    """

    def __init__(self, pieces: Generator[str, None, Generation]) -> None:
        self._pieces = pieces
        self.generation: Generation | None = None

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as done:
            # A closed or exhausted generator ends again with None: keep the result it gave.
            self.generation = self.generation or done.value
            raise StopIteration(self.generation) from None

    def close(self) -> None:
        """Stop decoding now (a server whose client left, a deadline): the decode loop ends
        where it stands and its cache is freed; ``generation`` stays ``None``."""
        self._pieces.close()


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


def _prepare(
    model: Model,
    prompts: list[str | Sequence[int]],
    strategy: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    seed: int | None,
    stop: str | Sequence[str] | None,
    draft: Model | None,
    heads: Any,
    options: dict[str, Any],
) -> Generator[tuple[int, str], None, list[Generation]]:
    """Check every argument, then return the (not yet started) driver generator for these prompts."""
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
    if heads is None and cls.head_kinds:  # the built-in heads for a built-in target, when shipped
        heads = default_heads(model, cls.head_kinds)
    _check_heads(cls, model, heads)
    if len(prompts) > 1:
        if not cls.batched:
            from paragen.strategies import STRATEGIES

            batched = ", ".join(n for n, c in STRATEGIES.items() if c.batched)
            raise UnsupportedOptionError(f"strategy '{cls.name}' decodes one prompt at a time; the strategies that "
                                         f"decode a batch are {batched}: call generate once per prompt")
        if any(isinstance(m.new_cache(batch=1, max_length=1), OneRowCache) for m in (model, draft) if m is not None):
            raise UnsupportedOptionError("this backend decodes one prompt at a time (its cache has one length): "
                                         "load the model with backend='native' to decode a batch")
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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise InvalidInputError(f"seed must be an integer or None, got {seed!r}")
    # The generator lives where the model does: every random draw of the loop stays on the device.
    device = device_of(model)
    generator = torch.Generator(device=device).manual_seed(int(seed) if seed is not None else random.randrange(2**63))
    ctx = DecodeContext(
        target=CountedModel(model),
        draft=CountedModel(draft) if draft is not None else None,
        sampling=sampling,
        generator=generator,
        heads=heads,
        cache_length=longest + max_new_tokens + cls.slack(opts),
        # A packed weight format (int8-weights is lossy) is named in every Generation's stats.
        extra={"weights": fmt} if (fmt := getattr(model, "weight_format", None)) else {},
    )

    def pieces() -> Generator[tuple[int, str], None, list[Generation]]:
        with torch.inference_mode():
            return (yield from decode(cls(ctx, opts), ctx, ids, max_new_tokens, model.tokenizer,
                                      model.info.eos_ids, stops))

    return pieces()


def _text(pieces: Generator[tuple[int, str], None, list[Generation]]) -> Generator[str, None, Generation]:
    """The text pieces of a batch of one, returning its Generation."""
    try:
        while True:
            try:
                _, piece = next(pieces)
            except StopIteration as done:
                return done.value[0]
            yield piece
    finally:
        pieces.close()  # a closed Stream ends the decode loop too


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
) -> Stream:
    """Decode lazily: returns a ``Stream`` yielding committed text pieces as they are decoded,
    whose ``.generation`` holds the ``Generation`` (tokens, text, stats) once it is exhausted.

    ``heads``: prediction heads for the strategies that run on them (``paragen.load_heads``);
    by default the built-in heads of a built-in target (``paragen models`` lists them).
    Every argument is checked here, before the first token.

    One prompt only; ``generate`` takes a batch. A stream is one continuation's text, as its
    consumers (the CLI's terminal, a server's SSE response) read it: a batch's pieces would
    interleave rows and need another item type, (row, text), that only a batching server
    could use, and such a server admits new requests into a running batch (continuous
    batching), which a fixed list of prompts does not give.
    """
    from paragen.speech.model import SpeechModel

    if isinstance(model, SpeechModel):
        raise InvalidInputError("this is a speech model: transcribe audio with paragen.transcribe(model, audio) or "
                                "`paragen transcribe FILE.wav`")
    if _batch(prompt) is not None:
        raise InvalidInputError("stream() decodes one prompt: pass a list of prompts to generate() instead")
    return Stream(_text(_prepare(model, [prompt], strategy, max_new_tokens, temperature, top_k, top_p, seed, stop,
                                 draft, heads, options)))


def generate(
    model: Model,
    prompt: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]],
    strategy: str = "ar",
    **kwargs: Any,
) -> Generation | list[Generation]:
    """Decode a continuation of ``prompt`` with a strategy; see ``stream`` for the arguments.

    Returns ``Generation(tokens, text, stats)`` with the new tokens only. ``prompt`` may be a
    batch (a list of strings, or of token-id lists; at most ``MAX_BATCH``): the rows are
    decoded together, each accepting its own number of tokens per step and leaving the batch
    when it finishes, and a list of Generations comes back, one per prompt, in order, each
    equal token for token to decoding that prompt alone (greedy). A sampled row is
    distributed exactly as alone, but draws other random numbers than alone with the same
    seed (the rows share one generator). ``ar``, ``speculative`` and ``lookup`` decode
    batches; the other strategies take a batch of one. Given a speech model, ``prompt`` is the
    audio (path, bytes or waveform) and this is ``paragen.transcribe``.
    """
    from paragen.speech.model import SpeechModel

    if isinstance(model, SpeechModel):
        from paragen.speech.api import transcribe

        return transcribe(model, prompt, strategy, **kwargs)
    known = {"max_new_tokens": 128, "temperature": 0.0, "top_k": None, "top_p": None, "seed": None, "stop": None,
             "draft": None, "heads": None}
    args = {name: kwargs.pop(name, default) for name, default in known.items()}
    batch = _batch(prompt)
    pieces = _prepare(model, batch or [prompt], strategy, options=kwargs, **args)
    return _run(pieces) if batch is not None else _run(_text(pieces))


def _run(pieces: Generator[Any, None, Any]) -> Any:
    """Exhaust a generator; its return value."""
    while True:
        try:
            next(pieces)
        except StopIteration as done:
            return done.value


def load(name_or_path: str | Any, backend: str = "native", dtype: torch.dtype | str | None = None,
         compile: bool = False, device: str | torch.device = "cpu") -> Any:
    """A built-in model by name or a model directory (see ``paragen.models.load`` for the
    arguments); a speech model (``speech-en``, or a directory from ``paragen train speech``)
    loads as a ``SpeechModel``, on the CPU, in float32 or float64."""
    from paragen.models.io import resolve
    from paragen.speech.model import is_speech_model, load_speech_model

    path = resolve(name_or_path)
    if is_speech_model(path):
        if compile or str(device) != "cpu" or isinstance(dtype, str):
            raise InvalidInputError("speech models load on the CPU, uncompiled, as a torch dtype: drop compile, "
                                    "device and weight formats")
        model = load_speech_model(path, dtype or torch.float32)
        model.name = path.name
        return model
    return load_lm(name_or_path, backend=backend, dtype=dtype, compile=compile, device=device)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the previous count.

    torch's thread count is process-wide, so commands set it for their own duration only
    (``paragen generate`` / ``bench`` ``--threads``; default ``DEFAULT_THREADS``).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidInputError(f"threads must be an integer >= 1, got {n!r}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
