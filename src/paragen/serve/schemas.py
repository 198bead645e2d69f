"""Request bodies, response bodies and errors in the OpenAI wire format.

Requests are parsed by pydantic; every field OpenAI defines that paragen cannot honour
(``n > 1``, ``echo``, ``logprobs``, penalties, ...) is refused with a 400 naming the field
rather than silently ignored, so a client never gets output it did not ask for.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from paragen.errors import ContextLengthError, ParagenError, UnknownStrategyError, UnsupportedOptionError
from paragen.labels import lossy


class ServeError(Exception):
    """An error answered to the client as ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    @classmethod
    def from_paragen(cls, e: ParagenError) -> ServeError:
        """The API's typed errors are the client's fault: 400, with the API's own message."""
        code = {ContextLengthError: "context_length_exceeded", UnknownStrategyError: "unknown_strategy",
                UnsupportedOptionError: "unsupported_option"}.get(type(e), "invalid_value")
        return cls(400, str(e), code=code)

    @classmethod
    def from_validation(cls, e: ValidationError) -> ServeError:
        """pydantic's first complaint, with the field path as ``param``."""
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or None
        if err["type"] == "extra_forbidden":
            name = param.removeprefix("paragen.") if param else ""
            if param and param.startswith("paragen.") and name in SamplingFields.model_fields:
                return cls(400, f"unknown field '{param}': {name} goes at the top level of the body, beside "
                                f"temperature (openai client: extra_body={{'{name}': ...}}); the paragen object holds "
                                "strategy and options only", param=param, code="unknown_field")
            return cls(400, f"unknown field '{param}': remove it (see the OpenAI completions reference for the fields "
                            "this server reads)", param=param, code="unknown_field")
        return cls(400, f"{param}: {err['msg']}" if param else err["msg"], param=param, code="invalid_value")


class ParagenExtra(BaseModel):
    """The ``paragen`` object of the extra body: the strategy for this request and its options."""

    model_config = ConfigDict(extra="forbid")
    strategy: str | None = None
    options: dict[str, str | int | float | bool] = Field(default_factory=dict)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="forbid")
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)  # not an OpenAI field: sent in the client's extra_body
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # accepted and ignored, as a label for the caller's own logs
    paragen: ParagenExtra = Field(default_factory=ParagenExtra)

    def refuse_unsupported(self) -> None:
        """Refuse what paragen cannot do, naming the field and what to send instead."""
        if self.n != 1:
            raise ServeError(400, f"n={self.n} is not supported: this server returns one choice per request; "
                                  "send n=1 (or several requests)", param="n", code="unsupported_value")
        if self.presence_penalty or self.frequency_penalty:
            raise ServeError(400, "presence_penalty and frequency_penalty are not supported: leave them at 0",
                             param="presence_penalty" if self.presence_penalty else "frequency_penalty",
                             code="unsupported_value")
        if self.logit_bias:
            raise ServeError(400, "logit_bias is not supported: leave it out", param="logit_bias", code="unsupported_value")
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ServeError(400, f"stop has {len(self.stop)} strings: send at most 4", param="stop")


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``: one prompt (a string, a list of one string, or token ids)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.echo:
            raise ServeError(400, "echo=true is not supported: leave it out and prepend the prompt yourself",
                             param="echo", code="unsupported_value")
        if self.logprobs is not None:
            raise ServeError(400, "logprobs are not supported by this server: leave logprobs out",
                             param="logprobs", code="unsupported_value")
        if self.best_of not in (None, 1):
            raise ServeError(400, "best_of is not supported: leave it out", param="best_of", code="unsupported_value")
        if self.suffix:
            raise ServeError(400, "suffix (insertion) is not supported: leave it out", param="suffix", code="unsupported_value")

    def single_prompt(self) -> str | list[int]:
        """The one prompt; a batch is refused (batched decoding is another issue)."""
        p = self.prompt
        if isinstance(p, str):
            return p
        if p and all(isinstance(t, int) for t in p):
            return p  # token ids
        if len(p) != 1:
            raise ServeError(400, f"prompt is a list of {len(p)} prompts: send one prompt per request "
                                  "(batches of prompts are not supported yet)", param="prompt", code="unsupported_value")
        return p[0]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, ...: passed to the template as they are
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | None = None


class ChatRequest(SamplingFields):
    """``POST /v1/chat/completions``: messages rendered by the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.logprobs or self.top_logprobs:
            raise ServeError(400, "logprobs are not supported by this server: leave logprobs out",
                             param="logprobs", code="unsupported_value")


def finish_reason(reason: str) -> str:
    """paragen's ``eos`` is OpenAI's ``stop``; ``length`` and ``stop`` are the same in both."""
    return "stop" if reason in ("eos", "stop") else "length"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def response_body(rid: str, model: str, created: int, text: str, reason: str, usage: dict[str, Any],
                  chat: bool) -> dict[str, Any]:
    """A whole (not streamed) completion: the text in ``choices[0].text``, or a chat ``message``."""
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": model, "choices": [choice], "usage": usage}


def chunk_body(rid: str, model: str, created: int, text: str | None, reason: str | None, chat: bool,
               usage: dict[str, Any] | None = None) -> dict[str, Any]:
    """One streamed chunk: a piece of text, the closing finish_reason, or (text None) the usage alone.

    Chat chunks carry the text in ``delta``; the role rides on the first one (text "").
    """
    choices: list[dict[str, Any]] = []
    if text is not None:
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": reason}
        if chat:
            choice["delta"] = {"content": text} if text else ({} if reason else {"role": "assistant", "content": ""})
        else:
            choice["text"] = text
        choices.append(choice)
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": model, "choices": choices, "usage": usage}


def usage_body(prompt_tokens: int, completion_tokens: int, stats: Any = None) -> dict[str, Any]:
    """OpenAI's usage, and with the decode's ``Stats`` a ``paragen`` block: the strategy, whether
    the text is lossy (and the weights, when not float32; ``paragen.labels``, as ``generate
    --stats`` and the bench say it), target and draft calls, tokens per call, draft tokens
    proposed and accepted, and how many of the request's steps drafted (the engine's
    speculation policy)."""
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                             "total_tokens": prompt_tokens + completion_tokens}
    if stats is not None:
        extra = stats.extra
        usage["paragen"] = {
            "strategy": stats.strategy, "lossy": lossy(extra),
            **({"weights": extra["weights"]} if extra.get("weights") else {}),
            "target_calls": stats.target_calls, "draft_calls": stats.draft_calls,
            "tokens_per_call": round(stats.tokens_per_call, 4), "steps": sum(stats.committed_per_call.values()),
            **({"drafted_steps": extra["drafted_steps"]} if "drafted_steps" in extra else {}),
            **({"proposed": sum(extra["proposed"]), "accepted": sum(extra["accepted"])} if "proposed" in extra else {}),
        }
    return usage


def now() -> int:
    return int(time.time())
