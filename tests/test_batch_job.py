"""paragen batch in this process: output equal to generate, bad lines, resuming exactly once.

The model is the tiny saved model of ``conftest.model_dir``; expected texts come from
``paragen.generate`` on one prompt at a time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import paragen
from paragen.batch import JobPlan, JobSettings, run_job
from paragen.cli import main
from paragen.errors import InvalidInputError

PROMPTS = ["def add(a, b):\n    ", "class Point:\n", "for i in range(10):\n", "import os\n", "def sub(a, b):"]


@pytest.fixture(scope="module")
def model(model_dir):
    return paragen.load(model_dir)


def write_rows(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def rows_of(n: int) -> list[dict]:
    """n rows with varied prompts and budgets (several generate groups), string and integer ids."""
    return [{"id": f"r{i}" if i % 3 else i, "prompt": PROMPTS[i % len(PROMPTS)] + "x" * (i % 4),
             "max_tokens": 6 + i % 3} for i in range(n)]


def read_output(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected(model, row: dict) -> str:
    return paragen.generate(model, row["prompt"], max_new_tokens=row["max_tokens"]).text


def job(model_dir, tmp_path, rows, **plan) -> tuple[JobPlan, JobSettings]:
    inp = write_rows(tmp_path / "in.jsonl", rows)
    settings = JobSettings(model=str(model_dir), batch_size=8)
    return JobPlan(input=str(inp), output=str(tmp_path / "out.jsonl"), progress=False, **plan), settings


def test_batch_equals_generate_alone_in_input_order(model, model_dir, tmp_path):
    rows = rows_of(40)
    plan, settings = job(model_dir, tmp_path, rows, shard_rows=16)
    summary = run_job(settings, plan)
    out = read_output(Path(plan.output))
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    assert [r["text"] for r in out] == [expected(model, r) for r in rows]
    assert summary.decoded == summary.rows == 40 and summary.failed == summary.done_before == 0
    assert summary.tokens == sum(len(r["tokens"]) for r in out) and summary.target_calls > 0
    assert not Path(plan.output + ".parts").exists()  # merged, shards gone


def test_seeded_sampled_rows_equal_generate_with_their_seed(model, model_dir, tmp_path):
    rows = [{"id": i, "prompt": PROMPTS[i % 5], "max_tokens": 8, "temperature": 0.9, "seed": 100 + i} for i in range(6)]
    plan, settings = job(model_dir, tmp_path, rows)
    run_job(settings, plan)
    for row, out in zip(rows, read_output(Path(plan.output))):
        alone = paragen.generate(model, row["prompt"], max_new_tokens=8, temperature=0.9, seed=row["seed"])
        assert out["text"] == alone.text


def test_bad_lines_are_reported_with_line_numbers_and_nothing_is_written(model_dir, tmp_path):
    rows = [{"id": 1, "prompt": "def f():"}, "{not json", {"id": 2}, {"id": 1, "prompt": "again"},
            {"id": 3, "prompt": "x = 1\n" * 300}, {"id": 4, "prompt": "ok", "max_tokens": "8"}, "[1, 2]",
            {"id": 5, "prompt": ""}, {"id": 6, "prompt": "def g():", "colour": "red"}, {"id": 7, "prompt": "fine"},
            {"id": 8, "prompt": "x", "max_tokens": 0}, {"id": 9, "prompt": "x", "temperature": -1}]
    plan, settings = job(model_dir, tmp_path, rows)
    with pytest.raises(InvalidInputError) as e:
        run_job(settings, plan)
    message = str(e.value)
    for line, words in ((2, "not valid JSON"), (3, '"prompt"'), (4, "duplicate id 1 (first on line 1)"),
                        (5, "exceeds the model context"), (6, '"max_tokens" must be'), (7, "JSON object"),
                        (8, "empty"), (9, "unknown field(s) colour"), (11, "max_new_tokens must be a positive"),
                        (12, "temperature")):
        assert f"line {line}: " in message and words in message.split(f"line {line}: ")[1].split("\n")[0], (line, message)
    assert "10 bad line(s)" in message and "line 1:" not in message and "line 10:" not in message
    assert not Path(plan.output).exists() and not Path(plan.output + ".parts").exists()


def test_on_error_skip_decodes_the_good_rows(model, model_dir, tmp_path, capsys):
    rows = [{"id": "a", "prompt": "def f():", "max_tokens": 5}, "{oops", {"id": "b", "prompt": "x = ", "max_tokens": 5}]
    plan, settings = job(model_dir, tmp_path, rows, on_error="skip")
    summary = run_job(settings, plan)
    assert [r["id"] for r in read_output(Path(plan.output))] == ["a", "b"]
    assert summary.failed == 1 and summary.decoded == 2
    assert "line 2: not valid JSON" in capsys.readouterr().err


class Crash(Exception):
    pass


def test_crash_then_rerun_resumes_exactly_once_and_redoes_a_damaged_shard(model, model_dir, tmp_path):
    from paragen.batch import Decoder, local_results

    rows = rows_of(30)
    plan, settings = job(model_dir, tmp_path, rows, shard_rows=8)
    decoder = Decoder(settings, model)

    def crashing(todo):  # the job dies after its third batch of records: two shards written, one in the buffer
        for i, records in enumerate(local_results(decoder, todo, 4)):
            if i == 5:
                raise Crash
            yield records

    with pytest.raises(Crash):
        run_job(settings, plan, results=crashing)
    parts = sorted(Path(plan.output + ".parts").glob("part-*.jsonl"))
    assert len(parts) == 2 and not Path(plan.output).exists()
    # the last shard loses its tail (a disk that lost a write); a temporary file lies beside it
    parts[-1].write_text(parts[-1].read_text()[:-20])
    (parts[-1].parent / ".part-00002.jsonl.123.tmp").write_text('{"id": "half')
    summary = run_job(settings, plan)
    out = read_output(Path(plan.output))
    assert [r["id"] for r in out] == [r["id"] for r in rows]  # each id once, in order
    assert [r["text"] for r in out] == [expected(model, r) for r in rows]
    assert summary.done_before == 8 and summary.decoded == 22
    # a third run finds everything done
    assert run_job(settings, plan).decoded == 0 and read_output(Path(plan.output)) == out


def test_a_stop_between_merge_and_shard_removal_is_resumed(model_dir, tmp_path):
    plan, settings = job(model_dir, tmp_path, rows_of(12), shard_rows=4)
    run_job(settings, plan)
    out = Path(plan.output).read_text()
    parts = Path(plan.output + ".parts")
    parts.mkdir()  # the shards, as they were just before the merge removed them
    lines = out.splitlines(keepends=True)
    for i in range(3):
        (parts / f"part-{i:05d}.jsonl").write_text("".join(lines[4 * i:4 * i + 4]))
    assert run_job(settings, plan).decoded == 0
    assert Path(plan.output).read_text() == out and not parts.exists()


def test_output_of_another_input_is_refused(model_dir, tmp_path):
    plan, settings = job(model_dir, tmp_path, rows_of(4))
    run_job(settings, plan)
    write_rows(Path(plan.input), [{"id": "other", "prompt": "x"}])
    with pytest.raises(InvalidInputError, match="ids that --input does not have"):
        run_job(settings, plan)


@pytest.mark.slow
def test_killed_command_rerun_completes_without_duplicates(model, model_dir, tmp_path):
    """SIGKILL the `paragen batch` process once its first shard is on disk; the same command again completes."""
    rows = [{"id": i, "prompt": PROMPTS[i % 5], "max_tokens": 24} for i in range(300)]
    inp, out = write_rows(tmp_path / "in.jsonl", rows), tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "paragen", "batch", "--input", str(inp), "--output", str(out), "--model", str(model_dir),
           "--shard-rows", "16", "--batch-size", "4", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(Path(paragen.__file__).parents[1])}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)
    parts = tmp_path / "out.jsonl.parts"
    deadline = time.monotonic() + 60
    while not list(parts.glob("part-*.jsonl")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert not out.exists(), "the job finished before it was killed: make it longer"
    before = len(list(parts.glob("part-*.jsonl")))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = read_output(out)
    assert [r["id"] for r in got] == list(range(300))
    assert f"{before * 16} done before" in done.stderr
    for r in got[::37]:
        assert r["text"] == paragen.generate(model, PROMPTS[r["id"] % 5], max_new_tokens=24).text


def test_cli_batch_prints_a_summary(model_dir, tmp_path, capsys):
    inp = write_rows(tmp_path / "in.jsonl", rows_of(5))
    out = tmp_path / "out.jsonl"
    assert main(["batch", "--input", str(inp), "--output", str(out), "--model", str(model_dir), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "rows: 5 (0 done before, 5 decoded now" in err and "tokens per call" in err
    assert main(["batch", "--input", str(inp), "--output", str(out), "--workers", "2"]) == 2
    assert "--workers sets the Ray actors" in capsys.readouterr().err
