"""The benchmark protocol: every contender against ``ar``, prompt by prompt, in one process.

1. Validate everything (names, options, task) before loading a model, so a typo fails fast.
2. Warm up: one untimed generate per contender on the first prompt (the first batch).
3. For each prompt (each batch of ``batch_size`` consecutive prompts), run every contender
   once, ``ar`` included, in an order rotated by one per prompt so that no contender always
   runs first (or right after another).
4. After timing: quality per record (gen_ppl with one no-cache target forward, ast_ok),
   then agreement with ``ar`` and the summaries (``paragen.bench.metrics``).

A contender is a paragen strategy (any name in ``paragen.strategies.STRATEGIES``) or a
transformers peer (``paragen.bench.peers.PEERS``). Seconds are wall-clock around the one
generate call (tokenisation excluded, prompt prefill included), the same for both kinds.
In a batch, each row's record gets an equal share of the batch's seconds, so summed over
the prompts they give the batches' wall time, and ``tok_s`` is the batched throughput.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters

from paragen.bench.metrics import REFERENCE, Record, Summary, completion_parses, score_against_reference, summarize
from paragen.bench.peers import PEERS, LlamaCpp, load_llamacpp, run_llamacpp, run_peer
from paragen.errors import (
    InvalidInputError,
    ParagenError,
    UnknownStrategyError,
    UnsupportedOptionError,
    VocabularyMismatchError,
)
from paragen.heads.io import builtin_heads_for
from paragen.heads.modules import Eagle
from paragen.models import DTYPE_CHOICES, device_of, parse_device, torch_dtype
from paragen.models.base import Model, dtype_label
from paragen.strategies import STRATEGIES
from paragen.tasks import Task, get_task
from paragen.threads import DEFAULT_THREADS, torch_threads

SCHEMA = "paragen.bench/1"


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark run. ``options``: (contender, key, value) triples, values as typed on the CLI.
    ``models``: (strategy, model) pairs: that strategy runs on its own target model (a
    diffusion model, say) instead of ``model``; ``ar``, the peers and gen_ppl keep ``model``.
    ``heads``: (contender, directory) pairs: the prediction heads a heads strategy runs on.
    ``dtype``: the weights' dtype for every contender, peers included; gen_ppl is always
    scored in float32, so quality compares across dtypes. ``threads``: torch CPU threads
    for the run (set for its duration, restored after). ``device``: where every model runs
    (peers included). ``batch_size``: prompts decoded together by each contender (above 1:
    the strategies that batch only, no transformers peers).
    """

    strategies: tuple[str, ...] = (REFERENCE,)
    task: str = "humaneval"
    limit: int | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float | None = None  # nucleus sampling for every contender (peers included) when temperature > 0
    seed: int = 0
    model: str = "code-target"
    draft: str = "code-draft"
    backend: str = "native"
    dtype: str = "float32"
    options: tuple[tuple[str, str, str], ...] = ()
    models: tuple[tuple[str, str], ...] = ()
    heads: tuple[tuple[str, str], ...] = ()  # (contender, heads directory) for strategies that run on heads
    resamples: int = 1000  # bootstrap resamples for the speedup interval
    threads: int = DEFAULT_THREADS
    device: str = "cpu"
    batch_size: int = 1
    compile: bool | str = False  # paragen.load's compile for the paragen models: True (warmed up before timing), "auto"


@dataclass(frozen=True)
class Contender:
    """A strategy or a peer with its validated options."""

    name: str
    cls: type  # a Strategy or a Peer subclass
    options: Any  # the class's frozen Options instance
    model: str | None = None  # its own target model, if not the run's

    @property
    def peer(self) -> bool:
        return self.cls.name in PEERS

    @property
    def needs_draft(self) -> bool:
        """It runs with the draft model: it needs one, or takes one (``auto``'s candidates)."""
        return bool(self.cls.needs_draft or getattr(self.cls, "takes_draft", False))


@dataclass(frozen=True)
class Outcome:
    """What one generate call gave, before it becomes a Record."""

    tokens: tuple[int, ...]
    target_calls: int | None
    draft_calls: int | None
    seconds: float
    finish_reason: str
    committed_per_call: dict[int, int] | None
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class Prompt:
    """A task with its prompt token ids, as every contender receives them."""

    task: Task
    ids: tuple[int, ...]
    text: str  # the text the ids spell (the task prompt unless it was truncated)
    truncated: bool


@dataclass
class BenchResult:
    """Everything ``bench.json`` holds (see ``paragen.bench`` for the schema)."""

    config: BenchConfig
    environment: dict[str, Any]
    contenders: list[Contender]
    prompts: list[Prompt]
    records: list[Record]
    summary: dict[str, Summary]
    seconds: float = 0.0  # the whole run: loading, warm-up, timed runs, scoring

    def to_dict(self) -> dict[str, Any]:
        config = dataclasses.asdict(self.config)
        config["options"] = [list(o) for o in self.config.options]
        config["models"] = [list(m) for m in self.config.models]
        config["heads"] = [list(h) for h in self.config.heads]
        return {
            "schema": SCHEMA,
            "config": config,
            "environment": self.environment,
            "contenders": {c.name: {"peer": c.peer, "lossless": bool(c.cls.lossless), "needs_draft": c.needs_draft,
                                    "model": c.model or self.config.model, "options": dataclasses.asdict(c.options)}
                           for c in self.contenders},
            "tasks": [{"id": p.task.id, "prompt": p.text, "prompt_tokens": len(p.ids), "truncated": p.truncated}
                      for p in self.prompts],
            "records": [r.to_dict() for r in self.records],
            "summary": {name: s.to_dict() for name, s in self.summary.items()},
            "seconds": round(self.seconds, 1),
        }


# ---------------------------------------------------------------- validation


def parse_option(text: str) -> tuple[str, str, str]:
    """``strategy:key=value`` -> (strategy, key, value); dashes in keys become underscores."""
    head, eq, value = text.partition("=")
    name, colon, key = head.partition(":")
    if not (eq and colon and name.strip() and key.strip()):
        raise InvalidInputError(f"option '{text}' must look like STRATEGY:KEY=VALUE (e.g. lookup:max_draft=8)")
    return name.strip(), key.strip().replace("-", "_"), value


def parse_model_for(text: str, flag: str = "--model-for") -> tuple[str, str]:
    """``strategy=model`` (or ``strategy=heads directory``) -> (strategy, model)."""
    name, eq, model = text.partition("=")
    if not (eq and name.strip() and model.strip()):
        example = "diffusion=code-diffusion" if flag == "--model-for" else "medusa=DIR"
        raise InvalidInputError(f"{flag} '{text}' must look like STRATEGY={'MODEL' if flag == '--model-for' else 'DIR'} "
                                f"(e.g. {example})")
    return name.strip(), model.strip()


def contender_class(name: str) -> type:
    """The strategy or peer class called ``name``; UnknownStrategyError listing all names.

    ``NAME@LABEL`` is a variant of NAME with options of its own (``--option NAME@LABEL:k=v``),
    so one run can compare settings of one strategy, e.g. ``tree@static``.
    """
    base = name.partition("@")[0]
    if base in STRATEGIES:
        return STRATEGIES[base]
    if base in PEERS:
        return PEERS[base]
    raise UnknownStrategyError(f"unknown strategy '{name}': choose from {', '.join([*STRATEGIES, *PEERS])}")


def bench_heads(config: BenchConfig, name: str, cls: type) -> str | None:
    """The heads contender ``name`` runs on: its --heads, else the built-in heads of --model, else None."""
    kinds = cls.head_kinds or getattr(cls, "takes_heads", ())
    return dict(config.heads).get(name) or builtin_heads_for(Path(config.model).name, kinds)


def build_contenders(config: BenchConfig) -> list[Contender]:
    """Validated contenders, ``ar`` first (added when not listed), duplicates dropped.

    The name ``all`` stands for every registered strategy and every peer.
    """
    from paragen.options import make_options

    # "all": every peer and every strategy that can run the target (diffusion strategies
    # only when --model-for gives them a diffusion model).
    own, heads = dict(config.models), dict(config.heads)
    every = [n for n, c in STRATEGIES.items()
             if (c.attention == "causal" or n in own) and (not c.head_kinds or n in heads or bench_heads(config, n, c))]
    every += [n for n, p in PEERS.items() if not hasattr(p, "available") or p.available()]
    listed = [n.strip() for s in config.strategies for n in (every if s.strip() == "all" else [s])]
    names = [REFERENCE] + [n for n in dict.fromkeys(listed) if n and n != REFERENCE]
    classes = {n: contender_class(n) for n in names}
    given: dict[str, dict[str, str]] = {n: {} for n in names}
    for name, key, value in config.options:
        if name not in given:
            raise InvalidInputError(f"option for '{name}', which is not benchmarked: add it to --strategies")
        given[name][key] = value
    own_model = dict(config.models)
    for name in own_model:
        if name not in given:
            raise InvalidInputError(f"--model-for '{name}', which is not benchmarked: add it to --strategies")
        if name == REFERENCE or name in PEERS:
            raise InvalidInputError(f"'{name}' runs on --model (it is the reference, or a peer on the same weights)")
    for name in heads:
        if name not in given:
            raise InvalidInputError(f"--heads '{name}', which is not benchmarked: add it to --strategies")
    for n in names:
        if getattr(classes[n], "head_kinds", ()) and not bench_heads(config, n, classes[n]):
            raise InvalidInputError(f"strategy '{n}' runs on prediction heads and none are built in for --model: "
                                    f"give them with --heads {n}=DIR")
    greedy = config.temperature == 0
    contenders = []
    batched = ",".join(n for n, c in STRATEGIES.items() if c.batched)
    for n in names:
        if not greedy and not classes[n].supports_sampling:
            raise UnsupportedOptionError(f"strategy '{n}' is greedy-only: use --temperature 0 or leave it out")
        if config.batch_size > 1 and (n.partition("@")[0] in PEERS or not classes[n].batched):
            raise UnsupportedOptionError(f"'{n}' decodes one prompt at a time: with --batch-size above 1 use "
                                         f"--strategies {batched}")
        contenders.append(Contender(n, classes[n], make_options(classes[n], given[n]), own_model.get(n)))
    return contenders


def check_config(config: BenchConfig) -> None:
    """Clear errors for settings out of range (before anything slow happens)."""
    if config.max_new_tokens < 1:
        raise InvalidInputError(f"--max-new-tokens must be >= 1, got {config.max_new_tokens}")
    if config.limit is not None and config.limit < 1:
        raise InvalidInputError(f"--limit must be >= 1, got {config.limit}")
    if not config.temperature >= 0:
        raise InvalidInputError(f"--temperature must be >= 0, got {config.temperature}")
    if config.top_p is not None and not 0 < config.top_p <= 1:
        raise InvalidInputError(f"--top-p must be in (0, 1], got {config.top_p}")
    if config.resamples < 1:
        raise InvalidInputError(f"bootstrap resamples must be >= 1, got {config.resamples}")
    if config.dtype not in DTYPE_CHOICES:
        raise InvalidInputError(f"--dtype must be one of {', '.join(DTYPE_CHOICES)}, got '{config.dtype}'")
    if config.threads < 1:
        raise InvalidInputError(f"--threads must be >= 1, got {config.threads}")
    from paragen.request import MAX_BATCH

    if not 1 <= config.batch_size <= MAX_BATCH:
        raise InvalidInputError(f"--batch-size must be between 1 and {MAX_BATCH}, got {config.batch_size}")
    parse_device(config.device)


# ---------------------------------------------------------------- models and prompts


@dataclass(frozen=True)
class Models:
    target: Model  # the AR target: ar runs on it
    scorer: Model  # the AR target in float32: it scores gen_ppl
    draft: Model | None
    own: dict[str, Model]  # contender name -> its own target (--model-for)
    heads: dict[str, Any]  # contender name -> its prediction heads (--heads), bound to its target
    hf_target: torch.nn.Module | None  # transformers modules, for the peers only
    hf_draft: torch.nn.Module | None
    llamacpp: dict[str, Any] = dataclasses.field(default_factory=dict)  # llama.cpp peer name -> llama_cpp.Llama

    def all(self) -> list[Model]:
        """Every loaded paragen model (target, draft, own targets)."""
        return [self.target, *([self.draft] if self.draft is not None else []), *self.own.values()]


def load_models(config: BenchConfig, contenders: list[Contender]) -> Models:
    """Load what the contenders need; the peers get their own transformers copies of the
    same weights (separate objects, so their forward hooks count only their own calls).
    Every model must share the target's tokenizer: all contenders get the same prompt ids."""
    import paragen
    from paragen.models.hf import HFModel
    from paragen.models.io import resolve

    needs_draft = [c for c in contenders if c.needs_draft and not c.peer]
    peers = [c for c in contenders if c.peer]
    dtype, device = config.dtype, config.device  # dtype: a dtype name or a weight format (paragen.models.quant)
    kw = dict(backend=config.backend, dtype=dtype, compile=config.compile, device=device)
    target = paragen.load(config.model, **kw)
    scorer = (target if dtype == "float32" and not config.compile
              else paragen.load(config.model, backend=config.backend, device=device))
    draft = paragen.load(config.draft, **kw) if needs_draft else None
    loaded: dict[str, Model] = {}
    for c in contenders:
        if c.model is not None and c.model not in loaded:
            loaded[c.model] = paragen.load(c.model, **kw)
    own = {c.name: loaded[c.model] for c in contenders if c.model is not None}
    for name, model in own.items():
        if model.tokenizer.fingerprint() != target.tokenizer.fingerprint():
            raise VocabularyMismatchError(f"the model for '{name}' has another tokenizer than --model: "
                                          "contenders must read the same prompt tokens")
    heads = {c.name: paragen.load_heads(path, own.get(c.name, target)) for c in contenders
             if (getattr(c.cls, "head_kinds", ()) or getattr(c.cls, "takes_heads", ()))
             and (path := bench_heads(config, c.name, c.cls))}
    hf = [c for c in peers if not issubclass(c.cls, LlamaCpp)]
    hf_dtype = torch_dtype(dtype)
    hf_target = HFModel.from_dir(resolve(config.model), hf_dtype).module.to(device) if hf else None
    hf_draft = (HFModel.from_dir(resolve(config.draft), hf_dtype).module.to(device)
                if any(c.needs_draft for c in hf) else None)
    # llama.cpp peers read a GGUF written from the native float32 model (the weights as stored).
    llama_peers = [c for c in peers if issubclass(c.cls, LlamaCpp)]
    source = (scorer if config.backend == "native" else paragen.load(config.model)) if llama_peers else None
    llama = {c.name: load_llamacpp(c.cls, source, torch.get_num_threads(), scorer.info.max_length) for c in llama_peers}
    return Models(target, scorer, draft, own, heads, hf_target, hf_draft, llama)


def prepare_prompts(tasks: list[Task], models: Models, max_new_tokens: int) -> list[Prompt]:
    """Tokenise every prompt; keep the last tokens of one too long for any model's context."""
    limit = min(m.info.max_length for m in models.all())
    room = limit - max_new_tokens
    if room < 1:
        raise InvalidInputError(f"--max-new-tokens {max_new_tokens} leaves no room for a prompt "
                                f"in a context of {limit} tokens")
    tok = models.target.tokenizer
    prompts = []
    for task in tasks:
        ids = tok.encode(task.prompt)
        if not ids:
            raise InvalidInputError(f"task {task.id} has an empty prompt")
        cut = len(ids) > room
        ids = ids[-room:]
        prompts.append(Prompt(task, tuple(ids), tok.decode(ids) if cut else task.prompt, cut))
    return prompts


# ---------------------------------------------------------------- running


def make_runner(c: Contender, models: Models, config: BenchConfig) -> Callable[[list[list[int]], int], list[Outcome]]:
    """A function (a batch of prompt ids, seed) -> one Outcome per prompt, for one contender."""
    import paragen

    eos = models.target.info.eos_ids

    def run_strategy(batch: list[list[int]], seed: int) -> list[Outcome]:
        draft = models.draft if c.needs_draft else None
        target = models.own.get(c.name, models.target)
        start = time.perf_counter()
        gens = paragen.generate(target, batch if config.batch_size > 1 else batch[0], c.cls.name,
                                max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                top_p=config.top_p, seed=seed, draft=draft, heads=models.heads.get(c.name),
                                **dataclasses.asdict(c.options))
        share = (time.perf_counter() - start) / len(batch)  # the rows share the batch's wall time
        return [Outcome(tuple(g.tokens), g.stats.target_calls, g.stats.draft_calls, share, g.stats.finish_reason,
                        dict(g.stats.committed_per_call), g.stats.extra)
                for g in (gens if isinstance(gens, list) else [gens])]

    # A peer in a dtype below float32 is lossy as a paragen model is (labelled the same way).
    peer_weights = dtype_label(models.hf_target.dtype) if models.hf_target is not None else None

    def run_hf(batch: list[list[int]], seed: int) -> list[Outcome]:
        (ids,) = batch  # peers run at batch size 1 (build_contenders)
        out = run_peer(c.cls, c.options, models.hf_target, models.hf_draft, ids, config.max_new_tokens,
                       config.temperature, seed, eos, config.top_p)
        # Per-call accepted counts are internal to transformers: no histogram for peers.
        return [Outcome(out.tokens, out.target_calls, out.draft_calls, out.seconds, out.finish_reason, None,
                        {"weights": peer_weights} if peer_weights else None)]

    def run_llama(batch: list[list[int]], seed: int) -> list[Outcome]:
        (ids,) = batch  # peers run at batch size 1 (build_contenders), and greedy only: no seed
        out = run_llamacpp(models.llamacpp[c.name], ids, config.max_new_tokens, eos)
        return [Outcome(out.tokens, out.target_calls, out.draft_calls, out.seconds, out.finish_reason, None)]

    if c.peer and issubclass(c.cls, LlamaCpp):
        return run_llama
    return run_hf if c.peer else run_strategy


def attempt(runner: Callable[[list[list[int]], int], list[Outcome]], name: str, batch: list[Prompt],
            seed: int) -> list[Outcome]:
    """Run once on a batch of prompts; a paragen error says which contender and prompts it came from."""
    try:
        return runner([list(p.ids) for p in batch], seed)
    except ParagenError as e:
        raise type(e)(f"{name} on {', '.join(p.task.id for p in batch)}: {e}") from e


def output_perplexity(model: Model, prompt: tuple[int, ...], output: tuple[int, ...]) -> float | None:
    """exp(mean NLL) of ``output`` after ``prompt`` under ``model``: one forward, no cache."""
    if not output:
        return None
    seq = list(prompt) + list(output)
    with torch.inference_mode():
        x = torch.tensor([seq], device=device_of(model))
        logits = model(x, torch.arange(len(seq), device=x.device)[None])[0]  # [T, V]
    # Logits at position i predict token i + 1: the outputs are predicted from len(prompt) - 1 on.
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1].double(), dim=-1)  # [N, V]
    nll = -logp.gather(1, torch.tensor(output, device=logp.device)[:, None]).mean()
    return float(math.exp(nll))


def add_quality(records: list[Record], prompts: dict[str, Prompt], target: Model) -> list[Record]:
    """gen_ppl and ast_ok of every record; identical outputs of a prompt are scored once."""
    ppl: dict[tuple[str, tuple[int, ...]], float | None] = {}
    out = []
    for r in records:
        p = prompts[r.task_id]
        key = (r.task_id, r.tokens)
        if key not in ppl:
            ppl[key] = output_perplexity(target, p.ids, r.tokens)
        out.append(dataclasses.replace(r, gen_ppl=ppl[key], ast_ok=completion_parses(p.text, r.text)))
    return out


def warm_compiled(models: Models, contenders: list[Contender], rows: int) -> dict[str, float | int]:
    """Compile, before any timed run, every graph the contenders' calls can run on each
    compiled model (``NativeModel.warm_up``): each bucket up to the most tokens a contender
    feeds in one call, one row and several, causal and masked, and each EAGLE drafter's. The
    per-contender warm-up run that follows covers one batch only, and a call size it missed
    used to compile inside a timed run (about 6 s a graph). Returns the seconds, warm-up calls
    and graphs torch compiled."""
    tokens = max((c.cls.call_tokens(c.options) for c in contenders if not c.peer), default=1)
    before, start = counters["stats"]["unique_graphs"], time.perf_counter()
    calls = sum(m.warm_up(tokens, rows) for m in {id(m): m for m in models.all()}.values() if hasattr(m, "warm_up"))
    calls += sum(h.warm_up(tokens) for h in models.heads.values() if isinstance(h, Eagle))  # its compiled drafter
    return {"seconds": round(time.perf_counter() - start, 1), "calls": calls,
            "graphs": counters["stats"]["unique_graphs"] - before}


def run(config: BenchConfig, progress: bool = True, argv: list[str] | None = None) -> BenchResult:
    """Run the benchmark described by ``config`` on ``config.threads`` torch threads; see the
    module docstring for the protocol."""
    check_config(config)
    start = time.perf_counter()
    with torch_threads(config.threads):
        result = run_protocol(config, progress, argv)
    result.seconds = time.perf_counter() - start
    return result


def run_protocol(config: BenchConfig, progress: bool, argv: list[str] | None) -> BenchResult:
    """Steps 1-4 of the module docstring (``run`` sets the threads and times it)."""
    from tqdm.auto import tqdm

    env = environment(argv, config.device)
    contenders = build_contenders(config)
    tasks = get_task(config.task)[: config.limit]
    models = load_models(config, contenders)
    prompts = prepare_prompts(tasks, models, config.max_new_tokens)
    runners = {c.name: make_runner(c, models, config) for c in contenders}
    tok = models.target.tokenizer

    batches = [prompts[i : i + config.batch_size] for i in range(0, len(prompts), config.batch_size)]
    if config.compile is True:
        env["compile_warmup"] = warm_compiled(models, contenders, config.batch_size)
    records = []
    with tqdm(total=len(contenders) * (len(batches) + 1), desc=f"bench {config.task}", disable=not progress,
              file=sys.stderr) as bar:
        for c in contenders:  # 2. warm-up, untimed and discarded
            bar.set_postfix_str(f"warm-up {c.name}")
            attempt(runners[c.name], c.name, batches[0], config.seed)
            bar.update()
        graphs = counters["stats"]["unique_graphs"]
        for i, batch in enumerate(batches):  # 3. interleaved, order rotated per batch
            for c in contenders[i % len(contenders) :] + contenders[: i % len(contenders)]:
                bar.set_postfix_str(c.name)
                for p, o in zip(batch, attempt(runners[c.name], c.name, batch, config.seed + i)):
                    records.append(Record(p.task.id, c.name, len(p.ids), len(o.tokens), o.target_calls, o.draft_calls,
                                          o.seconds, o.tokens, tok.decode(list(o.tokens)), o.finish_reason,
                                          o.committed_per_call, o.extra))
                bar.update()

    if config.compile:  # a graph compiled inside a timed run costs it seconds: there should be none
        env["graphs_compiled_in_timed_runs"] = counters["stats"]["unique_graphs"] - graphs
    records = score_against_reference(add_quality(records, {p.task.id: p for p in prompts}, models.scorer))
    summary = summarize(records, {c.name: bool(c.cls.lossless) for c in contenders},
                        {c.name for c in contenders if c.peer}, config.temperature == 0, config.seed, config.resamples)
    # Records grouped by contender, in the order contenders were listed, for readability.
    order = {c.name: k for k, c in enumerate(contenders)}
    records.sort(key=lambda r: order[r.strategy])
    return BenchResult(config, env, contenders, prompts, records, summary)


# ---------------------------------------------------------------- environment


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    """The commit of the paragen source tree, with ``-dirty`` if it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if commit.returncode != 0:
        return None
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def environment(argv: list[str] | None = None, device: str = "cpu") -> dict[str, Any]:
    """Versions, hardware (the GPU's name when the run is on one), threads, git commit and the command line."""
    import numpy
    import transformers

    from paragen import __version__ as paragen_version

    return {
        "paragen": paragen_version,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(parse_device(device)) if parse_device(device).type == "cuda" else None,
        "git_commit": _git_commit(),
        "command": argv if argv is not None else list(sys.argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


__all__ = ["SCHEMA", "BenchConfig", "BenchResult", "Contender", "build_contenders", "parse_option", "run"]
