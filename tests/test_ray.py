"""paragen on Ray: ``batch --ray`` on Ray Data actors, ``serve --replicas`` on Ray Serve, and
what happens when a worker dies.

One local Ray instance for the module (``ray.init(num_cpus=2)`` on 127.0.0.1, no
dashboard); a watchdog ends the test process, and Ray's processes with it, if the module
runs past ``WATCHDOG_SECONDS``. Expected texts come from ``paragen.generate`` on the tiny
saved model of ``conftest.model_dir``.
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import paragen
from paragen.batch import JobPlan, JobSettings, run_job
from paragen.cli import main

ray = pytest.importorskip("ray")
# slow: a Ray instance and its workers start (see the times printed with -s); Ray and its pydantic models warn of
# their own deprecations, not paragen's
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

WATCHDOG_SECONDS = 600
PROMPTS = ["def add(a, b):\n    ", "class Point:\n", "for i in range(10):\n", "import os\n", "def sub(a, b):"]


@pytest.fixture(scope="module")
def cluster():
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)  # a hung test ends the process, and Ray with it
    t0 = time.monotonic()
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", configure_logging=False)
    print(f"\nlocal Ray instance started in {time.monotonic() - t0:.1f} s")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def model(model_dir):
    return paragen.load(model_dir)


# ---------------------------------------------------------------- batch


def write_rows(path: Path, n: int, max_tokens: int = 16) -> Path:
    path.write_text("".join(json.dumps({"id": i if i % 2 else f"s{i}", "prompt": PROMPTS[i % 5] + " " * (i % 3),
                                        "max_tokens": max_tokens}) + "\n" for i in range(n)))
    return path


def check_output(path: Path, rows: Path, model) -> list[dict]:
    """Every input id once, in input order, each text equal to generate alone (greedy)."""
    want = [json.loads(line) for line in rows.read_text().splitlines()]
    got = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in got] == [r["id"] for r in want]
    alone: dict[tuple[str, int], str] = {}
    for w, g in zip(want, got):
        key = (w["prompt"], w["max_tokens"])
        if key not in alone:
            alone[key] = paragen.generate(model, w["prompt"], max_new_tokens=w["max_tokens"]).text
        assert g["text"] == alone[key], w["id"]
    return got


def test_batch_on_two_actors_equals_generate_and_in_process(cluster, model, model_dir, tmp_path):
    rows = write_rows(tmp_path / "in.jsonl", 500)
    settings = JobSettings(model=str(model_dir))
    t0 = time.monotonic()
    summary = run_job(settings, JobPlan(str(rows), str(tmp_path / "ray.jsonl"), ray="local", workers=2, progress=False))
    print(f"\n500 rows on 2 actors: {time.monotonic() - t0:.1f} s, {summary.duplicates} duplicates dropped")
    on_ray = check_output(tmp_path / "ray.jsonl", rows, model)
    assert summary.decoded == 500 and summary.duplicates == 0
    run_job(settings, JobPlan(str(rows), str(tmp_path / "here.jsonl"), progress=False))
    here = [json.loads(line) for line in (tmp_path / "here.jsonl").read_text().splitlines()]
    assert [(r["id"], r["text"], r["tokens"]) for r in on_ray] == [(r["id"], r["text"], r["tokens"]) for r in here]


def actor_pids() -> list[int]:
    """Processes of the batch's actors (Ray titles an actor process ray::<its class>)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and b"RowDecoder" in (d / "cmdline").read_bytes():
                pids.append(int(d.name))
        except OSError:
            continue
    return pids


def test_batch_survives_a_killed_actor(cluster, model, model_dir, tmp_path):
    rows = write_rows(tmp_path / "in.jsonl", 400, max_tokens=48)
    out = tmp_path / "out.jsonl"
    plan = JobPlan(str(rows), str(out), ray="local", workers=2, shard_rows=16, progress=False)
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(summary=run_job(JobSettings(model=str(model_dir)), plan)))
    job.start()
    deadline = time.monotonic() + 120
    while not list(Path(f"{out}.parts").glob("part-*.jsonl")) and time.monotonic() < deadline and job.is_alive():
        time.sleep(0.05)
    before = actor_pids()
    assert job.is_alive() and before, "the job ended before an actor could be killed: make it longer"
    os.kill(before[0], signal.SIGKILL)
    job.join(180)
    assert not job.is_alive() and "summary" in result
    summary = result["summary"]
    print(f"\nkilled actor {before[0]} of {before}: {summary.decoded} rows decoded, {summary.duplicates} duplicates dropped")
    check_output(out, rows, model)


def test_killed_batch_command_rerun_completes_once(cluster, model, model_dir, tmp_path):
    """SIGKILL `paragen batch --ray ADDRESS` once a shard is written; the same job with --ray local completes it."""
    rows = write_rows(tmp_path / "in.jsonl", 300, max_tokens=48)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "paragen", "batch", "--input", str(rows), "--output", str(out), "--model",
           str(model_dir), "--workers", "2", "--shard-rows", "16", "--no-progress", "--ray"]
    env = {**os.environ, "PYTHONPATH": str(Path(paragen.__file__).parents[1])}
    proc = subprocess.Popen([*cmd, cluster], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(Path(f"{out}.parts").glob("part-*.jsonl")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait(30)
    assert not out.exists(), "the job finished before it was killed: make it longer"
    shards = len(list(Path(f"{out}.parts").glob("part-*.jsonl")))
    t0 = time.monotonic()
    rerun = subprocess.run([*cmd, "local"], env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    print(f"\nkilled after {shards} shards; rerun with --ray local (its own Ray instance): {time.monotonic() - t0:.1f} s")
    assert f"{shards * 16} done before" in rerun.stderr
    check_output(out, rows, model)


# ---------------------------------------------------------------- serve


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(cluster, model_dir):
    from ray import serve

    from paragen.cluster.serve import ReplicaSpec, Scaling, deploy
    from paragen.serve.app import ServeConfig

    spec = ReplicaSpec(model=str(model_dir), config=ServeConfig(max_tokens=128))
    t0 = time.monotonic()
    url = deploy(spec, Scaling(replicas=2), "127.0.0.1", free_port())
    print(f"\nRay Serve with 2 replicas up in {time.monotonic() - t0:.1f} s")
    yield url, spec
    serve.shutdown()


def client(url: str):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=30)


@pytest.mark.parametrize("settings", [dict(temperature=0.0), dict(temperature=0.9, seed=5, top_p=0.9)])
def test_replicas_answer_as_generate(served, model, settings):
    url, _ = served
    c = client(url)
    prompt = PROMPTS[0]
    whole = c.completions.create(model=model.name, prompt=prompt, max_tokens=24, **settings)
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(model=model.name, prompt=prompt, max_tokens=24,
                                                                          stream=True, **settings) if ch.choices)
    want = paragen.generate(model, prompt, max_new_tokens=24, **settings).text
    assert whole.choices[0].text == streamed == want


def complete_once(url: str, model_name: str, prompt: str, max_tokens: int, stream: bool = True) -> tuple[str, str]:
    """One completion, streamed or whole: (replica, text); raises on any error or an unfinished stream."""
    raw = client(url).completions.with_raw_response.create(model=model_name, prompt=prompt, max_tokens=max_tokens,
                                                           stream=stream, temperature=0)
    if not stream:
        return raw.headers["x-paragen-replica"], raw.parse().choices[0].text
    chunks = list(raw.parse())
    if not chunks or chunks[-1].choices[0].finish_reason is None:
        raise RuntimeError("the stream ended before its last chunk")
    return raw.headers["x-paragen-replica"], "".join(ch.choices[0].text for ch in chunks)


def test_sixteen_streams_spread_over_both_replicas(served, model):
    url, _ = served
    prompts = [PROMPTS[i % 5] for i in range(16)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda p: complete_once(url, model.name, p, 64), prompts))
    for p, (_, text) in zip(prompts, results):
        assert text == paragen.generate(model, p, max_new_tokens=64).text
    replicas = {r for r, _ in results}
    print(f"\n16 streams over replicas: { {r: sum(x == r for x, _ in results) for r in replicas} }")
    assert len(replicas) == 2


def test_a_second_app_with_other_settings_is_refused(served):
    from paragen.cluster.serve import refuse_running
    from paragen.errors import ParagenError
    from paragen.serve.app import ServeConfig

    _, spec = served
    other = type(spec)(model=spec.model, config=ServeConfig(max_tokens=128, max_batch=8))
    with pytest.raises(ParagenError, match="settings differ \\(max_batch: 16 there, 8 here\\)"):
        refuse_running(other)
    with pytest.raises(ParagenError, match="with the same settings"):
        refuse_running(spec)


def test_killed_replica_fails_its_requests_cleanly_and_comes_back(served, model):
    """16 clients (8 streaming, 8 not) ask back to back; one replica's process is SIGKILLed mid-load. Every
    request completes with its own text or fails with an error, none hangs past the client's
    30 s, none gets other text; Ray restarts the replica and it serves again."""
    url, _ = served
    expected = {p: paragen.generate(model, p, max_new_tokens=96).text for p in PROMPTS}
    outcomes = {"ok": 0, "error": 0, "wrong": 0}
    errors: dict[str, int] = {}
    seen: set[str] = set()
    stop = threading.Event()
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        while not stop.is_set():
            prompt = PROMPTS[i % 5]
            t0 = time.monotonic()
            try:
                replica, text = complete_once(url, model.name, prompt, 96, stream=i % 2 == 0)
                kind = "ok" if text == expected[prompt] else "wrong"
            except Exception as e:  # noqa: BLE001 - every failure is counted, by kind
                replica, kind = None, "error"
                why = f"{'stream' if i % 2 == 0 else 'whole'} {type(e).__name__}: {str(e)[:60]}"
                with lock:
                    errors[why] = errors.get(why, 0) + 1
            assert time.monotonic() - t0 < 31
            with lock:
                outcomes[kind] += 1
                if replica:
                    seen.add(replica)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    time.sleep(3)
    with lock:
        initial = {r.split("@")[0] for r in seen}
        victim = sorted(seen)[0]
    os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
    killed_at = time.monotonic()
    while time.monotonic() < killed_at + 90:  # until a replica Ray started since answers
        with lock:
            if {r.split("@")[0] for r in seen} - initial:
                break
        time.sleep(0.5)
    back_after = time.monotonic() - killed_at
    time.sleep(2)
    stop.set()
    for t in threads:
        t.join(40)
    assert not any(t.is_alive() for t in threads), "a client hung"
    print(f"\nkilled {victim}; outcomes {outcomes}; errors {errors}; replicas seen {sorted(seen)}; "
          f"a new replica answered {back_after:.1f} s after the kill")
    assert outcomes["wrong"] == 0 and outcomes["ok"] > 0
    assert len(initial) == 2 and {r.split("@")[0] for r in seen} - initial, "no replacement replica answered"


# ---------------------------------------------------------------- flags, no cluster needed


@pytest.mark.parametrize("argv,words", [
    (["--replicas", "2", "--min-replicas", "1", "--max-replicas", "2"], "not both"),
    (["--min-replicas", "1"], "needs both"),
    (["--ray", "local"], "add --replicas"),
    (["--replicas", "0"], "at least 1"),
    (["--replicas", "2", "--port", "0"], "fixed --port"),
])
def test_replica_flags_are_checked(argv, words, capsys):
    assert main(["serve", *argv]) == 2
    assert words in capsys.readouterr().err
