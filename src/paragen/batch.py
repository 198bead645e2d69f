"""``paragen batch``: offline generation over a JSON Lines file, resumable and exactly once.

Input: one JSON object a line, ``{"id": ..., "prompt": ..., optional "max_tokens",
"temperature", "seed", "stop"}``. Output: one JSON line per input row, ``{"id", "text",
"tokens", "stats"}``, in input order, in the file ``--output``.

The job in four steps (``run_job``):
1. read and check every line (``read_rows``): the API's own ``check_request`` against the
   loaded model, so an over-long prompt or a bad setting is reported with its line number
   before any decoding; ``--on-error fail`` stops here with nothing written;
2. find the rows already done (``ShardStore``): finished rows live in shards next to the
   output (``OUTPUT.parts/part-NNNNN.jsonl``), each written whole to a temporary file and
   renamed, so a shard is either all there or absent; a damaged one is dropped and redone;
3. decode the rest, here (``paragen.batch_decode.Decoder``: batched ``generate``) or on Ray
   Data actors (``paragen.cluster.batch``), writing a shard every ``shard_rows`` rows; the writer keeps
   the ids written, so a row that comes back twice (a retried task) is written once;
4. merge the shards into ``--output`` in input order (temporary file + rename), then
   delete them.

A crash or Ctrl-C loses at most the rows of the shard being filled; rerunning the same
command decodes only the rows no shard holds. Nothing here imports Ray.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paragen.batch_decode import Decoder, JobPlan, JobSettings, Row, local_results
from paragen.cluster.batch import ray_results
from paragen.errors import InvalidInputError, ParagenError
from paragen.flags import add_model_flags, add_threads_flag, load_kwargs, parse_options
from paragen.threads import DEFAULT_THREADS, torch_threads

__all__ = ["Decoder", "JobPlan", "JobSettings", "Row", "Summary", "add_batch_parser", "local_results", "read_rows",
           "run_batch", "run_job"]

FIELDS = ("id", "prompt", "max_tokens", "temperature", "seed", "stop")
SHOWN_ERRORS = 20  # bad lines listed in an error message; the rest are counted


@dataclass(frozen=True)
class BadLine:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class Summary:
    """What a job did; ``failed`` counts the bad input lines skipped (``--on-error skip``)."""

    rows: int = 0  # input rows that passed the checks
    done_before: int = 0  # of those, already in the output or its shards
    decoded: int = 0  # decoded by this run
    duplicates: int = 0  # rows that came back twice (a retried task) and were written once
    failed: int = 0
    tokens: int = 0
    target_calls: int = 0
    seconds: float = 0.0  # the whole job: checks, decoding, merge
    first_rows: float = 0.0  # decoding's start to its first rows: model loads, and on Ray the instance and actors

    def lines(self) -> list[str]:
        per_call = self.tokens / self.target_calls if self.target_calls else 0.0
        rate = self.tokens / self.seconds if self.seconds else 0.0
        return [f"rows: {self.rows} ({self.done_before} done before, {self.decoded} decoded now, "
                f"{self.failed} bad lines skipped, {self.duplicates} duplicate results dropped)",
                f"tokens: {self.tokens} in {self.seconds:.1f} s: {rate:.1f} tokens/s, {per_call:.2f} tokens per call "
                f"(first rows {self.first_rows:.1f} s after decoding began)"]


# ---------------------------------------------------------------- 1. reading and checking


def read_rows(path: str | os.PathLike, checker: Callable[[Row], None], settings: JobSettings) -> tuple[list[Row], list[BadLine]]:
    """Every line of ``path`` parsed and checked by ``checker``; the good rows and the bad lines
    (malformed JSON, a missing or non-string prompt, a bad type, a duplicate id, anything
    ``checker`` refuses). Blank lines are skipped; a file with no rows is an error."""
    rows: list[Row] = []
    bad: list[BadLine] = []
    first_line: dict[Any, int] = {}
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InvalidInputError(f"cannot read --input {path}: {e.strerror}") from None
    with f:
        for n, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                row = _parse(text, n, settings)
                if row.id in first_line:
                    raise InvalidInputError(f"duplicate id {row.id!r} (first on line {first_line[row.id]})")
                checker(row)
            except UnicodeDecodeError as e:
                raise InvalidInputError(f"--input {path} is not UTF-8 ({e.reason})") from None
            except ParagenError as e:
                bad.append(BadLine(n, str(e)))
                continue
            first_line[row.id] = n
            rows.append(row)
    if not rows and not bad:
        raise InvalidInputError(f"--input {path} has no rows: give one JSON object a line, "
                                '{"id": ..., "prompt": "..."}')
    return rows, bad


def _parse(text: str, line: int, settings: JobSettings) -> Row:
    """One line as a Row, types checked; the decoding settings are the checker's."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(d, dict):
        raise InvalidInputError(f"a line is a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise InvalidInputError(f"unknown field(s) {', '.join(unknown)}: the fields are {', '.join(FIELDS)}")
    if "id" not in d or isinstance(d["id"], bool) or not isinstance(d["id"], (str, int)):
        raise InvalidInputError('missing or bad "id": give each row a string or integer id')
    if not isinstance(d.get("prompt"), str):
        raise InvalidInputError('missing or bad "prompt": give the prompt as a string')
    stop = d.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise InvalidInputError('"stop" is a string or a list of strings')
    for name, kinds in (("max_tokens", int), ("temperature", int | float), ("seed", int)):
        if d.get(name) is not None and (isinstance(d[name], bool) or not isinstance(d[name], kinds)):
            raise InvalidInputError(f'"{name}" must be a number{" (an integer)" if kinds is int else ""}, got {d[name]!r}')
    return Row(d["id"], line, d["prompt"], settings.max_tokens if d.get("max_tokens") is None else d["max_tokens"],
               float(d.get("temperature", settings.temperature)), d.get("seed"), tuple(stop))


def request_checker(model: Any, draft: Any, settings: JobSettings) -> Callable[[Row], None]:
    """A row's checks: the API's ``check_request`` on the row alone (the batch adds nothing a
    row alone does not have: rows of a call share their settings by construction)."""
    from paragen.heads.io import default_heads
    from paragen.request import check_request
    from paragen.strategies import get_strategy

    kinds = get_strategy(settings.strategy).head_kinds
    heads = default_heads(model, kinds) if kinds else None  # once, not once a row

    def check(row: Row) -> None:
        check_request(model, [row.prompt], settings.strategy, row.max_tokens, row.temperature, None, None, row.seed,
                      row.stop, draft, heads, dict(settings.options))

    return check


def refuse_bad_lines(path: str | os.PathLike, bad: list[BadLine]) -> None:
    shown = "\n".join(f"  {b}" for b in bad[:SHOWN_ERRORS])
    more = f"\n  ... and {len(bad) - SHOWN_ERRORS} more" if len(bad) > SHOWN_ERRORS else ""
    raise InvalidInputError(f"--input {path}: {len(bad)} bad line(s), nothing was decoded or written "
                            f"(--on-error skip decodes the good rows):\n{shown}{more}")


# ---------------------------------------------------------------- 2 and 4. shards and the output


class ShardStore:
    """Finished rows of one job: shards ``OUTPUT.parts/part-NNNNN.jsonl`` while it runs, the
    merged ``OUTPUT`` at the end. Each shard is written to a temporary file and renamed into
    place, so after a crash a shard is whole or absent; one that still fails to parse (a
    disk that lost its tail, a hand edit) is dropped and its rows decoded again."""

    def __init__(self, output: str | os.PathLike) -> None:
        self.output = Path(output)
        self.parts = self.output.with_name(self.output.name + ".parts")
        self.written: set[Any] = set()
        self.dropped: list[str] = []  # damaged shards found and removed, for the user to see
        self._next = 0

    def load(self, wanted: set[Any]) -> set[Any]:
        """The ids already done; removes temporary files and damaged shards. Refuses an output
        holding ids the input lacks (another input file, the same --output)."""
        self.parts.mkdir(parents=True, exist_ok=True)
        for tmp in self.parts.glob(".*.tmp"):  # a shard that was being written when the job died
            tmp.unlink()
        sources = ([self.output] if self.output.exists() else []) + sorted(self.parts.glob("part-*.jsonl"))
        merged: set[Any] = set()  # the ids of a previous output
        for path in sources:
            records = _read_records(path)
            if records is None:
                self.dropped.append(path.name)
                path.unlink()
                continue
            ids = [r["id"] for r in records]
            if path == self.output:
                merged = set(ids)
            elif merged.issuperset(ids):  # the job stopped between writing the output and removing its shards
                path.unlink()
                continue
            stray = [i for i in ids if i not in wanted]
            if stray:
                raise InvalidInputError(f"{path} holds ids that --input does not have (e.g. {stray[0]!r}): is it "
                                        "another job's output? give another --output")
            twice = self.written.intersection(ids)
            if twice or len(set(ids)) != len(ids):
                raise ParagenError(f"{path} repeats ids already written (e.g. {next(iter(twice or ids))!r}): two "
                                   "jobs wrote to this --output at once; remove it and run again")
            self.written.update(ids)
        numbers = [int(p.stem.split("-")[1]) for p in self.parts.glob("part-*.jsonl")]
        self._next = max(numbers, default=-1) + 1
        return set(self.written)

    def write(self, records: list[dict[str, Any]]) -> None:
        """Write ``records`` as one shard; an id written before is a bug of the caller, refused."""
        ids = [r["id"] for r in records]
        if len(set(ids)) != len(ids) or self.written.intersection(ids):
            raise ParagenError("a shard would repeat an id already written: refused, to keep each row once")
        if records:
            _atomic_write(self.parts / f"part-{self._next:05d}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
            self._next += 1
            self.written.update(ids)

    def finish(self, rows: list[Row]) -> None:
        """Merge every shard (and a previous output) into the output in input order; delete the shards."""
        order = {row.id: i for i, row in enumerate(rows)}
        records: list[dict[str, Any]] = []
        sources = ([self.output] if self.output.exists() else []) + sorted(self.parts.glob("part-*.jsonl"))
        for path in sources:
            records += _read_records(path) or []
        records.sort(key=lambda r: order[r["id"]])
        _atomic_write(self.output, "".join(json.dumps(r) + "\n" for r in records))
        for path in self.parts.glob("part-*.jsonl"):
            path.unlink()
        self.parts.rmdir()


def _read_records(path: Path) -> list[dict[str, Any]] | None:
    """A shard's records, or None when any line is not a whole record (truncated or damaged)."""
    try:
        text = path.read_text(encoding="utf-8")
        records = [json.loads(line) for line in text.splitlines()]
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    whole = text.endswith("\n") and all(isinstance(r, dict) and {"id", "text", "tokens"} <= set(r) for r in records)
    return records if whole else None


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, rename it over ``path``:
    a reader (or a rerun after a crash) sees the old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------- the job (3. decoding: paragen.batch_decode)


def run_job(settings: JobSettings, plan: JobPlan,
            results: Callable[[list[Row]], Iterable[list[dict[str, Any]]]] | None = None) -> Summary:
    """Check the input, skip the rows done, decode the rest, merge; the Summary.

    ``results`` maps the rows to decode to batches of records; default: this process, or Ray
    Data when ``plan.ray`` is set (``paragen.cluster.batch.ray_results``)."""
    import paragen

    if plan.on_error not in ("fail", "skip"):
        raise InvalidInputError(f"--on-error is fail or skip, got {plan.on_error!r}")
    if plan.shard_rows < 1 or plan.workers < 1:
        raise InvalidInputError("--shard-rows and --workers must be at least 1")
    if Path(plan.output).resolve() == Path(plan.input).resolve():
        raise InvalidInputError("--output is the --input file: give another path")
    start = time.monotonic()
    with torch_threads(settings.threads):
        # 1. The checks need the tokenizer and the context length: the model, loaded once here.
        #    On Ray it loads on this machine's CPU for that (the actors load their own copies).
        load = settings.load if plan.ray is None else {**settings.load, "device": "cpu", "compile": False}
        model = paragen.load(settings.model, **load)
        draft = paragen.load(settings.draft, **load) if settings.draft else None
        rows, bad = read_rows(plan.input, request_checker(model, draft, settings), settings)
        if bad and plan.on_error == "fail":
            refuse_bad_lines(plan.input, bad)
        for b in bad:
            print(f"paragen: skipped {plan.input} {b}", file=sys.stderr)
        # 2. The rows already done.
        store = ShardStore(plan.output)
        done = store.load({row.id for row in rows})
        for name in store.dropped:
            print(f"paragen: {name} was damaged (a partial write?): removed, its rows are decoded again", file=sys.stderr)
        todo = [row for row in rows if row.id not in done]
        summary = Summary(rows=len(rows), done_before=len(rows) - len(todo), failed=len(bad))
        # 3. Decode the rest.
        if results is None and plan.ray is None:
            decoder = Decoder(settings, model, draft)
            results = lambda todo: local_results(decoder, todo, plan.shard_rows)  # noqa: E731
        elif results is None:
            del model, draft  # the actors hold the models now
            results = lambda todo: ray_results(todo, settings, plan)  # noqa: E731
        _decode_into(store, todo, results, summary, plan)
        # 4. Merge.
        store.finish(rows)
    summary.seconds = time.monotonic() - start
    return summary


def _decode_into(store: ShardStore, todo: list[Row], results: Callable[[list[Row]], Iterable[list[dict[str, Any]]]],
                 summary: Summary, plan: JobPlan) -> None:
    """Write every batch of records as it comes, buffered to ``shard_rows`` per shard; count and show progress."""
    from tqdm import tqdm

    if not todo:
        return
    bar = tqdm(total=len(todo), unit="row", disable=not plan.progress or None, file=sys.stderr, dynamic_ncols=True)
    buffer: list[dict[str, Any]] = []
    seen = set(store.written)  # written or in the buffer: a row that comes back again is counted and dropped
    t0 = time.monotonic()
    try:
        for records in results(todo):
            summary.first_rows = summary.first_rows or time.monotonic() - t0
            fresh = [r for r in records if r["id"] not in seen]
            summary.duplicates += len(records) - len(fresh)
            seen.update(r["id"] for r in fresh)
            buffer += fresh
            for r in fresh:
                summary.tokens += len(r["tokens"])
                summary.target_calls += r["stats"]["target_calls"]
            if len(buffer) >= plan.shard_rows:
                store.write(buffer)
                buffer = []
            bar.update(len(fresh))
            bar.set_postfix_str(f"{summary.tokens / max(time.monotonic() - t0, 1e-9):.0f} tok/s", refresh=False)
        store.write(buffer)
    finally:
        bar.close()
    summary.decoded = len(store.written) - summary.done_before
    missing = len(todo) - summary.decoded
    if missing:
        raise ParagenError(f"{missing} rows came back from no decoder: run the same command again to decode them")


# ---------------------------------------------------------------- the command line


DESCRIPTION = """\
Generate for every row of a JSON Lines file, one object a line:
  {"id": ..., "prompt": "...", optional "max_tokens", "temperature", "seed", "stop"}
and write one line per row, {"id", "text", "tokens", "stats"}, in input order, to --output.
The whole file is checked first (bad lines reported with their numbers). Finished rows are
kept in shards beside the output (OUTPUT.parts/) as the job runs: after a crash or Ctrl-C,
the same command again decodes only the rows not written yet, each row once. Rows decode in
this process, or with --ray on Ray Data actors that each load the model once."""


def add_batch_parser(sub: Any) -> None:
    import argparse

    p = sub.add_parser("batch", help="generate for every prompt of a JSON Lines file (resumable, exactly once)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help='JSON Lines file: {"id": ..., "prompt": "...", optional max_tokens, '
                   "temperature, seed, stop} a line")
    p.add_argument("--output", required=True,
                   help="JSON Lines file written at the end, one line per row in input order; while the job runs, "
                        "finished rows wait in shards in OUTPUT.parts/, which a rerun of the same command resumes from")
    p.add_argument("--model", default="code-target", help="built-in model name or model directory (default: code-target)")
    p.add_argument("--draft", default=None, help="draft model for the strategies that need one")
    p.add_argument("--strategy", default="ar", help="decoding strategy (default: ar)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="strategy option (repeatable)")
    add_model_flags(p)
    p.add_argument("--max-tokens", type=int, default=128, help="new tokens for rows that set no max_tokens (default: 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="for rows that set none (default: 0, greedy)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per generate call, per decoder (default: 16)")
    p.add_argument("--shard-rows", type=int, default=256,
                   help="rows per output shard: the most a crash loses, and the files a job makes (default: 256)")
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                   help="a bad input line: fail (default; the whole file is checked first, nothing is decoded) or skip "
                        "it (reported, counted in the summary)")
    p.add_argument("--ray", default=None, metavar="local|auto|ADDRESS",
                   help="decode on Ray Data actors: local (a Ray instance on this machine, stopped at the end), auto (the "
                        "cluster `ray start` made here), or a cluster address; default: in this process")
    p.add_argument("--workers", type=int, default=None,
                   help="Ray actors, each loading the model once and decoding batches (with --ray; default: 1)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    add_threads_flag(p, DEFAULT_THREADS)
    p.set_defaults(run=run_batch)


def run_batch(args: Any) -> int:
    if args.workers is not None and args.ray is None:
        raise InvalidInputError("--workers sets the Ray actors: add --ray local (this machine) or --ray auto/ADDRESS")
    settings = JobSettings(model=args.model, load=load_kwargs(args), draft=args.draft, strategy=args.strategy,
                           options=parse_options(args.option), max_tokens=args.max_tokens, temperature=args.temperature,
                           batch_size=args.batch_size, threads=args.threads)
    plan = JobPlan(input=args.input, output=args.output, on_error=args.on_error, shard_rows=args.shard_rows, ray=args.ray,
                   workers=args.workers or 1, progress=args.progress)
    try:
        summary = run_job(settings, plan)
    except KeyboardInterrupt:
        print(f"paragen: the rows written so far are kept in {args.output}.parts/: run the same command again to "
              "finish the job", file=sys.stderr)
        raise
    for line in summary.lines():
        print(f"paragen: {line}", file=sys.stderr)
    print(f"paragen: wrote {args.output}", file=sys.stderr)
    return 0
