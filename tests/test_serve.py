"""paragen serve: the official openai client against an in-process server on loopback.

Every server here is uvicorn in a thread on 127.0.0.1 with an ephemeral port, serving the
tiny saved model of ``conftest.model_dir``; expected texts come from ``paragen.generate``.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import openai
import pytest
import torch

import paragen
from paragen.cli import main
from paragen.errors import InvalidInputError
from paragen.models.base import Model
from paragen.serve.app import ServeConfig, create_app, serve_in_thread


@contextmanager
def serving(model: Model, draft: Model | None = None, **config) -> Iterator[str]:
    """The app on 127.0.0.1:<free port> in a thread; yields its base URL."""
    with serve_in_thread(create_app(model, draft, ServeConfig(**config))) as url:
        yield url


class SlowModel(Model):
    """The tiny model, with every forward call taking at least ``delay`` seconds: a decode long
    enough to disconnect from, or to run past a deadline, whatever the machine's speed."""

    def __init__(self, model: Model, delay: float) -> None:
        self.model, self.delay = model, delay
        self.info, self.tokenizer, self.name = model.info, model.tokenizer, model.name

    def forward(self, tokens, positions, cache=None, mask=None):
        time.sleep(self.delay)
        return self.model.forward(tokens, positions, cache=cache, mask=mask)

    def new_cache(self, batch=1, max_length=None):
        return self.model.new_cache(batch=batch, max_length=max_length)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype


@pytest.fixture(scope="module")
def model(model_dir):
    return paragen.load(model_dir)


@pytest.fixture(scope="module")
def url(model):
    # the model is its own draft: speculative decoding then accepts everything, and must still equal ar
    with serving(model, draft=model, max_tokens=64, max_queue=8) as base:
        yield base


def client(url: str, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


PROMPT = "def add(a, b):\n    "


@pytest.mark.parametrize("settings", [
    dict(temperature=0.0),
    dict(temperature=0.9, seed=7, top_p=0.95, top_k=20),
    dict(temperature=0.0, strategy="speculative", options={"k": 3}),
    dict(temperature=0.0, strategy="lookup"),
])
def test_openai_client_completion_and_stream_equal_generate(url, model, settings):
    settings = dict(settings)
    strategy, options = settings.pop("strategy", "ar"), settings.pop("options", {})
    top_k = settings.pop("top_k", None)
    extra = {"paragen": {"strategy": strategy, "options": options}, **({"top_k": top_k} if top_k else {})}
    c = client(url)
    whole = c.completions.create(model=model.name, prompt=PROMPT, max_tokens=24, extra_body=extra, **settings)
    chunks = list(c.completions.create(model=model.name, prompt=PROMPT, max_tokens=24, stream=True,
                                       stream_options={"include_usage": True}, extra_body=extra, **settings))
    draft = model if strategy == "speculative" else None
    gen = paragen.generate(model, PROMPT, strategy, max_new_tokens=24, top_k=top_k, draft=draft, **settings, **options)
    streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert whole.choices[0].text == gen.text
    assert streamed == gen.text
    assert whole.choices[0].finish_reason == chunks[-2].choices[0].finish_reason == "length"
    assert all(ch.choices[0].finish_reason is None for ch in chunks[:-2])
    expected = (len(model.tokenizer.encode(PROMPT)), len(gen.tokens))
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == expected
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == expected and not chunks[-1].choices


def test_stop_string_finishes_with_stop(url, model):
    full = paragen.generate(model, PROMPT, max_new_tokens=24).text
    stop = full[5:8]
    out = client(url).completions.create(model=model.name, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop])
    assert out.choices[0].text == paragen.generate(model, PROMPT, max_new_tokens=24, stop=[stop]).text
    assert stop not in out.choices[0].text and out.choices[0].finish_reason == "stop"


def test_models_and_health(url, model):
    assert [m.id for m in client(url).models.list()] == [model.name]
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "ok" and health["model"] == model.name


def body(**kw) -> dict:
    return {"model": "tiny", "prompt": PROMPT, "max_tokens": 4, "temperature": 0, **kw}


@pytest.mark.parametrize("payload,status,code", [
    ("{not json", 400, "invalid_json"),
    ("[1, 2]", 400, "invalid_json"),
    (body(paragen={"strategy": "nope"}), 400, "unknown_strategy"),
    (body(paragen={"strategy": "lookup", "options": {"window": 3}}), 400, "unsupported_option"),
    (body(paragen={"strategy": "jacobi"}, temperature=0.7), 400, "unsupported_option"),  # found by the API in the worker
    (body(prompt="x = 1\n" * 200), 400, "context_length_exceeded"),
    (body(prompt=""), 400, "invalid_value"),
    (body(max_tokens=65), 400, "max_tokens_exceeded"),
    (body(max_tokens=0), 400, "invalid_value"),
    (body(temperature=-1), 400, "invalid_value"),
    (body(n=2), 400, "unsupported_value"),
    (body(echo=True), 400, "unsupported_value"),
    (body(logprobs=2), 400, "unsupported_value"),
    (body(prompt=["one", "two"]), 400, "unsupported_value"),
    (body(frequency_penalty=0.5), 400, "unsupported_value"),
    (body(colour="blue"), 400, "unknown_field"),
    ({"model": "tiny"}, 400, "invalid_value"),
    (body(model="gpt-4"), 404, "model_not_found"),
])
def test_bad_input_gets_4xx_in_openai_shape(url, payload, status, code):
    content = payload if isinstance(payload, str) else json.dumps(payload)
    r = httpx.post(f"{url}/v1/completions", content=content, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert len(error["message"]) > 20 and "Traceback" not in r.text


def test_openai_client_sees_errors(url, model):
    c = client(url)
    with pytest.raises(openai.BadRequestError, match="not supported"):
        c.completions.create(model=model.name, prompt=PROMPT, n=2)
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        c.chat.completions.create(model=model.name, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="gpt-4", prompt=PROMPT)
    r = httpx.get(f"{url}/v2/nothing")
    assert r.status_code == 404 and "endpoints are" in r.json()["error"]["message"]


def test_one_prompt_in_a_list_and_token_ids(url, model):
    c = client(url)
    expected = paragen.generate(model, PROMPT, max_new_tokens=6).text
    assert c.completions.create(model=model.name, prompt=[PROMPT], max_tokens=6, temperature=0).choices[0].text == expected
    ids = model.tokenizer.encode(PROMPT)
    assert c.completions.create(model=model.name, prompt=ids, max_tokens=6, temperature=0).choices[0].text == expected


def test_api_key_is_enforced(model):
    with serving(model, api_key="s3cret") as base:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = httpx.post(f"{base}/v1/completions", json=body(model=model.name), headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(base, key="wrong").models.list()
        out = client(base, key="s3cret").completions.create(model=model.name, prompt=PROMPT, max_tokens=3, temperature=0)
        assert out.choices[0].text == paragen.generate(model, PROMPT, max_new_tokens=3).text
        assert httpx.get(f"{base}/health").status_code == 200  # health and metrics stay open


def test_chat_with_a_template(model_dir, tmp_path):
    chat_dir = shutil.copytree(model_dir, tmp_path / "chatty")
    cfg_file = chat_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["chat_template"] = ("{% for m in messages %}# {{ m.role }}: {{ m.content }}\n{% endfor %}"
                            "{% if add_generation_prompt %}# assistant:{% endif %}")
    cfg_file.write_text(json.dumps(cfg))
    from paragen.serve.cli import chat_template

    chatty = paragen.load(chat_dir)
    with serving(chatty, chat_template=chat_template(str(chat_dir)), max_tokens=8) as base:
        messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "def add"}]
        c = client(base)
        out = c.chat.completions.create(model=chatty.name, messages=messages, max_tokens=8, temperature=0)
        chunks = list(c.chat.completions.create(model=chatty.name, messages=messages, max_tokens=8, temperature=0, stream=True))
    prompt = "# system: be brief\n# user: def add\n# assistant:"
    expected = paragen.generate(chatty, prompt, max_new_tokens=8).text
    assert out.choices[0].message.content == expected and out.choices[0].message.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == expected
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == len(chatty.tokenizer.encode(prompt))


def test_max_batch_out_of_range_is_refused():
    for bad in (0, 65):
        with pytest.raises(InvalidInputError, match="max-batch"):
            ServeConfig(max_batch=bad)
    assert main(["serve", "--max-batch", "0"]) == 2


async def _stream_text(http: httpx.AsyncClient, url: str, payload: dict, refused: list[int]) -> str:
    """One streaming client: on 429 it waits a little and retries; returns the text it was sent."""
    for _ in range(400):
        async with http.stream("POST", f"{url}/v1/completions", json=payload) as r:
            if r.status_code == 429:
                refused.append(1)
                await asyncio.sleep(random.uniform(0.02, 0.2))
                continue
            assert r.status_code == 200, await r.aread()
            text, done = [], False
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    chunk = json.loads(line[6:])
                    assert "error" not in chunk, chunk
                    text.append(chunk["choices"][0]["text"])
            assert done, "the stream ended without [DONE]"
            return "".join(text)
    raise AssertionError("refused 400 times")


@pytest.mark.slow
def test_load_100_concurrent_streaming_clients(model):
    prompts = [f"def f{i}(x):\n    return x * {i} + " for i in range(100)]
    settings = [dict(temperature=0.0) if i % 2 else dict(temperature=1.0, seed=i) for i in range(100)]
    gens = [paragen.generate(model, p, max_new_tokens=6, **s) for p, s in zip(prompts, settings)]
    expected = [g.text for g in gens]
    refused: list[int] = []

    async def load(base: str) -> list[str]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            jobs = [_stream_text(http, base, {**body(model=model.name, prompt=p, max_tokens=6, stream=True), **s}, refused)
                    for p, s in zip(prompts, settings)]
            return await asyncio.wait_for(asyncio.gather(*jobs), timeout=120)

    with serving(model, max_queue=8) as base:
        t0 = time.monotonic()
        texts = asyncio.run(load(base))
        seconds = time.monotonic() - t0
        assert texts == expected  # every response complete, and each its own
        assert refused, "100 clients against a queue of 8 should have met a 429"
        assert httpx.get(f"{base}/health").json()["status"] == "ok"
        assert metric(base, "paragen_queue_depth") == metric(base, "paragen_in_flight") == 0
        # a request is counted just after its last byte is sent: give the last one a moment
        ok = 'paragen_requests_total{endpoint="/v1/completions",status="200"}'
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and metric(base, ok) < 100:
            time.sleep(0.05)
        assert metric(base, ok) == 100
        assert metric(base, 'paragen_requests_total{endpoint="/v1/completions",status="429"}') == len(refused)
        assert metric(base, 'paragen_generated_tokens_total{strategy="ar"}') == sum(len(g.tokens) for g in gens)
    print(f"100 streaming clients: {seconds:.1f} s, {len(refused)} answered 429 and retried")


def wait_until_idle(url: str, cancelled: int) -> None:
    """Wait (5 s at most) for no request waiting or running and ``cancelled`` decodes cancelled, then check it."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (
            metric(url, "paragen_in_flight") or metric(url, "paragen_queue_depth")
            or metric(url, 'paragen_decodes_total{outcome="cancelled"}') < cancelled):
        time.sleep(0.05)
    assert metric(url, "paragen_in_flight") == metric(url, "paragen_queue_depth") == 0
    assert metric(url, 'paragen_decodes_total{outcome="cancelled"}') == cancelled


def test_disconnect_frees_the_slot(model):
    slow = SlowModel(model, delay=0.03)  # 240 tokens take >= 7 s: the disconnect comes long before
    with serving(slow, max_tokens=240) as base:
        long = body(model=model.name, max_tokens=240, stream=True, prompt="x")
        with httpx.Client(timeout=30) as http, http.stream("POST", f"{base}/v1/completions", json=long) as r:
            assert r.status_code == 200
            lines = r.iter_lines()  # kept: a dropped iterator would close the response
            assert next(lines).startswith("data: ")  # the decode is running
            assert metric(base, "paragen_in_flight") == 1
            # a second client queues behind it, then gives up before its turn
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{base}/v1/completions", json={**long, "stream": False}, timeout=1.0)
        # both connections are closed now: the queued one left the queue, the running one stops between steps
        wait_until_idle(base, cancelled=2)
        # a non-streaming client that leaves mid-decode stops it too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{base}/v1/completions", json={**long, "stream": False}, timeout=1.0)
        wait_until_idle(base, cancelled=3)
        assert metric(base, 'paragen_decodes_total{outcome="finished"}') == 0
        # the slot is free: the next request is served at once
        out = client(base).completions.create(model=model.name, prompt=PROMPT, max_tokens=3, temperature=0)
        assert out.choices[0].text == paragen.generate(model, PROMPT, max_new_tokens=3).text


def test_deadline_stops_the_decode(model):
    slow = SlowModel(model, delay=0.02)
    with serving(slow, max_tokens=240, timeout=0.5) as base:  # 240 tokens take >= 4.8 s
        r = httpx.post(f"{base}/v1/completions", json=body(model=model.name, max_tokens=240, prompt="x"), timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        with pytest.raises(openai.APIError, match="deadline"):
            list(client(base).completions.create(model=model.name, prompt="x", max_tokens=240, stream=True))
        # the handler may see the deadline a step before the worker does: wait for the worker to stop too
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and metric(base, "paragen_in_flight"):
            time.sleep(0.05)
        assert metric(base, 'paragen_decodes_total{outcome="timeout"}') == 2
        assert metric(base, "paragen_in_flight") == 0


def test_serve_flags_and_defaults():
    from paragen.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.max_batch, args.strategy, args.api_key) == ("127.0.0.1", 16, "ar", None)
    args = build_parser().parse_args(["serve", "--port", "0", "--max-queue", "2", "--timeout", "5", "--threads", "1"])
    assert (args.port, args.max_queue, args.timeout, args.threads) == (0, 2, 5.0, 1)


class BrokenModel(SlowModel):
    """A model whose forward fails: a server bug stands in for any unexpected exception."""

    def forward(self, tokens, positions, cache=None, mask=None):
        raise RuntimeError("secret internal detail")


def test_an_internal_error_is_a_500_without_traceback(model):
    with serving(BrokenModel(model, 0.0)) as base:
        for stream in (False, True):
            r = httpx.post(f"{base}/v1/completions", json=body(model=model.name, stream=stream), timeout=30)
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
            assert "secret" not in r.text and "Traceback" not in r.text
        assert httpx.get(f"{base}/health").json()["status"] == "ok"  # the decoder thread survived
        assert metric(base, 'paragen_decodes_total{outcome="failed"}') == 2


@contextmanager
def server_process(*args: str, seconds: float = 600) -> Iterator[str]:
    """``paragen serve`` in a subprocess on 127.0.0.1 (a free port), stopped on exit; it also
    stops itself after ``seconds`` (``timeout``), whatever happens to the test."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = ["timeout", str(int(seconds)), sys.executable, "-m", "paragen.cli", "serve", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the server exited: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start in 120 s"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_openai_client_32_concurrent_streams_in_one_running_batch():
    """32 concurrent streaming requests through the official openai client, against a
    subprocess server on the built-in models (float64, so batch rounding cannot flip an argmax):
    mixed strategies, prompts, max_tokens and stop strings, greedy and seeded sampling. Every
    greedy text equals ``paragen.generate`` alone; every seeded sampled text equals the same
    request sent alone afterwards; usage counts are exact; no response carries another's text."""
    target = paragen.load("code-target", dtype=torch.float64)
    draft = paragen.load("code-draft", dtype=torch.float64)
    heads = ["def add(a, b):", "class Stack:", "import os\n\ndef walk(path):", "def fib(n):", "for i in range(10):",
             "def is_prime(n):", "x = [i * i for i in", "def parse(line):"]
    strategies = ["ar", "speculative", "lookup", "eagle", "tree"]
    requests = []
    for i in range(32):
        strategy = strategies[i % len(strategies)]
        sampled = i % 4 == 3 and strategy != "lookup"
        requests.append(dict(prompt=heads[i % len(heads)] + " " * (i // 8), max_tokens=8 + (i * 5) % 17,
                             stop=["\n\n"] if i % 3 == 0 else None, temperature=0.8 if sampled else 0.0,
                             seed=1000 + i if sampled else None, strategy=strategy))

    async def one(c: openai.AsyncOpenAI, r: dict) -> tuple[str, Any]:
        extra = {"paragen": {"strategy": r["strategy"]}}
        chunks = [ch async for ch in await c.completions.create(
            model="code-target", prompt=r["prompt"], max_tokens=r["max_tokens"], stop=r["stop"],
            temperature=r["temperature"], seed=r["seed"], stream=True, stream_options={"include_usage": True},
            extra_body=extra)]
        return "".join(ch.choices[0].text for ch in chunks if ch.choices), chunks[-1].usage

    async def crowd(base: str, rs: list[dict]) -> list:
        c = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="-", max_retries=0, timeout=300)
        return await asyncio.gather(*(one(c, r) for r in rs))

    with server_process("--model", "code-target", "--draft", "code-draft", "--dtype", "float64", "--max-batch", "16",
                        "--threads", "1") as base:
        together = asyncio.run(crowd(base, requests))
        alone = {i: asyncio.run(crowd(base, [r]))[0] for i, r in enumerate(requests) if r["seed"] is not None}
        steps = httpx.get(f"{base}/metrics").text
    for i, (r, (text, usage)) in enumerate(zip(requests, together)):
        if r["seed"] is None:
            gen = paragen.generate(target, r["prompt"], r["strategy"], max_new_tokens=r["max_tokens"], stop=r["stop"],
                                   draft=draft if r["strategy"] in ("speculative", "tree") else None)
            assert text == gen.text, (i, r)
            assert usage.completion_tokens == len(gen.tokens)
        else:
            assert text == alone[i][0] and usage.completion_tokens == alone[i][1].completion_tokens, (i, r)
        assert usage.prompt_tokens == len(target.tokenizer.encode(r["prompt"]))
        assert usage.model_extra["paragen"]["strategy"] == r["strategy"]
    assert re.search(r'^paragen_batch_rows_bucket\{le="16.0"\} (\S+)$', steps, re.M)
    rows = re.search(r"^paragen_batch_rows_sum (\S+)$", steps, re.M)
    count = re.search(r"^paragen_batch_rows_count (\S+)$", steps, re.M)
    assert float(rows.group(1)) / float(count.group(1)) > 1.5, "the requests did not share steps"


def test_usage_says_whether_the_text_is_lossy():
    from paragen.driver import Stats
    from paragen.serve.schemas import usage_body

    def block(extra: dict) -> dict:
        out = usage_body(3, 4, Stats(strategy="ar", extra=extra))["paragen"]
        return {k: out[k] for k in ("lossy", "weights") if k in out}

    assert usage_body(3, 4) == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert block({}) == {"lossy": False}
    assert block({"weights": "int8-weights (lossy)"}) == {"lossy": True, "weights": "int8-weights (lossy)"}
    assert block({"lossy": True, "blocks": 2}) == {"lossy": True}


def test_serve_refuses_a_default_strategy_without_its_draft_and_a_port_in_use_before_loading(model, model_dir, capsys,
                                                                                             monkeypatch):
    import socket

    with pytest.raises(InvalidInputError, match="needs a draft model"):
        create_app(model, None, ServeConfig(strategy="speculative"))

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(paragen, "load", no_loading)
    assert main(["serve", "--model", str(model_dir), "--strategy", "speculative"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--strategy speculative needs a draft model" in err and "--draft" in err
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        assert main(["serve", "--model", str(model_dir), "--port", str(port)]) == 2
        err = capsys.readouterr().err
        assert err == f"paragen: error: port {port} is in use: pick another --port (0 picks a free one) or --host\n"
    finally:
        taken.close()


def test_top_k_inside_the_paragen_object_is_refused_with_where_it_goes(url, model):
    r = httpx.post(f"{url}/v1/completions", json={"model": model.name, "prompt": "x", "paragen": {"top_k": 5}})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    assert "top_k goes at the top level of the body" in message and "extra_body={'top_k': ...}" in message
    ok = httpx.post(f"{url}/v1/completions", json={"model": model.name, "prompt": "x", "top_k": 5, "max_tokens": 2})
    assert ok.status_code == 200
