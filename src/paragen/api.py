"""The public surface: ``load()``, ``generate()``, ``stream()``."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Generator, Iterator, Sequence
from typing import Any

import torch

from paragen.driver import Generation, decode
from paragen.errors import InvalidInputError
from paragen.models import load as load_lm
from paragen.models.base import Model
from paragen.options import make_options
from paragen.request import MAX_BATCH, Request, batch_prompts, check_request, context, row_generator
from paragen.trace import Recorder

__all__ = ["DEFAULT_THREADS", "MAX_BATCH", "Generation", "Stream", "generate", "load", "make_options", "stream",
           "torch_threads"]

# torch CPU threads for `paragen generate` and `paragen bench` unless --threads says otherwise.
# Measured with scripts/threads.sh on a 2-core machine under load (load average 6-7, training
# jobs running): code-target ar 114-199 tok/s on 1 thread against 4-8 tok/s on 2; lookahead
# 75-125 against 5-7. Batch-1 decoding of small models has little work to split per token, and
# a thread that waits for a busy core stalls every step. Quiet, 2 threads gain 1.5x (ar 264-279
# tok/s against 394-406; lookahead 181-184 against 269-290): a third lost when quiet against
# 95% lost when loaded, so 1 is the default and --threads 2 the advice for a quiet machine.
DEFAULT_THREADS = 1


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


def _decode(model: Model, request: Request, trace: bool = False) -> Generator[tuple[int, str], None, list[Generation]]:
    """The (not yet started) driver generator of a checked request: each row draws from a
    generator of its own, seeded with its seed (a seeded row of a batch gives what the same
    prompt and seed give alone). With ``trace`` each Generation gets its ``Trace``."""
    generators = [row_generator(model, seed) for seed in request.seeds]
    ctx = context(model, request, generators, request.cache_length)
    if trace:
        meta = {"model": getattr(model, "name", None), "options": dataclasses.asdict(request.options),
                "temperature": request.sampling.temperature, "max_new_tokens": request.max_new_tokens}
        ctx.trace = Recorder(request.strategy.name, request.prompts, ctx.target.device, meta)
    with torch.inference_mode():
        return (yield from decode(request.strategy(ctx, request.options), ctx, request.prompts, request.max_new_tokens,
                                  model.tokenizer, model.info.eos_ids, request.stop))


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
    trace: bool = False,
    **options: Any,
) -> Stream:
    """Decode lazily: returns a ``Stream`` yielding committed text pieces as they are decoded,
    whose ``.generation`` holds the ``Generation`` (tokens, text, stats) once it is exhausted.

    ``heads``: prediction heads for the strategies that run on them (``paragen.load_heads``);
    by default the built-in heads of a built-in target (``paragen models`` lists them).
    Every argument is checked here, before the first token. ``trace=True`` records every
    call (``paragen.trace``): the Generation's ``trace`` holds it.

    One prompt only; ``generate`` takes a batch. A stream is one continuation's text, as its
    consumers (the CLI's terminal, a server's SSE response) read it: a batch's pieces would
    interleave rows and need another item type, (row, text), that only a batching server
    could use, and the server's engine (``paragen.serve.engine``) admits new requests into a
    running batch (continuous batching), which a fixed list of prompts does not give.
    """
    from paragen.speech.model import SpeechModel

    if isinstance(model, SpeechModel):  # the prompt is audio: the same driver, after the encoder (paragen.speech.api)
        from paragen.speech.api import stream_pieces

        lm = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
              "seed": seed, "stop": stop, "draft": draft, "heads": heads}
        return Stream(_text(stream_pieces(model, prompt, strategy, bool(trace), lm, options)))
    if batch_prompts(prompt) is not None:
        raise InvalidInputError("stream() decodes one prompt: pass a list of prompts to generate() instead")
    request = check_request(model, [prompt], strategy, max_new_tokens, temperature, top_k, top_p, seed, stop, draft,
                            heads, options)
    return Stream(_text(_decode(model, request, trace=bool(trace))))


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
    equal token for token to decoding that prompt alone (greedy). Every row draws from a
    random generator of its own, seeded with ``seed[i]`` when ``seed`` is a list (one per
    prompt) or ``seed + i`` when it is one integer: a sampled row is the same text as that
    prompt alone with the same seed (OpenAI's per-request seed), and equal prompts in one
    batch still draw independent samples. ``trace=True``: each Generation's ``trace`` records
    every call (one Trace per row; ``paragen.trace``, docs/trace.md). The strategies
    with ``batched = True`` decode batches; the other strategies take a batch of one. Given a speech model, ``prompt`` is the
    audio (path, bytes or waveform) and this is ``paragen.transcribe``.
    """
    from paragen.speech.model import SpeechModel

    if isinstance(model, SpeechModel):
        from paragen.speech.api import transcribe

        return transcribe(model, prompt, strategy, **kwargs)
    known = {"max_new_tokens": 128, "temperature": 0.0, "top_k": None, "top_p": None, "seed": None, "stop": None,
             "draft": None, "heads": None}
    args = {name: kwargs.pop(name, default) for name, default in known.items()}
    trace = bool(kwargs.pop("trace", False))
    batch = batch_prompts(prompt)
    pieces = _decode(model, check_request(model, batch or [prompt], strategy, options=kwargs, **args), trace)
    return _run(pieces) if batch is not None else _run(_text(pieces))


def _run(pieces: Generator[Any, None, Any]) -> Any:
    """Exhaust a generator; its return value."""
    while True:
        try:
            next(pieces)
        except StopIteration as done:
            return done.value


def load(name_or_path: str | Any, backend: str = "native", dtype: torch.dtype | str | None = None,
         compile: bool = False, device: str | torch.device = "cpu", threads: int | None = None) -> Any:
    """A built-in model by name or a model directory (see ``paragen.models.load`` for the
    arguments); a speech model (``speech-en``, or a directory from ``paragen train speech``)
    loads as a ``SpeechModel``, on the CPU, in float32 or float64."""
    from paragen.models.io import resolve
    from paragen.speech.model import is_speech_model, load_speech_model

    if backend == "llamacpp":  # a GGUF file or a model directory; threads: llama.cpp's own
        return load_lm(name_or_path, backend=backend, dtype=dtype, compile=compile, device=device, threads=threads)
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
