"""Tokenizer wrapper: one small interface over a ``tokenizers`` file, a SentencePiece model or a transformers tokenizer."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from paragen.errors import ModelLoadError

# Files that make a directory's tokenizer; a model directory with none of them has no tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json", "vocab.txt", "spiece.model")


def has_tokenizer(path: str | Path) -> bool:
    """Whether a model directory ships any tokenizer file at all."""
    return any((Path(path) / name).exists() for name in TOKENIZER_FILES)


def _first_line(e: Exception) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


class SentencePieceTokenizer:
    """A bare SentencePiece model (``tokenizer.model`` without ``tokenizer.json``), with the
    slice of the transformers tokenizer interface that :class:`Tokenizer` calls."""

    def __init__(self, file: Path) -> None:
        try:
            import sentencepiece
        except ImportError as e:
            raise ModelLoadError(f"{file} is a SentencePiece model: pip install sentencepiece to read it") from e
        self.file = file
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(file))
        eos = self.sp.eos_id()
        self.eos_token = self.sp.id_to_piece(eos) if eos >= 0 else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.sp.decode(list(ids))

    def convert_tokens_to_ids(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        return {self.sp.id_to_piece(i): i for i in range(len(self))}

    def save_pretrained(self, path: str) -> None:
        shutil.copy(self.file, Path(path) / "tokenizer.model")


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    """Encode/decode without adding special tokens; knows its EOS and mask ids."""

    def __init__(self, backend: Any, eos_token: str | None = None, mask_token: str | None = None) -> None:
        self.backend = backend
        self._fast = hasattr(backend, "encode_batch")  # a raw tokenizers.Tokenizer
        self.eos_token, self.mask_token = eos_token, mask_token
        self.eos_id = self.token_to_id(eos_token) if eos_token else None
        self.mask_id = self.token_to_id(mask_token) if mask_token else None

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        cfg_file = path / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
        eos, mask = _token_text(cfg.get("eos_token")), _token_text(cfg.get("mask_token"))
        if (path / "tokenizer.json").exists():
            from tokenizers import Tokenizer as RawTokenizer

            try:
                return cls(RawTokenizer.from_file(str(path / "tokenizer.json")), eos, mask)
            except Exception as e:  # the tokenizers library raises bare Exceptions
                raise ModelLoadError(f"{path / 'tokenizer.json'} is not a valid tokenizer file: {e}") from e
        if (path / "tokenizer.model").exists():
            # Read with sentencepiece itself: transformers would convert it to a fast tokenizer,
            # which needs protobuf, or else falls back to tiktoken and fails.
            sp = SentencePieceTokenizer(path / "tokenizer.model")
            return cls(sp, eos or sp.eos_token, mask)
        if not has_tokenizer(path):
            raise ModelLoadError(f"{path} has no tokenizer files ({', '.join(TOKENIZER_FILES)})")
        try:
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except Exception as e:
            raise ModelLoadError(f"no usable tokenizer in {path}: {_first_line(e)}") from e
        return cls(hf, hf.eos_token, getattr(hf, "mask_token", None))

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token) if self._fast else self.backend.convert_tokens_to_ids(token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size() if self._fast else len(self.backend)

    def encode(self, text: str) -> list[int]:
        if self._fast:
            return self.backend.encode(text, add_special_tokens=False).ids
        return self.backend.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        # Special tokens are kept: a mask or EOS in an output is a bug to see, not hide.
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def fingerprint(self) -> str:
        """Hash of the token -> id table: two models can share drafts iff these match."""
        vocab = self.backend.get_vocab()  # the same call on tokenizers and transformers tokenizers
        blob = json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json and a tokenizer_config.json that transformers understands."""
        path = Path(path)
        if not self._fast:
            self.backend.save_pretrained(str(path))
            return
        self.backend.save(str(path / "tokenizer.json"))
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False}
        if self.eos_token:
            cfg["eos_token"] = self.eos_token
        if self.mask_token:
            cfg["mask_token"] = self.mask_token
        (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
