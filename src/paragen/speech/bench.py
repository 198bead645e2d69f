"""``paragen bench --task speech[:DIR]``: every speech decoder against ``ar`` greedy on the same encoder.

Held-out sets of a ``paragen data speech`` directory (unseen sentences; unseen voice), read
from their WAV files through the transcription path (``load_audio`` then ``log_mel``; the
features are computed once, outside the timing). After a warm-up, each utterance is
decoded by every contender in turn (interleaved, so load drifts hit all alike). Per
contender and set: WER, CER, encoder and decoder calls per utterance, characters per
decoder call, RTF (encoder + decoder seconds / audio seconds), speedup against ``ar`` on
the same utterances (end to end from features, and decoder alone), and ``exact``: the share
of outputs identical to ``ar``'s (to ``ar[ctc_weight=w]``'s, when the run has it, for a
contender with the same ``ctc_weight`` w). Writes bench.json, bench.md and report.html.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from paragen.errors import InvalidInputError
from paragen.speech.api import decode_features, options_for
from paragen.speech.features import load_audio, log_mel
from paragen.speech.metrics import error_rate

SETS = ("heldout", "heldout_voice")
DEFAULT_DATA = "runs/speech-data"
# Each entry is a decoder with its options: NAME or NAME[KEY=VALUE;KEY=VALUE]
DEFAULT_CONTENDERS = ("ar,beam,ctc,ctc[beam=8],ctc_draft,ctc_tree,mask_predict,mask_predict[iterations=10],cass_nat,"
                      "cass_nat[samples=5]")
COLUMNS = ("set", "strategy", "WER", "CER", "exact", "dec calls/utt", "enc calls/utt", "chars/call", "RTF",
           "speedup", "decode speedup")


@dataclass(frozen=True)
class Contender:
    label: str
    strategy: str
    options: Any


def parse_contenders(text: str) -> list[Contender]:
    """``ar,ctc[beam=8],cass_nat[samples=5;rescore=nar]`` -> contenders with checked options; ``ar`` always first."""
    items, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            items.append(cur.strip())
            cur = ""
        else:
            cur += ch
    items.append(cur.strip())
    out = []
    for item in filter(None, items):
        name, _, rest = item.partition("[")
        opts = dict(kv.split("=", 1) for kv in rest.rstrip("]").split(";") if kv) if rest else {}
        out.append(Contender(item, name, options_for(name, opts)))
    if "ar" not in [c.label for c in out]:
        out.insert(0, Contender("ar", "ar", options_for("ar", {})))
    return sorted(out, key=lambda c: c.label != "ar")


def load_sets(directory: Path, limit: int | None) -> dict[str, list[dict]]:
    """Utterances (id, text, seconds, features) of each held-out set, features from the WAV files."""
    if not (directory / "manifest.json").exists():
        raise InvalidInputError(f"{directory} has no held-out speech: build it with `paragen data speech --out {directory}` "
                                "(needs espeak-ng) or pass --task speech:DIR")
    sets = {}
    for name in SETS:
        rows = [json.loads(line) for line in (directory / f"{name}.jsonl").read_text().splitlines()][:limit]
        for r in rows:
            r["features"] = log_mel(load_audio(directory / "wav" / name / f"{r['id']}.wav"))
        sets[name] = rows
    return sets


def exact_reference(contender: Contender, contenders: list[Contender]) -> str:
    """The label of the greedy reference a contender is compared with: ``ar`` with the same
    ``ctc_weight`` if the run has it (``ctc_draft[ctc_weight=w]`` reproduces ``ar[ctc_weight=w]``), else ``ar``."""
    weight = getattr(contender.options, "ctc_weight", 0.0)
    same = [c.label for c in contenders if c.strategy == "ar" and c.options.ctc_weight == weight]
    return same[0] if same else "ar"


def summarize(records: dict[str, dict[str, list[dict]]], rows: list[dict], contenders: list[Contender]) -> list[dict]:
    """One line per set and contender (see the module docstring for the columns)."""
    out = []
    refs = [r["text"] for r in rows]
    ar = records["ar"]
    by_label = {c.label: c for c in contenders}
    for label, recs in records.items():
        same = records[exact_reference(by_label[label], contenders)]
        n = len(recs)
        hyps = [r["text"] for r in recs]
        secs, dsecs = sum(r["seconds"] for r in recs), sum(r["decode_seconds"] for r in recs)
        calls = sum(r["decoder_calls"] for r in recs)
        out.append({
            "strategy": label, "utterances": n, "wer": error_rate(hyps, refs, "word"), "cer": error_rate(hyps, refs, "char"),
            "exact": sum(h == a["text"] for h, a in zip(hyps, same, strict=True)) / n,
            "decoder_calls": sum(r["decoder_calls"] for r in recs) / n,
            "encoder_calls": sum(r["encoder_calls"] for r in recs) / n,
            # None for CTC, which makes no decoder call
            "chars_per_call": sum(r["tokens"] for r in recs) / calls if calls else None,
            "rtf": secs / sum(r["audio_seconds"] for r in recs),
            "speedup": sum(r["seconds"] for r in ar) / secs,
            "decode_speedup": sum(r["decode_seconds"] for r in ar) / max(dsecs, 1e-9),
        })
    return out


def per_call(s: dict) -> str:
    return "-" if s["chars_per_call"] is None else f"{s['chars_per_call']:.1f}"


def table(summary: dict[str, list[dict]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, rows in summary.items():
        for s in rows:
            lines.append(f"| {name} | {s['strategy']} | {s['wer']:.3f} | {s['cer']:.3f} | {s['exact']:.2f} | "
                         f"{s['decoder_calls']:.2f} | {s['encoder_calls']:.2f} | {per_call(s)} | {s['rtf']:.4f} | "
                         f"{s['speedup']:.1f}x | {s['decode_speedup']:.1f}x |")
    return "\n".join(lines)


def plot(summary: dict[str, list[dict]]) -> str:
    """WER against speedup over ar, one panel per held-out set (a base64 PNG)."""
    from matplotlib.figure import Figure

    from paragen.bench.report import _png

    fig = Figure(figsize=(5.5 * len(summary), 4))
    for k, (name, rows) in enumerate(summary.items()):
        ax = fig.add_subplot(1, len(summary), k + 1)
        for i, s in enumerate(rows):
            ax.scatter([s["speedup"]], [s["wer"]], color=f"C{i % 10}", label=s["strategy"])
        ax.set_xscale("log")
        ax.set_xlabel("speedup over ar greedy (encoder + decoder, log scale)")
        ax.set_ylabel("WER")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig)


def html_report(bench: dict, summary: dict[str, list[dict]]) -> str:
    import html

    from paragen.bench.report import _html_table

    rows = [[name, s["strategy"], f"{s['wer']:.3f}", f"{s['cer']:.3f}", f"{s['exact']:.2f}", f"{s['decoder_calls']:.2f}",
             f"{s['encoder_calls']:.2f}", per_call(s), f"{s['rtf']:.4f}", f"{s['speedup']:.1f}x",
             f"{s['decode_speedup']:.1f}x"] for name, rs in summary.items() for s in rs]
    env = bench["environment"]
    return (f"<!doctype html><meta charset=utf-8><title>paragen speech bench</title><body style='font-family:sans-serif'>"
            f"<h1>Speech decoders against ar greedy</h1><p>{html.escape(' '.join(env['command']))}<br>model "
            f"{html.escape(bench['model'])}, {env['torch_threads']} thread(s), {html.escape(env['platform'])}; "
            f"{bench['seconds']:.0f} s</p>{_html_table(COLUMNS, rows)}"
            f"<p>speedup: ar's encoder + decoder seconds over the contender's on the same utterances; decode speedup: "
            f"the decoder alone (the encoder is shared). exact: share of outputs identical to ar greedy (with the same "
            f"ctc_weight, when the run has it). RTF: seconds per second of audio (features excluded). Timings are only as "
            f"quiet as the machine was.</p>"
            f"<img src='data:image/png;base64,{plot(summary)}'></body>")


def run_speech_bench(model_name: str, data: str, contenders_text: str, limit: int | None, out: Path, threads: int,
                     progress: bool = True, argv: list[str] | None = None) -> dict:
    """Run the speech benchmark and write bench.json, bench.md and report.html into ``out``."""
    import paragen
    from paragen.bench.report import write_atomic
    from paragen.threads import torch_threads

    contenders = parse_contenders(contenders_text)
    t_start = time.time()
    with torch_threads(threads):
        model = paragen.load(model_name)
        sets = load_sets(Path(data), limit)
        first = sets[SETS[0]][0]["features"]
        for c in contenders:  # warm-up
            decode_features(model, first, c.strategy, c.options)
        records: dict[str, dict[str, list[dict]]] = {}
        for name, rows in sets.items():
            records[name] = {c.label: [] for c in contenders}
            for r in tqdm(rows, desc=name, disable=not progress, dynamic_ncols=True):
                for c in contenders:
                    t = decode_features(model, r["features"], c.strategy, c.options, audio_seconds=r["seconds"])
                    records[name][c.label].append({"id": r["id"], "text": t.text, **t.stats.to_dict()})
    summary = {name: summarize(records[name], sets[name], contenders) for name in sets}
    bench = {
        "model": model_name, "data": data, "seconds": time.time() - t_start,
        "environment": {"command": argv or sys.argv, "torch_threads": threads, "platform": platform.platform(),
                        "torch": torch.__version__, "quiet": "unknown: timings are as quiet as the machine was"},
        "summary": summary, "records": records,
    }
    write_atomic(out / "bench.json", json.dumps(bench, indent=1) + "\n")
    write_atomic(out / "bench.md", f"# speech bench\n\n`{' '.join(bench['environment']['command'])}`\n\n{table(summary)}\n")
    write_atomic(out / "report.html", html_report(bench, summary))
    return bench
