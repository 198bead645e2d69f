"""``paragen data speech``: an English speech corpus synthesised with espeak-ng.

Sentences come from the docstrings and comments of the standard library, split train /
held-out by source file exactly as the LM corpus is (``paragen.train.corpus.is_heldout``),
and any held-out sentence also found in a training file is dropped, so held-out sentences
are unseen. Training utterances use several espeak voices, variants, rates and pitches;
``heldout`` speaks unseen sentences in those voices, ``heldout_voice`` speaks them in a voice
and variant never heard in training. Optional white noise at a random SNR.

Layout of ``DIR`` (built in a temporary directory and renamed into place, so an interrupted
build leaves nothing half-written):
  manifest.json                       the command, voices, counts, durations
  <split>.jsonl                       one utterance per line: id, text, voice, rate, pitch, snr, seconds, frames
  <split>.pt                          {"features": [sum T, 80] float16, "offsets": [N + 1]} from ``features.log_mel``
  wav/<split>/<id>.wav                16 kHz audio of the held-out splits (for transcribe and the bench)
"""

from __future__ import annotations

import ast
import io
import json
import random
import re
import shutil
import subprocess
import sys
import tokenize
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from paragen.errors import InvalidInputError
from paragen.models.io import atomic_directory
from paragen.speech.features import SAMPLE_RATE, log_mel, resample
from paragen.speech.vocab import normalize
from paragen.train.corpus import find_corpus

SPLITS = ("train", "heldout", "heldout_voice")
# espeak-ng voices (accents) and variants (+m1.. male, +f1.. female) heard in training by
# default (--voices, --variants), and the one held out: a Caribbean accent in a female
# variant, neither of which training ever hears.
TRAIN_VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-x-gbclan", "en-us-nyc", "en-gb-x-gbcwmd")
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "f1", "f2", "f4", "")
HELDOUT_VOICE = "en-029+f3"
_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,;:'\-]*[.!?]?$")


@dataclass(frozen=True)
class SpeechDataConfig:
    out: str = field(default="", metadata={"help": "output directory"})
    train: int = field(default=5000, metadata={"help": "training utterances"})
    heldout: int = field(default=300, metadata={"help": "utterances in each held-out split"})
    min_words: int = field(default=3, metadata={"help": "shortest sentence, in words"})
    max_words: int = field(default=14, metadata={"help": "longest sentence, in words"})
    rates: str = field(default="140,200", metadata={"help": "espeak words per minute, low,high (uniform)"})
    pitches: str = field(default="30,70", metadata={"help": "espeak pitch 0-99, low,high (uniform)"})
    noise: float = field(default=0.5, metadata={"help": "share of utterances with white noise at 15-35 dB SNR"})
    voices: str = field(default=",".join(TRAIN_VOICES), metadata={
        "help": "espeak-ng voices (accents) heard in training, comma-separated (`espeak-ng --voices=en` lists them)"})
    variants: str = field(default=",".join(TRAIN_VARIANTS), metadata={
        "help": "espeak-ng variants heard in training, comma-separated; an empty item is the voice's own "
        "(`espeak-ng --voices=variant` lists them)"})
    stdlib: str | None = field(default=None, metadata={"help": "directory of *.py files (default: the standard library)"})
    seed: int = field(default=0, metadata={"help": "random seed"})

    def __post_init__(self) -> None:
        voice, variant = HELDOUT_VOICE.split("+")
        if voice in self.voice_list() or variant in self.variant_list():
            raise InvalidInputError(f"the held-out voice {HELDOUT_VOICE} must stay unheard in training: "
                                    f"leave {voice} out of --voices and {variant} out of --variants")
        if not self.voice_list():
            raise InvalidInputError("--voices is empty: name at least one espeak-ng voice")

    def voice_list(self) -> list[str]:
        return [v.strip() for v in self.voices.split(",") if v.strip()]

    def variant_list(self) -> list[str]:
        return [v.strip() for v in self.variants.split(",")]

    def train_voices(self) -> list[str]:
        """Every voice+variant training may speak in."""
        return [v + (f"+{x}" if x else "") for v in self.voice_list() for x in self.variant_list()]


def espeak_binary() -> str:
    """The espeak-ng executable, or a clear error saying how to install it."""
    found = shutil.which("espeak-ng")
    if not found:
        raise InvalidInputError("espeak-ng is not installed: `apt-get install espeak-ng` (Debian/Ubuntu) or "
                                "`brew install espeak-ng` (macOS), then run again")
    return found


def file_texts(path: Path) -> list[str]:
    """Docstrings and comment blocks of one Python file (consecutive comment lines joined)."""
    source = path.read_text(encoding="utf-8", errors="replace")
    texts = []
    try:
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    texts += [" ".join(par.split()) for par in doc.split("\n\n")]
        block, last = [], -2
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                line = tok.string.lstrip("#").strip()
                if tok.start[0] != last + 1 and block:
                    texts.append(" ".join(block))
                    block = []
                block.append(line)
                last = tok.start[0]
        if block:
            texts.append(" ".join(block))
    except (SyntaxError, tokenize.TokenError, ValueError):
        return []
    return texts


def sentences(text: str, min_words: int, max_words: int) -> list[str]:
    """Plain English sentences of a text: no digits, symbols, code or acronyms (espeak would read them
    differently from how they are spelled), ``min_words`` to ``max_words`` words."""
    out = []
    for s in re.split(r"(?<=[.!?])\s+", text):
        s = s.strip()
        if not _ALLOWED.match(s):
            continue
        words = s.rstrip(".!?").replace("-", " ").split()
        if not min_words <= len(words) <= max_words:
            continue
        # camelCase, ALLCAPS and very long words are identifiers or acronyms, not prose
        if any(len(w) > 14 or (len(w) > 1 and any(c.isupper() for c in w[1:])) for w in words):
            continue
        out.append(s)
    return out


def split_sentences(cfg: SpeechDataConfig) -> tuple[list[str], list[str], dict]:
    """Training and held-out sentences (held-out ones never appear in a training file)."""
    corpus = find_corpus(cfg.stdlib)
    seen: dict[str, str] = {}
    train, heldout = {}, {}
    for split, files in (("train", corpus.train_files), ("heldout", corpus.heldout_files)):
        for rel in files:
            for text in file_texts(corpus.root / rel):
                for s in sentences(text, cfg.min_words, cfg.max_words):
                    key = normalize(s)
                    (train if split == "train" else heldout).setdefault(key, s)
                    seen.setdefault(key, rel)
    heldout = {k: v for k, v in heldout.items() if k not in train}
    info = {"root": str(corpus.root), "train_files": len(corpus.train_files),
            "heldout_files": list(corpus.heldout_files), "train_sentences": len(train), "heldout_sentences": len(heldout)}
    return sorted(train.values()), sorted(heldout.values()), info


def synthesise(text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """16 kHz float32 audio of ``text`` spoken by espeak-ng (which writes 22.05 kHz WAV to stdout)."""
    import soundfile as sf

    wav = subprocess.run([espeak_binary(), "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout", text],
                         check=True, capture_output=True).stdout
    wave, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return resample(wave, sr)


def add_noise(wave: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White noise at ``snr_db`` below the utterance's mean power."""
    power = float(np.mean(wave**2)) + 1e-12
    noisy = wave + rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), wave.shape).astype(np.float32)
    return np.clip(noisy, -1.0, 1.0)


def plan(cfg: SpeechDataConfig, train_sents: list[str], heldout_sents: list[str]) -> dict[str, list[dict]]:
    """Which sentence each utterance speaks, and how (deterministic in ``cfg.seed``)."""
    r = random.Random(cfg.seed)
    lo_rate, hi_rate = (int(x) for x in cfg.rates.split(","))
    lo_pitch, hi_pitch = (int(x) for x in cfg.pitches.split(","))
    if len(heldout_sents) < cfg.heldout:
        raise InvalidInputError(f"only {len(heldout_sents)} held-out sentences; ask for --heldout {len(heldout_sents)} or fewer")

    def utt(split: str, i: int, text: str, voice: str) -> dict:
        snr = round(r.uniform(15, 35), 1) if r.random() < cfg.noise else None
        return {"id": f"{split}-{i:05d}", "text": normalize(text), "spoken": text, "voice": voice,
                "rate": r.randint(lo_rate, hi_rate), "pitch": r.randint(lo_pitch, hi_pitch), "snr": snr}

    voices, variants = cfg.voice_list(), cfg.variant_list()

    def train_voice() -> str:  # a variant, then a voice (the order the default data was drawn in)
        variant = r.choice(variants)
        return r.choice(voices) + (f"+{variant}" if variant else "")

    picks = r.sample(heldout_sents, cfg.heldout)
    return {
        "train": [utt("train", i, r.choice(train_sents), train_voice()) for i in range(cfg.train)],
        "heldout": [utt("heldout", i, s, train_voice()) for i, s in enumerate(picks)],
        "heldout_voice": [utt("heldout_voice", i, s, HELDOUT_VOICE) for i, s in enumerate(picks)],
    }


def build_speech_data(cfg: SpeechDataConfig, progress: bool = True, command: str | None = None) -> dict:
    """Synthesise every split into ``cfg.out`` (atomically); returns the manifest."""
    import soundfile as sf
    from tqdm import tqdm

    espeak_binary()
    train_sents, heldout_sents, info = split_sentences(cfg)
    todo = plan(cfg, train_sents, heldout_sents)
    rng = np.random.default_rng(cfg.seed)
    manifest = {"command": command or " ".join(sys.argv), "config": asdict(cfg), "sample_rate": SAMPLE_RATE,
                "train_voices": cfg.train_voices(),
                "heldout_voice": HELDOUT_VOICE, "sentences": info, "splits": {}}
    with atomic_directory(cfg.out) as tmp:
        for split, utts in todo.items():
            feats, offsets, seconds = [], [0], 0.0
            if split != "train":
                (tmp / "wav" / split).mkdir(parents=True)
            for u in tqdm(utts, desc=split, disable=not progress, dynamic_ncols=True):
                wave = synthesise(u["spoken"], u["voice"], u["rate"], u["pitch"])
                if u["snr"] is not None:
                    wave = add_noise(wave, u["snr"], rng)
                f = log_mel(wave)
                u["seconds"], u["frames"] = round(len(wave) / SAMPLE_RATE, 3), f.shape[0]
                seconds += u["seconds"]
                feats.append(f.half())
                offsets.append(offsets[-1] + f.shape[0])
                if split != "train":
                    sf.write(tmp / "wav" / split / f"{u['id']}.wav", wave, SAMPLE_RATE, subtype="PCM_16")
            torch.save({"features": torch.cat(feats), "offsets": torch.tensor(offsets)}, tmp / f"{split}.pt")
            (tmp / f"{split}.jsonl").write_text("".join(json.dumps(u) + "\n" for u in utts))
            manifest["splits"][split] = {"utterances": len(utts), "hours": round(seconds / 3600, 3)}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class SpeechSplit:
    """One split in memory: features [sum T, 80] float16, offsets [N + 1], and its manifest rows."""

    features: torch.Tensor
    offsets: torch.Tensor
    rows: list[dict]

    def __len__(self) -> int:
        return len(self.rows)

    def item(self, i: int) -> torch.Tensor:
        """[T_i, 80] float32 features of utterance i."""
        return self.features[self.offsets[i] : self.offsets[i + 1]].float()


def load_split(directory: str | Path, split: str) -> SpeechSplit:
    """A split of a directory built by ``build_speech_data``."""
    d = Path(directory)
    if not (d / "manifest.json").exists():
        raise InvalidInputError(f"{d} is not a speech data directory (no manifest.json): build one with `paragen data speech`")
    blob = torch.load(d / f"{split}.pt")
    rows = [json.loads(line) for line in (d / f"{split}.jsonl").read_text().splitlines()]
    return SpeechSplit(blob["features"], blob["offsets"], rows)
