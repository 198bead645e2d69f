"""A trace in the terminal: the completion with each call's committed span coloured, and one
summary line per call on demand (``paragen generate --show [--show-calls]``, ``paragen trace print``).

Colours (ANSI backgrounds): green, a proposal the verifier accepted; blue, the target's bonus
token after a fully accepted proposal; yellow, the target's correction of a rejected one;
magenta, tokens filled in parallel (diffusion, NAR); none, the target's own token when
nothing was proposed. Without colour (``NO_COLOR`` set, https://no-color.org, or output that
is not a terminal) each call's span is bracketed instead, its proposal and the target's token
split by ``|``: ``[def fib|(]`` is "def fib" accepted, then "(" from the target.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from paragen.trace import TREE_KINDS as TREE
from paragen.trace import Call, Trace

STYLE = {"acc": "\x1b[42;30m", "bonus": "\x1b[44;97m", "corrected": "\x1b[43;30m", "nar": "\x1b[45;97m", "own": ""}
RESET = "\x1b[0m"


def use_color(stream: TextIO) -> bool:
    """Colour only for a terminal, and never when NO_COLOR is set (to anything non-empty)."""
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def spans(trace: Trace, call: Call) -> list[tuple[str, str]]:
    """(style, text) pieces of one call's kept tokens: its accepted proposal, then the target's token."""
    piece = lambda t: trace.pieces.get(t, f"<{t}>")  # noqa: E731
    kept = call.committed[: call.kept]
    if call.kind not in TREE:
        return [("nar", "".join(map(piece, kept)))] if kept else []
    a = min(len(call.accepted), len(kept))
    out = [("acc", "".join(map(piece, kept[:a])))] if a else []
    if len(kept) > a:
        out.append((call.own, "".join(map(piece, kept[a:]))))
    return out


def completion(trace: Trace, color: bool) -> str:
    """The completion, each call's span coloured (or bracketed without colour)."""
    out = []
    for call in trace.calls:
        parts = spans(trace, call)
        if not parts:
            continue
        if color:
            out.extend(f"{STYLE[s]}{text}{RESET}" if STYLE[s] else text for s, text in parts)
        else:
            out.append("[" + "|".join(text for _, text in parts) + "]")
    return "".join(out)


def legend(color: bool) -> str:
    if not color:
        return "each call's span in [ ]: its accepted proposal | the target's own token"
    names = (("acc", "accepted proposal"), ("bonus", "target's bonus"), ("corrected", "target's correction"),
             ("nar", "filled in parallel"))
    return "  ".join(f"{STYLE[s]} {name} {RESET}" for s, name in names) + "  plain: target's own token"


def call_line(trace: Trace, i: int, call: Call) -> str:
    """One summary line: what was proposed, what was accepted, what was kept, and the time split."""
    text = "".join(trace.pieces.get(t, f"<{t}>") for t in call.committed[: call.kept])
    what = f"{call.kind}/{call.source}"
    if call.kind in TREE:
        dec = call.decisions()
        verdict = (f"{len(call.tokens):3d} proposed {len(call.accepted):3d} accepted {dec.count('rejected'):3d} rejected"
                   f" +{call.own}" if call.tokens else f"{'':36s} {call.own}")
    else:
        verdict = f"{len(call.tokens):3d} predicted {len(call.accepted):3d} unmasked{'':12s}"
    ms = lambda s: f"{1000 * s:6.2f}"  # noqa: E731
    return (f"{i + 1:5d}  {what:<16s} {verdict}  kept {call.kept:2d} {text!r:<24s} "
            f"draft {ms(call.draft_s)} verify {ms(call.verify_s)} other {ms(call.other_s)} ms")


def show(trace: Trace, stream: TextIO, calls: bool = False, color: bool | None = None) -> None:
    """Print the coloured completion (after the prompt's last line, dimmed), then per-call lines."""
    color = use_color(stream) if color is None else color
    print(legend(color), file=stream)
    tail = trace.prompt_text.rsplit("\n", 1)[-1] if trace.prompt_text else ""
    print((f"\x1b[2m{tail}{RESET}" if color else tail) + completion(trace, color), file=stream)
    if calls:
        print(f"{'call':>5s}  {'kind/source':<16s} decisions", file=stream)
        for i, call in enumerate(trace.calls):
            print(call_line(trace, i, call), file=stream)


# ---------------------------------------------------------------- `paragen trace`


def add_trace_parser(sub) -> None:
    p = sub.add_parser("trace", help="show a saved decoding trace: as an HTML page, or in the terminal",
                       description="Show a trace written by `paragen generate --trace-json FILE` (or Trace.save).")
    tsub = p.add_subparsers(dest="trace_command", required=True, metavar="ACTION")
    page = tsub.add_parser("show", help="write the trace's self-contained HTML page (no network needed to open it)")
    page.add_argument("file", help="trace JSON file")
    page.add_argument("-o", "--out", default=None, help="the page to write (default: FILE with .html)")
    term = tsub.add_parser("print", help="print the completion coloured by call (NO_COLOR: bracketed)")
    term.add_argument("file", help="trace JSON file")
    term.add_argument("--calls", action="store_true", help="one summary line per call")
    p.set_defaults(run=run_trace)


def run_trace(args, stream: TextIO | None = None) -> int:
    """``paragen trace show|print``; the text goes to ``stream`` (standard output by default)."""
    from pathlib import Path

    from paragen.trace_html import write

    stream = stream or sys.stdout
    trace = Trace.load(args.file)
    if args.trace_command == "print":
        show(trace, stream, calls=args.calls)
        return 0
    out = Path(args.out) if args.out else Path(args.file).with_suffix(".html")
    write(trace, out)
    print(f"wrote {out} ({len(trace.calls)} calls)", file=stream)
    return 0
