"""The OpenAI-compatible HTTP app: completions, chat completions, models, health, metrics.

``create_app(model, draft, config)`` builds a FastAPI app around a loaded model. Handlers
parse and check a request, hand the decode to the scheduler (one at a time, see
``scheduler.py``) and turn its events into a JSON response or server-sent events. Decoding
itself is ``paragen.stream``: the server holds no decoding logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from paragen.api import make_options
from paragen.errors import InvalidInputError, ParagenError
from paragen.models.base import Model
from paragen.serve.metrics import Metrics
from paragen.serve.scheduler import Job, QueueFullError, Scheduler
from paragen.serve.schemas import (
    ChatRequest,
    CompletionRequest,
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

log = logging.getLogger("paragen.serve")

# OpenAI's defaults where paragen's differ: completions stop at 16 tokens, sampling at temperature 1.
DEFAULT_COMPLETION_TOKENS = 16
DEFAULT_TEMPERATURE = 1.0
POLL_SECONDS = 0.25  # how often a waiting handler looks for a client that has gone


@dataclass(frozen=True)
class ServeConfig:
    """Server settings; ``paragen serve`` flags map onto these fields one to one."""

    strategy: str = "ar"  # used when a request names none
    max_batch: int = 1  # requests decoded together; 1 until batched decoding lands
    max_queue: int = 64  # requests waiting behind the one being decoded; more are answered 429
    max_tokens: int = 1024  # cap on a request's max_tokens
    timeout: float = 300.0  # seconds from arrival; the decode stops between steps after it
    api_key: str | None = None  # when set, /v1/* need "Authorization: Bearer <key>"
    chat_template: str | None = None  # Jinja chat template from the model's tokenizer_config.json

    def __post_init__(self) -> None:
        if self.max_batch != 1:
            raise InvalidInputError(f"--max-batch {self.max_batch}: only 1 is supported until batched decoding lands "
                                    "(requests are decoded one at a time behind the queue); use --max-batch 1")
        if self.max_queue < 1 or self.max_tokens < 1 or self.timeout <= 0:
            raise InvalidInputError("--max-queue and --max-tokens must be at least 1 and --timeout positive")


def create_app(model: Model, draft: Model | None = None, config: ServeConfig | None = None) -> FastAPI:
    """An app serving ``model`` (and ``draft`` to strategies that need one); start it with uvicorn."""
    config = config or ServeConfig()
    get_strategy(config.strategy)  # an unknown default strategy fails at start, not on the first request
    metrics = Metrics(lambda: scheduler.queue_depth, lambda: scheduler.in_flight)
    scheduler = Scheduler(model, metrics, config.max_queue)
    template = _compile_template(config.chat_template) if config.chat_template else None
    created = now()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="paragen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.metrics = scheduler, metrics
    app.add_middleware(_CountRequests, metrics=metrics)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, e: ServeError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        hint = {404: ": the endpoints are /v1/completions, /v1/chat/completions, /v1/models, /health, /metrics",
                405: ": check the HTTP method (GET for models/health/metrics, POST for completions)"}
        e2 = ServeError(e.status_code, f"{e.detail}{hint.get(e.status_code, '')}", code=str(e.status_code))
        return JSONResponse(e2.body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        log.exception("request failed")  # the traceback stays in the server log
        e2 = ServeError(500, "internal server error: the server log has the details", type="server_error")
        return JSONResponse(e2.body(), status_code=500)

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not tell an attacker how much of the key matched
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.api_key.encode()):
            raise ServeError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' with the key the "
                                  "server was started with (--api-key)", param=None, code="invalid_api_key")

    async def parse(request: Request, kind: type[SamplingFields]) -> Any:
        authorize(request)
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ServeError(400, f"the request body is not valid JSON ({e}): send a JSON object", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ServeError(400, "the request body must be a JSON object", code="invalid_json")
        try:
            body = kind.model_validate(data)
        except ValidationError as e:
            raise ServeError.from_validation(e) from None
        body.refuse_unsupported()
        if body.model != model.name:
            raise ServeError(404, f"model '{body.model}' is not served here: use '{model.name}' (GET /v1/models)",
                             param="model", code="model_not_found")
        return body

    def decode_kwargs(body: SamplingFields, prompt: str | list[int], max_tokens: int) -> dict[str, Any]:
        """paragen.stream's arguments; strategy and options are checked here with the API's own
        functions, so a bad one is refused before it takes a place in the queue."""
        if max_tokens > config.max_tokens:
            raise ServeError(400, f"max_tokens={max_tokens} is over this server's cap of {config.max_tokens}: "
                                  "ask for fewer (or restart the server with a larger --max-tokens)",
                             param="max_tokens", code="max_tokens_exceeded")
        name = body.paragen.strategy or config.strategy
        try:
            cls = get_strategy(name)
            options = make_options(cls, body.paragen.options)
        except ParagenError as e:
            raise ServeError.from_paragen(e) from None
        if cls.needs_draft and draft is None:
            raise ServeError(400, f"strategy '{name}' needs a draft model and this server has none: pick another "
                                  "strategy, or restart the server with --draft", param="paragen.strategy")
        temperature = DEFAULT_TEMPERATURE if body.temperature is None else body.temperature
        return dict(prompt=prompt, strategy=name, max_new_tokens=max_tokens, temperature=temperature,
                    top_k=body.top_k, top_p=body.top_p, seed=body.seed, stop=body.stop,
                    draft=draft if cls.needs_draft else None, **{k: getattr(options, k) for k in body.paragen.options})

    async def events(job: Job, request: Request) -> AsyncIterator[tuple[str, Any]]:
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
            scheduler.cancel(job)  # no-op when the job has finished; frees its place or stops its decode

    def failure(kind: str, value: Any) -> ServeError:
        if kind == "error":
            return ServeError.from_paragen(value)
        if kind == "timeout":
            return ServeError(504, f"the request ran past the server's deadline of {config.timeout:g} s and was "
                                   "stopped: ask for fewer max_tokens, retry when the queue is shorter, or raise --timeout",
                              type="timeout", code="timeout")
        return ServeError(500, "internal server error: the server log has the details", type="server_error")

    async def complete(request: Request, body: SamplingFields, prompt: str | list[int], max_tokens: int,
                       prompt_tokens: int, chat: bool) -> Response:
        job = Job(decode_kwargs(body, prompt, max_tokens), asyncio.get_running_loop(),
                  deadline=time.monotonic() + config.timeout)
        try:
            scheduler.submit(job)
        except QueueFullError as e:
            raise ServeError(429, f"the server is busy ({e}; --max-queue {config.max_queue}): retry after a short wait",
                             type="rate_limit_error", code="queue_full") from None
        rid, served = new_id("chatcmpl" if chat else "cmpl"), model.name
        stream = events(job, request)
        # the first event decides the status code: a bad request found by the API is a 400, not a 200 stream
        first = await anext(stream, ("gone", None))
        if first[0] == "gone":
            return Response(status_code=499)  # nobody to answer: the client disconnected while queued
        if first[0] not in ("piece", "done"):
            raise failure(*first)
        if not body.stream:  # the pieces add up to the Generation's text, which comes with "done"
            async for kind, value in _chain(first, stream):
                if kind == "done":
                    usage = usage_body(prompt_tokens, len(value.tokens))
                    return JSONResponse(response_body(rid, served, now(), value.text, finish_reason(value.stats.finish_reason),
                                                      usage, chat))
                if kind != "piece":
                    raise failure(kind, value)
            return Response(status_code=499)  # the client left mid-decode

        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        async def sse() -> AsyncIterator[str]:
            created_at = now()
            if chat:
                yield _sse(chunk_body(rid, served, created_at, "", None, chat))
            async for kind, value in _chain(first, stream):
                if kind == "piece":
                    yield _sse(chunk_body(rid, served, created_at, value, None, chat))
                elif kind == "done":
                    yield _sse(chunk_body(rid, served, created_at, "", finish_reason(value.stats.finish_reason), chat))
                    if include_usage:
                        yield _sse(chunk_body(rid, served, created_at, None, None, chat,
                                              usage_body(prompt_tokens, len(value.tokens))))
                else:  # headers are sent: the error travels as an event, which the openai client raises
                    yield _sse(failure(kind, value).body())
                if kind != "piece":
                    yield "data: [DONE]\n\n"
            # a client gone mid-stream ends the loop early: events() has cancelled the decode

        return _CancellingStream(sse(), on_close=lambda: scheduler.cancel(job), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def prompt_length(prompt: str | list[int]) -> int:
        """Prompt tokens for ``usage``: the same encoding paragen.stream applies."""
        if isinstance(prompt, list):
            return len(prompt)
        if model.tokenizer is None:
            raise ServeError(400, "this model has no tokenizer: send the prompt as a list of token ids", param="prompt")
        return len(model.tokenizer.encode(prompt))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body: CompletionRequest = await parse(request, CompletionRequest)
        prompt = body.single_prompt()
        max_tokens = body.max_tokens or DEFAULT_COMPLETION_TOKENS
        return await complete(request, body, prompt, max_tokens, prompt_length(prompt), chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body: ChatRequest = await parse(request, ChatRequest)
        if template is None:
            raise ServeError(400, f"model '{model.name}' has no chat template (its tokenizer_config.json sets no "
                                  "chat_template): use /v1/completions with a plain prompt", code="no_chat_template")
        prompt = _render(template, body, model)
        prompt_tokens = prompt_length(prompt)
        room = model.info.max_length - prompt_tokens
        max_tokens = body.max_completion_tokens or body.max_tokens or max(1, min(config.max_tokens, room))
        return await complete(request, body, prompt, max_tokens, prompt_tokens, chat=True)

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": created, "owned_by": "paragen"}]}

    @app.get("/health")
    async def health() -> JSONResponse:
        ok = scheduler.alive
        return JSONResponse({"status": "ok" if ok else "decoder thread stopped", "model": model.name,
                             "queue_depth": scheduler.queue_depth, "in_flight": scheduler.in_flight},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn on a thread (port 0: a free one); yield its base URL; stop it on exit.

    For tests and load scripts in one process; ``paragen serve`` runs uvicorn in the main thread.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="paragen-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start (see its log above)")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


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


class _CountRequests:
    """ASGI middleware: counts every HTTP answer by endpoint and status and times it to the last byte."""

    ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.monotonic(), [500]

        async def send_status(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in self.ENDPOINTS else "other"
            self.metrics.request(path, status[0], time.monotonic() - t0 if path.startswith("/v1/") else None)


def _compile_template(source: str) -> Any:
    """A chat template compiled in Jinja's sandbox, as Hugging Face tokenizers render them."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise ServeError(400, f"the chat template refused the messages: {message}", param="messages")

    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def _render(template: Any, body: ChatRequest, model: Model) -> str:
    tok = model.tokenizer
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    try:
        return template.render(messages=messages, add_generation_prompt=True,
                               eos_token=getattr(tok, "eos_token", None) or "", bos_token="")
    except ServeError:
        raise
    except Exception as e:  # a template error is about these messages, not a server fault
        raise ServeError(400, f"the chat template could not render these messages ({e})", param="messages") from None
