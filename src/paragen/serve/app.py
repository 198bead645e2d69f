"""The OpenAI-compatible HTTP app: completions, chat completions, models, health, metrics.

``create_app(model, draft, config)`` builds a FastAPI app around a loaded model. Handlers
parse and check a request and hand it to ``Completions`` (``service.py``), which queues it
for the engine (continuous batching, ``engine.py``, run by the decoder thread of
``scheduler.py``) and turns its events into a JSON response or server-sent events. The
engine runs the API's own batched strategies: the server holds no decoding rule.
"""

from __future__ import annotations

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
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from paragen.errors import InvalidInputError
from paragen.models.base import Model
from paragen.serve.metrics import Metrics
from paragen.serve.scheduler import Scheduler
from paragen.serve.schemas import ChatRequest, CompletionRequest, SamplingFields, ServeError, now
from paragen.serve.service import DEFAULT_COMPLETION_TOKENS, Completions
from paragen.strategies import get_strategy

log = logging.getLogger("paragen.serve")


@dataclass(frozen=True)
class ServeConfig:
    """Server settings; ``paragen serve`` flags map onto these fields one to one."""

    strategy: str = "ar"  # used when a request names none
    max_batch: int = 16  # rows in the running batch at most (all groups together)
    max_queue: int = 64  # requests waiting to join the running batch; more are answered 429
    cache_tokens: int | None = None  # KV cache slots of all running rows together; None: max_batch x context
    prefill_tokens: int = 2048  # prompt tokens admitted per step at most (at least one request)
    speculation: bool = True  # greedy draft-and-verify groups draft only while drafting is measured faster
    max_tokens: int = 1024  # cap on a request's max_tokens
    timeout: float = 300.0  # seconds from arrival; the decode stops between steps after it
    api_key: str | None = None  # when set, /v1/* need "Authorization: Bearer <key>"
    chat_template: str | None = None  # Jinja chat template from the model's tokenizer_config.json

    def __post_init__(self) -> None:
        from paragen.request import MAX_BATCH

        if not 1 <= self.max_batch <= MAX_BATCH:
            raise InvalidInputError(f"--max-batch {self.max_batch}: give 1 to {MAX_BATCH} rows")
        if self.cache_tokens is not None and self.cache_tokens < 1 or self.prefill_tokens < 1:
            raise InvalidInputError("--cache-tokens and --prefill-tokens must be at least 1")
        if self.max_queue < 1 or self.max_tokens < 1 or self.timeout <= 0:
            raise InvalidInputError("--max-queue and --max-tokens must be at least 1 and --timeout positive")


def check_default_strategy(config: ServeConfig, has_draft: bool) -> None:
    """The default strategy exists and has its draft model: else every request naming no strategy
    would be refused, so the server refuses to start instead."""
    cls = get_strategy(config.strategy)
    if cls.needs_draft and not has_draft:
        raise InvalidInputError(f"--strategy {cls.name} needs a draft model, and every request that names no strategy "
                                "would be refused: add --draft NAME_OR_DIR (e.g. --draft code-draft) or pick another "
                                "--strategy")


def create_app(model: Model, draft: Model | None = None, config: ServeConfig | None = None) -> FastAPI:
    """An app serving ``model`` (and ``draft`` to strategies that need one); start it with uvicorn."""
    config = config or ServeConfig()
    check_default_strategy(config, draft is not None)  # fails at start, not on the first request
    metrics = Metrics(lambda: scheduler.queue_depth, lambda: scheduler.in_flight)
    scheduler = Scheduler(model, metrics, config.max_queue, max_batch=config.max_batch, cache_tokens=config.cache_tokens,
                          prefill_tokens=config.prefill_tokens, speculation=config.speculation)
    service = Completions(model, draft, config, scheduler)
    created = now()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        scheduler.stop()

    app = FastAPI(title="paragen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_CountRequests, metrics=metrics)
    _add_error_handlers(app)

    def authorize(request: Request) -> None:
        if config.api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not tell an attacker how much of the key matched
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.api_key.encode()):
            raise ServeError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' with the key the "
                                  "server was started with (--api-key)", code="invalid_api_key")

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

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body: CompletionRequest = await parse(request, CompletionRequest)
        max_tokens = body.max_tokens or DEFAULT_COMPLETION_TOKENS
        return await service.run(request, body, body.single_prompt(), max_tokens, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body: ChatRequest = await parse(request, ChatRequest)
        prompt = service.chat_prompt(body)
        # OpenAI's chat default is "as long as the context allows", within this server's cap
        room = model.info.max_length - service.prompt_length(prompt)
        max_tokens = body.max_completion_tokens or body.max_tokens or max(1, min(config.max_tokens, room))
        return await service.run(request, body, prompt, max_tokens, chat=True)

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


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape; a traceback goes to the server log, never to the client."""

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
        log.exception("request failed")
        e2 = ServeError(500, "internal server error: the server log has the details", type="server_error")
        return JSONResponse(e2.body(), status_code=500)


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
