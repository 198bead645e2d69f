"""The ``paragen`` command line."""

from __future__ import annotations

import argparse
import sys

from paragen.errors import ParagenError


def build_parser() -> argparse.ArgumentParser:
    from paragen.train.cli import add_train_parser

    p = argparse.ArgumentParser(prog="paragen", description="Fast parallel decoding of generative sequence models.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from paragen.train.cli import run_train

            return run_train(args)
    except (ParagenError, FileNotFoundError) as e:
        print(f"paragen: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
