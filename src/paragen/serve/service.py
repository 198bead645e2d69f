"""From a parsed request to its answer: the decode's arguments, the scheduler's events, and
the JSON response or server-sent events they become.

``Completions`` is the one place a request meets the decoder. Every argument is checked
with the API's own ``check_request`` before a request takes a place in the queue, so a bad
request is a 4xx even when streaming; the engine then decodes it in the running batch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from paragen.errors import ParagenError
from paragen.models.base import Model
from paragen.request import Request as DecodeRequest
from paragen.request import check_request
from paragen.serve.scheduler import CacheBudgetError, Job, QueueFullError, Scheduler
from paragen.serve.schemas import (
    ChatRequest,
    SamplingFields,
    ServeError,
    chunk_body,
    finish_reason,
    new_id,
    now,
    response_body,
    usage_body,
)
from paragen.strategies import get_strategy

# OpenAI's defaults where paragen's differ: completions stop at 16 tokens, sampling at temperature 1.
DEFAULT_COMPLETION_TOKENS = 16
DEFAULT_TEMPERATURE = 1.0
POLL_SECONDS = 0.25  # how often a waiting handler looks for a client that has gone


class Completions:
    """Runs completion requests for one model (and its draft) through one scheduler."""

    def __init__(self, model: Model, draft: Model | None, config: Any, scheduler: Scheduler) -> None:
        self.model, self.draft, self.config, self.scheduler = model, draft, config, scheduler
        self.template = _compile_template(config.chat_template) if config.chat_template else None

    def prompt_length(self, prompt: str | list[int]) -> int:
        """Prompt tokens: the same encoding the API applies."""
        if isinstance(prompt, list):
            return len(prompt)
        if self.model.tokenizer is None:
            raise ServeError(400, "this model has no tokenizer: send the prompt as a list of token ids", param="prompt")
        return len(self.model.tokenizer.encode(prompt))

    def chat_prompt(self, body: ChatRequest) -> str:
        """The messages rendered by the model's chat template; a clear 400 for a model without one."""
        if self.template is None:
            raise ServeError(400, f"model '{self.model.name}' has no chat template (its tokenizer_config.json sets no "
                                  "chat_template): use /v1/completions with a plain prompt", code="no_chat_template")
        messages = [m.model_dump(exclude_none=True) for m in body.messages]
        eos = getattr(self.model.tokenizer, "eos_token", None) or ""
        try:
            return self.template.render(messages=messages, add_generation_prompt=True, eos_token=eos, bos_token="")
        except ServeError:
            raise
        except Exception as e:  # a template error is about these messages, not a server fault
            raise ServeError(400, f"the chat template could not render these messages ({e})", param="messages") from None

    def request(self, body: SamplingFields, prompt: str | list[int], max_tokens: int) -> DecodeRequest:
        """The checked request; anything bad is refused here, before the queue."""
        config = self.config
        if max_tokens > config.max_tokens:
            raise ServeError(400, f"max_tokens={max_tokens} is over this server's cap of {config.max_tokens}: "
                                  "ask for fewer (or restart the server with a larger --max-tokens)",
                             param="max_tokens", code="max_tokens_exceeded")
        name = body.paragen.strategy or config.strategy
        try:
            cls = get_strategy(name)
            needs_draft = cls.needs_draft
            if needs_draft and self.draft is None:
                raise ServeError(400, f"strategy '{name}' needs a draft model and this server has none: pick another "
                                      "strategy, or restart the server with --draft", param="paragen.strategy")
            temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
            return check_request(self.model, [prompt], name, max_tokens, temperature, body.top_k, body.top_p, body.seed,
                                 body.stop, self.draft if needs_draft or cls.takes_draft else None, None,
                                 dict(body.paragen.options))
        except ParagenError as e:
            raise ServeError.from_paragen(e) from None

    async def events(self, job: Job, request: Request) -> AsyncIterator[tuple[str, Any]]:
        """The job's events until the last; a gone client cancels the job, a passed deadline ends it.

        The client is looked for every POLL_SECONDS even while pieces flow, so a non-streaming
        client that leaves mid-decode stops it too (a streaming one is also seen by Starlette).
        """
        polled = time.monotonic()
        try:
            while True:
                left = job.deadline - time.monotonic()
                try:
                    event = await asyncio.wait_for(job.events.get(), timeout=max(0.0, min(POLL_SECONDS, left)))
                except asyncio.TimeoutError:
                    event = None
                    if time.monotonic() > job.deadline:  # e.g. still queued behind a long decode
                        yield "timeout", None
                        return
                if time.monotonic() - polled >= POLL_SECONDS:
                    polled = time.monotonic()
                    if await request.is_disconnected():
                        return
                if event is not None:
                    yield event
                    if event[0] != "piece":
                        return
        finally:
            self.scheduler.cancel(job)  # no-op when the job has finished; frees its place or stops its decode

    def failure(self, kind: str, value: Any) -> ServeError:
        """The client's view of a decode that did not finish."""
        if kind == "error":
            return ServeError.from_paragen(value)
        if kind == "timeout":
            return ServeError(504, f"the request ran past the server's deadline of {self.config.timeout:g} s and was "
                                   "stopped: ask for fewer max_tokens, retry when the queue is shorter, or raise --timeout",
                              type="timeout", code="timeout")
        return ServeError(500, "internal server error: the server log has the details", type="server_error")

    async def run(self, request: Request, body: SamplingFields, prompt: str | list[int], max_tokens: int,
                  chat: bool) -> Response:
        """Queue the decode and answer: one JSON body, or server-sent events when ``body.stream``."""
        checked = self.request(body, prompt, max_tokens)
        prompt_tokens = len(checked.prompts[0])
        job = Job(checked, asyncio.get_running_loop(), deadline=time.monotonic() + self.config.timeout)
        try:
            self.scheduler.submit(job)
        except QueueFullError as e:
            raise ServeError(429, f"the server is busy ({e}; --max-queue {self.config.max_queue}): retry after a short "
                                  "wait", type="rate_limit_error", code="queue_full") from None
        except CacheBudgetError as e:
            raise ServeError(400, str(e), param="max_tokens", code="cache_budget_exceeded") from None
        stream = self.events(job, request)
        # the first event decides the status code: a bad request found by the API is a 400, not a 200 stream
        first = await anext(stream, ("gone", None))
        if first[0] == "gone":
            return Response(status_code=499)  # nobody to answer: the client disconnected while queued
        if first[0] not in ("piece", "done"):
            raise self.failure(*first)
        events, rid = _chain(first, stream), new_id("chatcmpl" if chat else "cmpl")
        if not body.stream:  # the pieces add up to the Generation's text, which comes with "done"
            async for kind, value in events:
                if kind == "done":
                    return JSONResponse(response_body(rid, self.model.name, now(), value.text,
                                                      finish_reason(value.stats.finish_reason),
                                                      usage_body(prompt_tokens, len(value.tokens), value.stats), chat))
                if kind != "piece":
                    raise self.failure(kind, value)
            return Response(status_code=499)  # the client left mid-decode
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return _CancellingStream(self.sse(events, rid, prompt_tokens, chat, usage),
                                 on_close=lambda: self.scheduler.cancel(job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def sse(self, events: AsyncIterator[tuple[str, Any]], rid: str, prompt_tokens: int, chat: bool,
                  include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events as the openai client reads them: a chunk per committed piece, one with the
        finish_reason, the usage if asked for, then ``[DONE]``."""
        name, created = self.model.name, now()
        if chat:
            yield _sse(chunk_body(rid, name, created, "", None, chat))  # the role
        async for kind, value in events:
            if kind == "piece":
                yield _sse(chunk_body(rid, name, created, value, None, chat))
                continue
            if kind == "done":
                yield _sse(chunk_body(rid, name, created, "", finish_reason(value.stats.finish_reason), chat))
                if include_usage:
                    yield _sse(chunk_body(rid, name, created, None, None, chat,
                                          usage_body(prompt_tokens, len(value.tokens), value.stats)))
            else:  # headers are sent: the error travels as an event, which the openai client raises
                yield _sse(self.failure(kind, value).body())
            yield "data: [DONE]\n\n"
        # a client gone mid-stream ends the loop early: events() has cancelled the decode


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def _chain(first: tuple[str, Any], rest: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[tuple[str, Any]]:
    yield first
    if first[0] == "piece":
        async for event in rest:
            yield event


class _CancellingStream(StreamingResponse):
    """A stream that stops its decode however it ends: finished, client gone, or cancelled by the server."""

    def __init__(self, content: AsyncIterator[str], on_close: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def _compile_template(source: str) -> Any:
    """A chat template compiled in Jinja's sandbox, as Hugging Face tokenizers render them."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise ServeError(400, f"the chat template refused the messages: {message}", param="messages")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)
