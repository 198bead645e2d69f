"""The speech commands: ``paragen data speech``, ``paragen train speech``, ``paragen transcribe``.

The top-level parser (``paragen.cli``, and ``paragen.train.cli`` for ``train speech``) registers
them with the ``add_*`` functions here; each registers its ``run_*`` function (``set_defaults``).
"""

from __future__ import annotations

import argparse
import sys

from paragen.flags import add_threads_flag, command_threads, options_help, parse_options
from paragen.threads import DEFAULT_THREADS
from paragen.train.flags import add_config_flags, add_stop_at, config_from_args, train_or_resume_hint


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    """``paragen data speech``."""
    from paragen.speech.data import SpeechDataConfig

    p = sub.add_parser("data", help="build a data set (speech: synthesised with espeak-ng)",
                       description="Build a data set for paragen's own models.")
    dsub = p.add_subparsers(dest="what", required=True, metavar="{speech,speech-distill}")
    s = dsub.add_parser(
        "speech", help="synthesise an English speech corpus with espeak-ng",
        description="Speak standard-library docstring and comment sentences with espeak-ng (needs the espeak-ng "
        "program: apt-get install espeak-ng) in several voices, rates and pitches; write 16 kHz log-mel features, "
        "manifests and held-out WAVs. Held-out sets: unseen sentences (files held out as in the LM corpus) in the "
        "training voices, and the same sentences in an unseen voice. Written atomically.",
    )
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_flags(s, SpeechDataConfig, skip={"out"})
    s.set_defaults(run=run_data)
    d = dsub.add_parser(
        "speech-distill", help="write an AR teacher's transcripts of a speech data set's training audio",
        description="Transcribe the training split of a `paragen data speech` directory with a teacher model and "
        "strategy into DATA/train.teacher.jsonl, the targets of sequence-level knowledge distillation "
        "(`paragen train speech --distill`). Resumable: a stopped run goes on where it stopped, and each "
        "utterance is written once.",
        epilog=decoder_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("--data", required=True, help="directory from `paragen data speech`")
    d.add_argument("--teacher", default="speech-en", help="built-in speech model or directory (default: speech-en)")
    d.add_argument("--strategy", default="ar", help="the teacher's decoder (default: ar)")
    d.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="decoder option (repeatable)")
    d.add_argument("--batch", type=int, default=32, help="utterances per decoder batch (default: 32)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_flag(d, DEFAULT_THREADS)
    d.set_defaults(run=run_distill)


def run_data(args: argparse.Namespace) -> int:
    """Build the speech corpus and print its size."""
    from paragen.speech.data import SpeechDataConfig, build_speech_data

    cfg = config_from_args(SpeechDataConfig, args)
    m = build_speech_data(cfg, progress=not args.quiet, command="paragen " + " ".join(sys.argv[1:]))
    sizes = ", ".join(f"{k} {v['utterances']} utterances ({v['hours'] * 60:.0f} min)" for k, v in m["splits"].items())
    print(f"{cfg.out}: {sizes}")
    return 0


def run_distill(args: argparse.Namespace) -> int:
    """Write the teacher's transcripts and say where."""
    from paragen.loading import load
    from paragen.speech.distill import distill_speech

    with command_threads(args):
        teacher = load(args.teacher)
        path = distill_speech(args.data, teacher, args.teacher, args.strategy, parse_options(args.option), args.batch,
                              progress=not args.quiet)
    print(f"{path}: the teacher's transcripts ({args.teacher}, {args.strategy})")
    return 0


def decoder_help() -> str:
    """Every speech strategy, its guarantee and its options, for --help."""
    from paragen.speech.decode import DECODERS

    lines = ["strategies (-o KEY=VALUE for options):"]
    for name, cls in DECODERS.items():
        lines.append(f"  {name:<14}{cls.summary}{'' if cls.lossless else ' [lossy]'}")
        lines += options_help(cls)
    return "\n".join(lines)


def add_transcribe_parser(sub: argparse._SubParsersAction) -> None:
    """``paragen transcribe``."""
    p = sub.add_parser(
        "transcribe", help="transcribe speech (WAV, FLAC, OGG...) with an AR or NAR decoder",
        description="Transcribe audio files with a speech model (default: the built-in speech-en) and a decoder; "
        "print one line of text per file (FILE: text when there are several). Any sample rate is resampled to "
        "16 kHz; stereo is mixed to mono; at most 30 s per file.",
        epilog=decoder_help(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files, or - to read one file's bytes from standard input")
    p.add_argument("--model", default="speech-en", help="built-in speech model or directory (default: speech-en)")
    p.add_argument("--strategy", default="ar", help="decoder (see below; default: ar)")
    p.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE", help="decoder option (repeatable)")
    add_threads_flag(p, DEFAULT_THREADS)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per file: file, text, stats")
    out.add_argument("--stats", action="store_true", help="a statistics line per file on stderr")
    p.add_argument("--stream", action="store_true",
                   help="print each file's text as the decoder commits it (not with --json)")
    p.add_argument("--show-html", default=None, metavar="FILE.html",
                   help="one audio file: write its decoding trace as a self-contained page (docs/trace.md)")
    p.add_argument("--trace-json", default=None, metavar="FILE.json", help="one audio file: write its trace as JSON")
    p.set_defaults(run=run_transcribe)


def run_transcribe(args: argparse.Namespace) -> int:
    """Transcribe each file and print its text (or JSON)."""
    import json

    import paragen
    from paragen.errors import AudioInputError, InvalidInputError
    from paragen.models.io import resolve
    from paragen.speech.api import transcribe
    from paragen.speech.model import is_speech_model

    options = parse_options(args.option, what="decoder option")
    if not is_speech_model(resolve(args.model)):
        raise InvalidInputError(f"--model {args.model} is not a speech model: use --model speech-en (or a directory "
                                "from `paragen train speech`)")
    tracing = bool(args.show_html or args.trace_json)
    if tracing and len(args.files) != 1:
        raise InvalidInputError("--show-html and --trace-json trace one audio file: give one FILE")
    if args.stream and args.json:
        raise InvalidInputError("--stream prints text as it comes and --json one object per file: pick one")
    with command_threads(args):
        model = paragen.load(args.model)
        for name in args.files:
            audio = sys.stdin.buffer.read() if name == "-" else name
            if name == "-" and not audio:
                raise AudioInputError("standard input is empty: pipe an audio file in, e.g. "
                                      "paragen transcribe - < clip.wav")
            if args.stream:
                out = stream_file(model, audio, name if len(args.files) > 1 else None, args.strategy, tracing, options)
            else:
                out = transcribe(model, audio, strategy=args.strategy, trace=tracing, **options)
            if tracing:
                from paragen.trace_html import write

                if args.trace_json:
                    out.trace.save(args.trace_json)
                if args.show_html:
                    write(out.trace, args.show_html)
            if args.json:
                print(json.dumps({"file": name, "text": out.text, "stats": out.stats.to_dict()}))
                continue
            if not args.stream:
                print(f"{name}: {out.text}" if len(args.files) > 1 else out.text, flush=True)
            if args.stats:
                s = out.stats
                per_call = "-" if s.tokens_per_call is None else f"{s.tokens_per_call:.1f}"
                print(f"[{s.strategy}: {s.tokens} characters, {s.decoder_calls} decoder calls, {s.encoder_calls} encoder "
                      f"call, {per_call} characters/call, {s.seconds * 1000:.0f} ms, RTF {s.rtf:.3f}"
                      f"{'' if s.lossless else ', lossy'}]", file=sys.stderr)
    return 0


def stream_file(model, audio, name: str | None, strategy: str, trace: bool, options: dict):
    """Print one file's text piece by piece as the decoder commits it (``name: `` first when
    given), then a newline; its Transcript."""
    import paragen

    pieces = paragen.stream(model, audio, strategy, trace=trace, **options)  # checks everything before printing
    if name is not None:
        print(f"{name}: ", end="", flush=True)
    for piece in pieces:
        print(piece, end="", flush=True)
    print(flush=True)
    return pieces.generation


def add_train_speech_parser(tsub: argparse._SubParsersAction) -> None:
    """``paragen train speech``."""
    from paragen.speech.train import SpeechTrainConfig

    t = tsub.add_parser(
        "speech", help="train the speech encoder-decoder (CTC + attention + NAR decoders)",
        description="Train a conv-subsampling transformer encoder with a CTC head, an AR attention decoder and a NAR "
        "decoder (mask-predict and CASS-NAT) jointly (ESPnet-style CTC + attention loss plus the NAR losses) on a "
        "directory from `paragen data speech`. Same optimiser, schedule, checkpoints, budget and --resume as "
        "`train lm`; held-out CER/WER of CTC greedy and AR greedy at every evaluation.",
    )
    t.add_argument("--data", required=True, help="directory from `paragen data speech`")
    t.add_argument("--out", required=True, help="output model directory")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint beside --out")
    add_stop_at(t)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(t, SpeechTrainConfig, skip={"data", "out"})
    t.set_defaults(run=run_train_speech)


def run_train_speech(args: argparse.Namespace) -> int:
    """Train and print the held-out result."""
    from paragen.speech.train import SpeechTrainConfig, train_speech

    cfg = config_from_args(SpeechTrainConfig, args)
    rec = train_or_resume_hint(train_speech, cfg, args)
    if rec is None:
        return 130
    print(f"{cfg.out}: {rec['parameters'] / 1e6:.2f}M parameters, {rec['steps']} steps, held-out {rec['heldout_greedy']}")
    return 0


def run_speech_bench_args(args: argparse.Namespace, lm_default_strategies: str, lm_default_model: str) -> int:
    """``paragen bench --task speech[:DIR]``: the bench flags that apply (--strategies, --model, --limit,
    --threads, --out); the LM defaults of --strategies and --model stand for the speech ones."""
    from pathlib import Path

    from paragen.speech.bench import DEFAULT_CONTENDERS, DEFAULT_DATA, run_speech_bench, table

    data = args.task.partition(":")[2] or DEFAULT_DATA
    contenders = DEFAULT_CONTENDERS if args.strategies == lm_default_strategies else args.strategies
    model = "speech-en" if args.model == lm_default_model else args.model
    bench = run_speech_bench(model, data, contenders, args.limit, Path(args.out), args.threads,
                             progress=not args.no_progress, argv=["paragen", *sys.argv[1:]])
    print(table(bench["summary"]))
    print(f"wrote {args.out}/bench.json, bench.md and report.html in {bench['seconds']:.0f} s on {args.threads} thread(s)",
          file=sys.stderr)
    return 0
