"""Python source corpus with a deterministic split by file path."""

from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

HELDOUT_PERCENT = 5


def default_root() -> Path:
    """The running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(relpath: str) -> bool:
    """A file is held out iff the hash of its relative path lands in the first 5 of 100 buckets."""
    return int(hashlib.sha1(relpath.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


@dataclass(frozen=True)
class Corpus:
    root: Path
    train_files: tuple[str, ...]
    heldout_files: tuple[str, ...]

    def read(self, relpath: str) -> str:
        return (self.root / relpath).read_text(encoding="utf-8", errors="replace")

    def texts(self, split: str) -> list[str]:
        files = self.train_files if split == "train" else self.heldout_files
        return [self.read(f) for f in files]


def find_corpus(root: str | Path | None = None, max_bytes: int = 2_000_000) -> Corpus:
    """Every ``*.py`` under root (site-packages excluded), split train / held-out by path hash."""
    root = Path(root) if root else default_root()
    if not root.is_dir():
        raise FileNotFoundError(f"corpus directory {root} does not exist")
    train, heldout = [], []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if "site-packages" in rel.split("/") or not p.is_file() or p.stat().st_size > max_bytes:
            continue
        (heldout if is_heldout(rel) else train).append(rel)
    if not train or not heldout:
        raise ValueError(f"{root} has too few Python files to split ({len(train)} train, {len(heldout)} held out)")
    return Corpus(root, tuple(train), tuple(heldout))
