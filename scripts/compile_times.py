"""Cold and warm start of the compiled step (issue 32): two fresh processes, one after the other,
each loading code-target and code-draft with ``compile=True`` and compiling, before any
decode, the graphs a decode of up to ``--tokens`` per call on ``--rows`` rows runs
(``NativeModel.warm_up``). The first process starts on an empty compile cache directory; the
second finds the first's compiles there (torch's on-disk FX graph and AOTAutograd caches), as
a second ``paragen`` run on the same machine does by default (torch keeps them under
``/tmp/torchinductor_$USER``; ``TORCHINDUCTOR_CACHE_DIR`` moves them).

    PYTHONPATH=src python scripts/compile_times.py [--tokens 17] [--rows 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def child(tokens: int, rows: int, threads: int) -> None:
    import torch
    from torch._dynamo.utils import counters

    import paragen

    torch.set_num_threads(threads)
    start = time.perf_counter()
    models = [paragen.load(name, compile=True) for name in ("code-target", "code-draft")]
    loaded = time.perf_counter()
    calls = sum(m.warm_up(tokens, rows) for m in models)
    done = time.perf_counter()
    print(json.dumps({"load_s": round(loaded - start, 2), "warm_up_s": round(done - loaded, 2), "calls": calls,
                      "graphs": counters["stats"]["unique_graphs"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=17, help="most tokens per call (default: 17, tree's and eagle's)")
    ap.add_argument("--rows", type=int, default=1, help="rows per call (default: 1)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.tokens, args.rows, args.threads)
        return
    with tempfile.TemporaryDirectory(prefix="paragen-compile-cache-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        cmd = [sys.executable, __file__, "--child", "--tokens", str(args.tokens), "--rows", str(args.rows),
               "--threads", str(args.threads)]
        for label in ("cold", "warm"):
            start = time.perf_counter()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            print(f"{label}: {json.loads(out)} process {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
