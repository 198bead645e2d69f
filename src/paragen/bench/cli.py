"""``paragen bench`` (placeholder wiring; the benchmark itself is being built)."""

from __future__ import annotations

import argparse


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("bench", help="benchmark strategies against ar (not built yet)")


def run_bench(args: argparse.Namespace) -> int:
    raise SystemExit("paragen bench: not built yet")
