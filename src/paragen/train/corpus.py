"""Python source corpus with a deterministic split by file path.

A corpus is either a directory of ``*.py`` files (by default the running interpreter's
standard library), or a directory built by ``paragen train corpus`` (``build_corpus``):
``DIR/<source>/<path>`` for the standard library and permissively licensed installed
packages, with ``manifest.json``. A file's split depends only on its path inside its source
(``is_heldout``), so a standard-library file is held out in the built corpus exactly when it
is held out of the standard library alone: old and new models are compared on the same text.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from paragen.errors import InvalidInputError
from paragen.models.io import atomic_directory

HELDOUT_PERCENT = 5
MANIFEST = "manifest.json"  # marks a built corpus: its files are <source>/<path inside the source>


def default_root() -> Path:
    """The running interpreter's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def split_key(relpath: str) -> str:
    """In a built corpus, the path that decides a file's split: its path inside its source."""
    return relpath.partition("/")[2] or relpath


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
    built = (root / MANIFEST).is_file()
    train, heldout = [], []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if "site-packages" in rel.split("/") or not p.is_file() or p.stat().st_size > max_bytes:
            continue
        (heldout if is_heldout(split_key(rel) if built else rel) else train).append(rel)
    if not train or not heldout:
        raise ValueError(f"{root} has too few Python files to split ({len(train)} train, {len(heldout)} held out)")
    return Corpus(root, tuple(train), tuple(heldout))


# ---------------------------------------------------------------- building a corpus directory

# Packages installed with paragen's dev environment whose source is a corpus worth having:
# sizeable, pure-Python-heavy, and permissively licensed (each checked again at build time).
DEFAULT_PACKAGES = (
    "numpy", "scipy", "sympy", "mpmath", "networkx", "matplotlib", "fonttools", "jinja2", "pygments", "click", "typer",
    "rich", "markdown-it-py", "pydantic", "transformers", "huggingface-hub", "anyio", "pyparsing", "python-dateutil",
    "packaging", "pytest", "pluggy",
)
# Licence families that allow copying the source into a training corpus without conditions
# beyond attribution (SPDX ids, classifier names, or the free-text License field).
_PERMISSIVE = re.compile(r"(MIT(-CMU)?|0?BSD.*|Apache.*|PSF.*|Python Software Foundation.*|ISC.*|Zlib|CC0-1\.0|"
                         r"BSL-1\.0|LLVM-exception|CNRI-Python|HPND)", re.IGNORECASE)
_VENDORED = {"_vendor", "_vendored", "vendor", "vendored"}  # other projects' code, under their own licences


@dataclass(frozen=True)
class Source:
    """One source of a built corpus: ``DIR/<name>/<path>`` for every ``path`` in ``files``."""

    name: str
    kind: str  # "stdlib" or "package"
    version: str
    licence: str
    root: Path  # what ``files`` are relative to
    files: tuple[str, ...]


def licence_terms(metadata) -> tuple[str, list[str]]:
    """A distribution's licence as written, and its terms: the SPDX expression (PEP 639) if
    any, else the trove classifiers, else the License field's first line."""
    expr = metadata.get("License-Expression")
    if expr:
        terms = [t for t in re.split(r"\s+(?:AND|OR|WITH)\s+|[()]", expr) if t.strip()]
        return expr, [t.strip() for t in terms]
    classifiers = [c.split("::")[-1].strip() for c in metadata.get_all("Classifier") or [] if c.startswith("License ::")]
    if classifiers:
        names = [re.sub(r"\s*\(\w+\)$", "", c).removesuffix(" License").removesuffix(" Software") for c in classifiers]
        return "; ".join(classifiers), names
    text = (metadata.get("License") or "").strip().splitlines()
    if text:
        return text[0], [t for t in re.split(r"\s+(?:AND|OR)\s+", text[0].removesuffix(" License"))]
    return "", []


def is_permissive(terms: list[str]) -> bool:
    """Every term is of a permissive family (MIT, BSD, Apache, PSF, ISC and the like)."""
    return bool(terms) and all(_PERMISSIVE.fullmatch(t.strip()) for t in terms)


def package_source(name: str, max_bytes: int = 2_000_000) -> Source:
    """The ``*.py`` files an installed distribution owns (its RECORD), vendored code excluded;
    a clear error if it is not installed or not permissively licensed."""
    from importlib import metadata

    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise InvalidInputError(f"package '{name}' is not installed in this environment: pip install it, "
                         "or leave it out of --packages") from None
    licence, terms = licence_terms(dist.metadata)
    if not is_permissive(terms):
        raise InvalidInputError(f"package '{name}' is licensed '{licence or 'unknown'}', not MIT/BSD/Apache/PSF-style: "
                         "leave it out of --packages")
    root = Path(dist.locate_file("")).resolve()
    files = []
    for f in dist.files or []:
        rel = Path(f).as_posix()
        parts = rel.split("/")
        if not rel.endswith(".py") or ".." in parts or _VENDORED & set(parts):
            continue
        p = root / rel
        if p.is_file() and p.stat().st_size <= max_bytes:
            files.append(rel)
    if not files:
        raise InvalidInputError(f"package '{name}' has no Python source files to copy")
    canonical = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
    return Source(canonical, "package", dist.version, licence, root, tuple(sorted(files)))


def stdlib_source(max_bytes: int = 2_000_000) -> Source:
    """The standard library, filtered exactly as ``find_corpus`` filters it (same files, same split)."""
    corpus = find_corpus(None, max_bytes)
    files = tuple(sorted(corpus.train_files + corpus.heldout_files))
    return Source("stdlib", "stdlib", platform.python_version(), "PSF-2.0", corpus.root, files)


def corpus_sources(packages: tuple[str, ...] | list[str] = DEFAULT_PACKAGES) -> list[Source]:
    """The standard library, then each package (installed and permissively licensed, or an error)."""
    sources = [stdlib_source()]
    for name in packages:
        sources.append(package_source(name))
    return sources


def build_corpus(out: str | Path, sources: list[Source], tokenizer: str | None = None, progress: bool = True,
                 command: str | None = None) -> dict:
    """Copy each source into ``out/<source>/...`` with ``manifest.json``; returns the manifest.

    Deduplicated by content (SHA-256): every held-out file is kept, a training file is dropped
    when its content is that of a held-out file (so no held-out text is trained on under
    another name) or of a training file already taken (sources in order: put the standard
    library first). Written to a temporary directory beside ``out`` and renamed into place at
    the end. ``tokenizer``: a tokenizer directory (e.g. a model's) to count tokens per source.
    """
    out = Path(out)
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"a source is listed twice: {', '.join(sorted(n for n in set(names) if names.count(n) > 1))}")
    tok = None
    if tokenizer:
        from paragen.tokenizer import Tokenizer

        tok = Tokenizer.from_dir(tokenizer)
    # Pass 1: hash everything, so that held-out content is known before any training file is taken.
    digests = {(s.name, f): hashlib.sha256((s.root / f).read_bytes()).hexdigest() for s in sources for f in s.files}
    heldout_digests = {d for (_, f), d in digests.items() if is_heldout(f)}
    taken: set[str] = set()
    entries = []
    with atomic_directory(out) as tmp:
        for src in sources:
            kept = {"train": [], "heldout": []}
            dropped = 0
            for f in src.files:
                d, split = digests[(src.name, f)], "heldout" if is_heldout(f) else "train"
                if split == "train" and (d in heldout_digests or d in taken):
                    dropped += 1
                    continue
                taken.add(d)
                dest = tmp / src.name / f
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src.root / f, dest)
                kept[split].append(f)
            entry = {"name": src.name, "kind": src.kind, "version": src.version, "licence": src.licence,
                     "from": str(src.root), "train_files": len(kept["train"]), "heldout_files": len(kept["heldout"]),
                     "duplicates_dropped": dropped,
                     "bytes": {k: sum((tmp / src.name / f).stat().st_size for f in v) for k, v in kept.items()}}
            if tok is not None:
                entry["tokens"] = {k: _count_tokens(tok, [tmp / src.name / f for f in v]) for k, v in kept.items()}
            entries.append(entry)
            if progress:
                tokens = f", {entry['tokens']['train']} + {entry['tokens']['heldout']} tokens" if tok else ""
                print(f"{src.name} {src.version} ({src.licence}): {entry['train_files']} train + "
                      f"{entry['heldout_files']} held-out files, {dropped} duplicates dropped, "
                      f"{sum(entry['bytes'].values()) / 1e6:.1f} MB{tokens}", flush=True)
        manifest = {
            "command": command,
            "split": f"a file is held out iff sha1(its path inside its source) % 100 < {HELDOUT_PERCENT}",
            "tokenizer": str(tokenizer) if tokenizer else None,
            "sources": entries,
            "totals": {k: sum(e[k] for e in entries) for k in ("train_files", "heldout_files", "duplicates_dropped")},
        }
        if tok is not None:
            manifest["totals"]["tokens"] = {k: sum(e["tokens"][k] for e in entries) for k in ("train", "heldout")}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _count_tokens(tok, paths: list[Path], batch: int = 256) -> int:
    """Tokens in these files, each followed by EOS (as ``train lm`` streams them)."""
    n = 0
    for i in range(0, len(paths), batch):
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths[i : i + batch]]
        n += sum(len(e.ids) + 1 for e in tok.backend.encode_batch(texts, add_special_tokens=False))
    return n
