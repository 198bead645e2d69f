"""``generate()`` and ``stream()``: a checked request (``paragen.request``) turned into a decode.

The other public names live in modules of their own and are re-exported by ``paragen``:
``load`` (``paragen.loading``), ``Stream`` (``paragen.streaming``), option coercion
(``paragen.options``), the request check (``paragen.request``), torch threads (``paragen.threads``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Sequence
from typing import Any

import torch

from paragen.driver import Generation, decode
from paragen.errors import InvalidInputError
from paragen.models.base import Model
from paragen.request import MAX_BATCH, Request, batch_prompts, check_request, context, row_generator
from paragen.speech.api import stream_pieces, transcribe
from paragen.speech.model import SpeechModel
from paragen.streaming import Stream, exhaust, one_row
from paragen.trace import Recorder

__all__ = ["MAX_BATCH", "generate", "stream"]


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
    if isinstance(model, SpeechModel):  # the prompt is audio: the same driver, after the encoder (paragen.speech.api)
        lm = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k, "top_p": top_p,
              "seed": seed, "stop": stop, "draft": draft, "heads": heads}
        return Stream(one_row(stream_pieces(model, prompt, strategy, bool(trace), lm, options)))
    if batch_prompts(prompt) is not None:
        raise InvalidInputError("stream() decodes one prompt: pass a list of prompts to generate() instead")
    request = check_request(model, [prompt], strategy, max_new_tokens, temperature, top_k, top_p, seed, stop, draft,
                            heads, options)
    return Stream(one_row(_decode(model, request, trace=bool(trace))))


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
    if isinstance(model, SpeechModel):
        return transcribe(model, prompt, strategy, **kwargs)
    known = {"max_new_tokens": 128, "temperature": 0.0, "top_k": None, "top_p": None, "seed": None, "stop": None,
             "draft": None, "heads": None}
    args = {name: kwargs.pop(name, default) for name, default in known.items()}
    trace = bool(kwargs.pop("trace", False))
    batch = batch_prompts(prompt)
    pieces = _decode(model, check_request(model, batch or [prompt], strategy, options=kwargs, **args), trace)
    return exhaust(pieces) if batch is not None else exhaust(one_row(pieces))
