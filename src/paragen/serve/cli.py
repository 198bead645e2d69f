"""The ``paragen serve`` subcommand: its flags and how it starts uvicorn."""

from __future__ import annotations

import argparse
import errno
import json
import socket
from typing import TYPE_CHECKING

from paragen.errors import InvalidInputError, ParagenError
from paragen.flags import add_model_flags, add_threads_flag, check_heads_found, command_threads, load_kwargs
from paragen.threads import DEFAULT_THREADS

if TYPE_CHECKING:
    from paragen.serve.app import ServeConfig

DESCRIPTION = """\
Serve a model over an OpenAI-compatible HTTP API: POST /v1/completions (and
/v1/chat/completions for models with a chat template), GET /v1/models, /health, /metrics.
Each request may pick its strategy and options in the extra body:
  {"paragen": {"strategy": "lookup", "options": {"max_ngram": 3}}}
Requests are decoded by an engine with continuous batching: a request joins the running
batch at the next decoding step and leaves it at the step it finishes. Rows batch with
rows of the same strategy, options and sampling settings; such groups take turns, one step
each. --max-batch bounds the running rows (more rows: more tokens per second in all, a
slower step for each stream), --cache-tokens the KV cache they hold together (each row:
prompt + max_tokens + drafts), --prefill-tokens the prompt tokens prefilled between two
steps. Beyond that, requests wait (at most --max-queue; more are answered 429).
Speculation under load: a greedy group of a draft-and-verify strategy drafts only while
drafting is measured faster than plain decoding of the same rows (the output is the same
either way); --no-speculation-policy drafts every step."""

EPILOG = """\
example:
  paragen serve --model code-target --draft code-draft --strategy speculative
  python -c "import openai; c = openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-');
             print(c.completions.create(model='code-target', prompt='def add(a, b):', max_tokens=32).choices[0].text)"
"""


def add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API", description=DESCRIPTION,
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0 picks a free one)")
    p.add_argument("--model", default="code-target", help="built-in model name or model directory (default: code-target)")
    p.add_argument("--draft", default=None, help="draft model for the strategies that need one (speculative, tree, spectr)")
    p.add_argument("--strategy", default="ar", help="strategy for requests that name none (default: ar)")
    add_model_flags(p)
    p.add_argument("--max-batch", type=int, default=16,
                   help="rows in the running batch at most, all groups together; on a 2-core CPU 16 rows of ar make "
                        "~2.8x the tokens/s of one (BENCHMARKS.md, Serving) (default: 16)")
    p.add_argument("--cache-tokens", type=int, default=None,
                   help="KV cache slots of all running rows together; a request needing more than all of them is "
                        "refused, one needing more than are free waits (default: max-batch x the model context)")
    p.add_argument("--prefill-tokens", type=int, default=2048,
                   help="prompt tokens prefilled between two steps at most, at least one request (default: 2048)")
    p.add_argument("--no-speculation-policy", dest="speculation", action="store_false",
                   help="draft every step, even where plain decoding of the rows is measured faster")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait to join the running batch; more are answered 429 (default: 64)")
    p.add_argument("--max-tokens", type=int, default=1024, help="largest max_tokens a request may ask for (default: 1024)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds a request may take from arrival, queueing included; then its decode stops between "
                        "steps and the client gets a 504 (or an error event if streaming) (default: 300)")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* (default: no key)")
    add_threads_flag(p, DEFAULT_THREADS)
    ray = p.add_argument_group("replicas on Ray Serve (pip install 'paragen[ray]')", REPLICAS_HELP)
    ray.add_argument("--replicas", type=int, default=None, help="a fixed number of replicas")
    ray.add_argument("--min-replicas", type=int, default=None, help="autoscaling: replicas at least (0: none when idle)")
    ray.add_argument("--max-replicas", type=int, default=None, help="autoscaling: replicas at most")
    ray.add_argument("--target-requests", type=float, default=None,
                     help="autoscaling: requests per replica (running and waiting) Ray scales to (default: --max-batch)")
    ray.add_argument("--ray", default=None, metavar="local|auto|ADDRESS",
                     help="where: local (a Ray instance on this machine, the default with --replicas), auto (the cluster "
                          "`ray start --head` made here), or a cluster address")
    p.set_defaults(run=run_serve)


REPLICAS_HELP = """Without these flags the server is this one process. With them, Ray Serve runs the same app
in N processes (replicas), each loading the model once and decoding its own batches, behind
Ray's HTTP proxy on --host/--port; answers carry x-paragen-replica. A replica that dies is
restarted by Ray; its requests in flight get a 5xx (or a stream ends early), which clients
retry: nothing is retried by the server (see paragen.cluster.serve)."""


def chat_template(name_or_path: str) -> str | None:
    """The model directory's chat template (tokenizer_config.json or chat_template.jinja), if any."""
    from paragen.models.io import resolve

    path = resolve(name_or_path)
    if (path / "chat_template.jinja").exists():
        return (path / "chat_template.jinja").read_text()
    cfg = path / "tokenizer_config.json"
    template = json.loads(cfg.read_text()).get("chat_template") if cfg.exists() else None
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), for uvicorn to serve on; one clear error when the port is
    taken or the address is not this machine's (checked before any model loads)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a closed server's TIME_WAIT does not count as taken
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        why = f"port {port} is in use" if e.errno == errno.EADDRINUSE else f"cannot listen on {host}:{port} ({e.strerror})"
        raise InvalidInputError(f"{why}: pick another --port (0 picks a free one) or --host") from None
    return sock


def run_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from paragen.serve.app import ServeConfig, check_default_strategy, create_app
    except ImportError as e:
        raise ParagenError(f"serving needs FastAPI and uvicorn ({e}): pip install 'paragen[serve]'") from None
    import paragen
    from paragen.strategies import get_strategy

    # Everything that can be refused is, before the models load: settings, the default strategy, the port.
    replicated = (args.replicas, args.min_replicas, args.max_replicas, args.target_requests, args.ray) != (None,) * 5
    config = ServeConfig(strategy=args.strategy, max_batch=args.max_batch, max_queue=args.max_queue,
                         cache_tokens=args.cache_tokens, prefill_tokens=args.prefill_tokens, speculation=args.speculation,
                         max_tokens=args.max_tokens, timeout=args.timeout, api_key=args.api_key,
                         chat_template=chat_template(args.model))
    check_default_strategy(config, args.draft is not None)
    if replicated:
        return _run_replicas(args, config)
    with command_threads(args):
        sock = listening_socket(args.host, args.port)
        try:
            model = paragen.load(args.model, **load_kwargs(args))
            draft = paragen.load(args.draft, **load_kwargs(args)) if args.draft else None
            check_heads_found(get_strategy(args.strategy), model, None)
            app = create_app(model, draft, config)
            uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])
        finally:
            sock.close()
    return 0


def _run_replicas(args: argparse.Namespace, config: ServeConfig) -> int:
    """``--replicas`` / ``--min-replicas``: the app on Ray Serve (``paragen.cluster.serve``)."""
    from paragen.cluster import import_ray

    if args.replicas is None and args.min_replicas is None and args.max_replicas is None:
        raise InvalidInputError("--ray and --target-requests are for replicas: add --replicas N (or --min-replicas and "
                                "--max-replicas)")
    if args.port == 0:
        raise InvalidInputError("Ray Serve's proxy needs a fixed --port (0 picks none with --replicas)")
    import_ray()
    from paragen.cluster.serve import ReplicaSpec, Scaling, run_replicas

    scaling = Scaling(args.replicas, args.min_replicas, args.max_replicas, args.target_requests)
    spec = ReplicaSpec(model=args.model, draft=args.draft, load=load_kwargs(args), config=config, threads=args.threads)
    return run_replicas(spec, scaling, args.ray or "local", args.host, args.port)
