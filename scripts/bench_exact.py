"""Every row of several ``paragen bench`` runs against the first run's ``ar`` outputs, prompt by
prompt (each run's own ``exact`` column compares with its own ``ar``; this compares across runs,
e.g. the llamacpp backend's f32 and f16 runs against native ``ar``).

    python scripts/bench_exact.py out/llamacpp-native out/llamacpp-f32 out/llamacpp-f16
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path


def main(dirs: list[str]) -> None:
    runs = [json.loads((Path(d) / "bench.json").read_text()) for d in dirs]
    reference = {r["task_id"]: r["tokens"] for r in runs[0]["records"] if r["strategy"] == "ar"}
    print(f"| run | strategy | outputs equal to {dirs[0]}'s ar |")
    print("|---|---|---|")
    for d, run in zip(dirs, runs):
        same: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in run["records"]:
            same[r["strategy"]][0] += r["tokens"] == reference[r["task_id"]]
            same[r["strategy"]][1] += 1
        for name, (equal, n) in same.items():
            print(f"| {d} | {name} | {equal}/{n} |")


if __name__ == "__main__":
    main(sys.argv[1:])
