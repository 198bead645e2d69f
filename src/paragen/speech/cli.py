"""The speech commands: ``paragen data speech``, ``paragen train speech``, ``paragen transcribe``.

The top-level parser (``paragen.cli``) registers them with the ``add_*`` functions here and
hands the parsed arguments to the ``run_*`` ones.
"""

from __future__ import annotations

import argparse
import sys


def add_data_parser(sub: argparse._SubParsersAction) -> None:
    """``paragen data speech``."""
    from paragen.speech.data import SpeechDataConfig
    from paragen.train.cli import add_config_flags

    p = sub.add_parser("data", help="build a data set (speech: synthesised with espeak-ng)",
                       description="Build a data set for paragen's own models.")
    dsub = p.add_subparsers(dest="what", required=True, metavar="{speech}")
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


def run_data(args: argparse.Namespace) -> int:
    """Build the speech corpus and print its size."""
    from paragen.speech.data import SpeechDataConfig, build_speech_data
    from paragen.train.cli import config_from_args

    cfg = config_from_args(SpeechDataConfig, args)
    m = build_speech_data(cfg, progress=not args.quiet, command="paragen " + " ".join(sys.argv[1:]))
    sizes = ", ".join(f"{k} {v['utterances']} utterances ({v['hours'] * 60:.0f} min)" for k, v in m["splits"].items())
    print(f"{cfg.out}: {sizes}")
    return 0


def add_transcribe_parser(sub: argparse._SubParsersAction) -> None:
    """``paragen transcribe`` (filled in below once decoders exist)."""


def add_train_speech_parser(tsub: argparse._SubParsersAction) -> None:
    """``paragen train speech``."""
    from paragen.speech.train import SpeechTrainConfig
    from paragen.train.cli import add_config_flags, add_stop_at

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


def run_train_speech(args: argparse.Namespace) -> int:
    """Train and print the held-out result."""
    from paragen.speech.train import SpeechTrainConfig, train_speech
    from paragen.train.cli import config_from_args, train_or_resume_hint

    cfg = config_from_args(SpeechTrainConfig, args)
    rec = train_or_resume_hint(train_speech, cfg, args)
    if rec is None:
        return 130
    print(f"{cfg.out}: {rec['parameters'] / 1e6:.2f}M parameters, {rec['steps']} steps, held-out {rec['heldout_greedy']}")
    return 0
