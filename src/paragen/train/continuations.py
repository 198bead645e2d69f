"""A model's own continuations of corpus prompts, as a corpus: ``paragen train continuations``.

Sequence-level distillation (Kim & Rush 2016) trains the student on what the teacher
writes rather than on the data. For a draft this is the text that matters: greedy
speculative decoding accepts a drafted token when it is the target's greedy choice, so
the draft is asked to predict the target's outputs, with their habits (repetition
included), not the corpus. DistillSpec (Zhou et al. 2024) reports that training on
generated rather than fixed data raises acceptance. Run ``paragen train distill --data
DIR`` on the result: KL to the target's logits on the target's own text.

Prompts are cut from the corpus's training files only (never from a held-out file, so
held-out files stay out of every model trained on the result): a random file (weighted
by size), a random line end in it, and the last 64-256 tokens before it (by default;
``--min/--max-prompt-tokens``). Each output file is the prompt followed by the model's
continuation, so the directory is a corpus for ``--data`` (split by file name).
``continuations.json`` names the model, the settings and each file's source. Given the
draft instead of the target, the same command writes
on-policy data: the draft's own text, which distillation then scores with the target's
logits (DistillSpec's finding is that such data serves best).

The teacher's greedy text loops: of 10,000 ``code-target`` continuations of 256 tokens, 34%
end stuck on a repeated word or phrase, and a student distilled on them learns to loop too
(BENCHMARKS.md, "Distilled from the target's own text"). ``--drop-loops`` leaves out each
continuation whose last 64 tokens loop (``paragen.bench.metrics.loops``); the record counts
them either way.

Prompts depend on the seed only, so an interrupted run resumes (``--resume``) where its
last finished batch ended; the directory appears at once when all are written.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from paragen.bench.metrics import loops
from paragen.errors import InvalidInputError
from paragen.train.corpus import Corpus, find_corpus

RECORD = "continuations.json"
PROMPT_CHARS_PER_TOKEN = 8  # more characters than a prompt's tokens can span (code runs ~3 per token)


@dataclass(frozen=True)
class ContinuationsConfig:
    model: str = field(default="code-target", metadata={"help": "the model whose continuations are written (a built-in "
                                                                 "name or a model directory): the target for sequence-"
                                                                 "level distillation, or the draft itself for on-policy "
                                                                 "data (DistillSpec's choice)"})
    data: str | None = field(default=None, metadata={"help": "corpus directory to cut prompts from (training "
                                                             "files only; default: the standard library)"})
    out: str = field(default="runs/continuations", metadata={"help": "directory to write (replaced when done)"})
    prompts: int = field(default=4096, metadata={"help": "prompts to continue; >= 1"})
    min_prompt_tokens: int = field(default=64, metadata={"help": "shortest prompt, in tokens; >= 1"})
    max_prompt_tokens: int = field(default=256, metadata={"help": "longest prompt, in tokens"})
    new_tokens: int = field(default=128, metadata={"help": "tokens written per prompt at most"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (what greedy speculative decoding "
                                                              "verifies); > 0 samples"})
    batch_size: int = field(default=32, metadata={"help": "prompts decoded together (paragen's batched ar)"})
    threads: int = field(default=2, metadata={"help": "torch CPU threads"})
    seed: int = field(default=0, metadata={"help": "chooses the prompts (and the samples when temperature > 0)"})
    drop_loops: bool = field(default=False, metadata={"help": "leave out each continuation whose last 64 tokens loop "
                                                              "(a phrase of 8 tokens or fewer on repeat), so that a "
                                                              "student does not learn the teacher's loops"})

    def __post_init__(self) -> None:
        from paragen.request import MAX_BATCH

        if self.prompts < 1 or self.new_tokens < 1:
            raise InvalidInputError(f"prompts and new_tokens must be >= 1, got {self.prompts} and {self.new_tokens}")
        if not 1 <= self.min_prompt_tokens <= self.max_prompt_tokens:
            raise InvalidInputError(f"need 1 <= min_prompt_tokens <= max_prompt_tokens, got {self.min_prompt_tokens} "
                                    f"and {self.max_prompt_tokens}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise InvalidInputError(f"batch_size must be in [1, {MAX_BATCH}], got {self.batch_size}")
        if self.temperature < 0:
            raise InvalidInputError(f"temperature must be >= 0, got {self.temperature}")


def continuations_record(root: Path) -> dict:
    """A continuations directory's record as a training record keeps it: how it was made
    and its totals, without the per-file sources."""
    record = json.loads((root / RECORD).read_text())
    return {k: v for k, v in record.items() if k != "sources"}


def cut_prompts(corpus: Corpus, tok, cfg: ContinuationsConfig) -> list[tuple[str, list[int]]]:
    """``cfg.prompts`` (source file, prompt token ids), each ending at a line end of a
    training file; the same for the same corpus, tokenizer and seed."""
    rng = random.Random(cfg.seed)
    files = list(corpus.train_files)
    sizes = [(corpus.root / f).stat().st_size for f in files]
    prompts: list[tuple[str, list[int]]] = []
    tries = 0
    while len(prompts) < cfg.prompts:
        tries += 1
        if tries > 20 * cfg.prompts:
            raise InvalidInputError(f"{corpus.root}: too few training files with {cfg.min_prompt_tokens} tokens "
                                    "before a line end to cut prompts from")
        f = rng.choices(files, weights=sizes)[0]
        text = corpus.read(f)
        end = text.find("\n", rng.randrange(len(text))) + 1 if text else 0  # the end of a random character's line
        if end == 0:
            continue
        want = rng.randint(cfg.min_prompt_tokens, cfg.max_prompt_tokens)
        ids = tok.encode(text[max(0, end - PROMPT_CHARS_PER_TOKEN * want) : end])[-want:]
        if len(ids) >= cfg.min_prompt_tokens:
            prompts.append((f, ids))
    return prompts


def write_continuations(cfg: ContinuationsConfig, resume: bool = False, progress: bool = True,
                        command: str | None = None) -> dict:
    """Decode every prompt with ``cfg.model`` (``ar``, batched) and write the corpus directory;
    returns its record. Finished batches wait in ``.OUT.work`` until all are done."""
    from tqdm import tqdm

    import paragen
    from paragen.models.io import atomic_directory
    from paragen.threads import torch_threads

    out = Path(cfg.out)
    work = out.parent / f".{out.name}.work"
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    settings = work / "config.json"  # checked before the model loads and the prompts are cut: fail fast
    if settings.exists() and json.loads(settings.read_text()) != asdict(cfg):
        raise InvalidInputError(f"{work} holds a run with other settings: rerun those, or drop --resume to start over")
    settings.write_text(json.dumps(asdict(cfg)))
    corpus = find_corpus(cfg.data)
    model = paragen.load(cfg.model)
    prompts = cut_prompts(corpus, model.tokenizer, cfg)
    names = [f"{i:06d}.py" for i in range(len(prompts))]
    counts = work / "new_tokens.json"  # per finished file: tokens written and whether they loop, kept across a resume
    written: dict[str, list] = json.loads(counts.read_text()) if counts.exists() else {}
    t0 = time.perf_counter()
    with torch_threads(cfg.threads), tqdm(total=len(prompts), disable=not progress, desc="continuations",
                                          unit="prompt", dynamic_ncols=True) as bar:
        for start in range(0, len(prompts), cfg.batch_size):
            batch = range(start, min(start + cfg.batch_size, len(prompts)))
            if all(names[i] in written for i in batch):  # written before an interruption
                bar.update(len(batch))
                continue
            gens = paragen.generate(model, [prompts[i][1] for i in batch], strategy="ar",
                                    max_new_tokens=cfg.new_tokens, temperature=cfg.temperature,
                                    seed=None if cfg.temperature == 0 else cfg.seed + start)
            for i, g in zip(batch, gens):
                (work / names[i]).write_text(model.tokenizer.decode(prompts[i][1]) + g.text, encoding="utf-8")
                written[names[i]] = [len(g.tokens), loops(g.tokens)]
            tmp = counts.with_suffix(".tmp")  # the batch counts as done only once all its files are written
            tmp.write_text(json.dumps(written))
            tmp.replace(counts)
            bar.update(len(batch))
    kept = [i for i, name in enumerate(names) if not (cfg.drop_loops and written[name][1])]
    record = {
        "command": command,
        "config": asdict(cfg),
        "model": str(cfg.model),
        "corpus": str(corpus.root),
        "prompts": len(prompts),
        "looping": sum(looped for _, looped in written.values()),  # continuations that end in a loop
        "files": len(kept),  # the prompts' files kept (all but the looping ones with --drop-loops)
        "prompt_tokens": sum(len(prompts[i][1]) for i in kept),
        "new_tokens": sum(written[names[i]][0] for i in kept),
        "seconds": round(time.perf_counter() - t0, 1),  # of the run that finished (a resumed one: its own part)
        "sources": {names[i]: prompts[i][0] for i in kept},
    }
    with atomic_directory(out) as tmp:
        for name in record["sources"]:
            shutil.copyfile(work / name, tmp / name)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(work)
    return record
