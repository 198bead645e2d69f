"""``paragen data speech-distill``: an AR teacher's transcripts of a speech data set's training
audio, the targets of sequence-level knowledge distillation (Kim & Rush 2016; the NAR
survey's first remedy for the multimodality a NAR model cannot represent): the NAR side of a
student (CTC, CASS-NAT, the CMLM decoder) learns the teacher's one output per utterance
instead of the references (``paragen train speech --distill``).

The transcripts go to ``DIR/train.teacher.jsonl`` (one ``{"id", "text"}`` per utterance, in
the split's order) beside a record of the teacher and its strategy (``train.teacher.json``).
Batches are appended to ``train.teacher.jsonl.partial`` as they finish; a run that stops
leaves that file, and the next run with the same teacher and strategy goes on after its last
whole line, so each utterance is transcribed and written once. The finished file is renamed
into place: ``train.teacher.jsonl`` is always whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from paragen.errors import InvalidInputError
from paragen.speech.api import decode_batch, options_for
from paragen.speech.data import load_split
from paragen.speech.model import SpeechModel
from paragen.streaming import exhaust

TEACHER_FILE, RECORD_FILE = "train.teacher.jsonl", "train.teacher.json"


def teacher_path(data: str | os.PathLike) -> Path:
    return Path(data) / TEACHER_FILE


def distill_speech(data: str, teacher: SpeechModel, teacher_name: str, strategy: str = "ar",
                   options: dict | None = None, batch: int = 32, progress: bool = True) -> Path:
    """Transcribe every training utterance of ``data`` with ``teacher`` (``strategy`` and its
    ``options``, batches of ``batch``) into ``data/train.teacher.jsonl``; returns its path."""
    if not isinstance(teacher, SpeechModel):
        raise InvalidInputError(f"the teacher {teacher_name!r} is not a speech model")
    if batch < 1:
        raise InvalidInputError(f"--batch must be at least 1, got {batch}")
    opts = options_for(strategy, options or {})
    split = load_split(data, "train")
    record = {"teacher": teacher_name, "strategy": strategy, "options": asdict(opts), "utterances": len(split)}
    out = teacher_path(data)
    partial = out.with_name(out.name + ".partial")
    meta = out.with_name(RECORD_FILE)
    done: list[dict] = []
    if partial.exists():
        before = json.loads(meta.read_text()) if meta.exists() else None
        if before != record:
            raise InvalidInputError(f"{partial} was started by another teacher or strategy ({before}): delete it to "
                                    "start again")
        raw = partial.read_bytes()
        whole = raw[: raw.rfind(b"\n") + 1]  # a torn last line is cut off: the file holds whole lines only
        done = [json.loads(line) for line in whole.decode("utf-8").splitlines()]
        with partial.open("r+b") as f:
            f.truncate(len(whole))
    meta.write_text(json.dumps(record, indent=2) + "\n")
    with partial.open("a", encoding="utf-8") as f:
        bar = tqdm(total=len(split), initial=len(done), desc="teacher transcripts", disable=not progress,
                   dynamic_ncols=True)
        for start in range(len(done), len(split), batch):
            ids = range(start, min(start + batch, len(split)))
            outs = exhaust(decode_batch(teacher, [split.item(i) for i in ids], strategy, opts))
            f.writelines(json.dumps({"id": split.rows[i]["id"], "text": t.text}) + "\n" for i, t in zip(ids, outs))
            f.flush()
            bar.update(len(ids))
        bar.close()
    os.replace(partial, out)
    return out


def teacher_texts(data: str | os.PathLike, ids: list[str]) -> list[str]:
    """The teacher's transcript of each training utterance ``ids`` (in that order), with a clear
    error when the data step has not been run or was run on other data."""
    path = teacher_path(data)
    if not path.exists():
        raise InvalidInputError(f"{path} does not exist: write the teacher's transcripts first with "
                                f"`paragen data speech-distill --data {data} --teacher MODEL`")
    texts = {row["id"]: row["text"] for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
    if list(texts) != ids:
        raise InvalidInputError(f"{path} does not transcribe this data's training split: run "
                                "`paragen data speech-distill` again")
    return [texts[i] for i in ids]
