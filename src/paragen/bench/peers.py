"""Peers: transformers ``generate()`` on the same weights, measured like paragen strategies.

- ``hf-greedy``: plain ``generate``.
- ``hf-assisted``: assisted generation with the draft as ``assistant_model=``.
- ``hf-lookup``: prompt lookup decoding (``prompt_lookup_num_tokens=``).
- ``llamacpp``, ``llamacpp-f16``, ``llamacpp-q8_0``: llama.cpp greedy on a GGUF of the same
  weights (where llama-cpp-python is installed; see ``LlamaCpp``).

Calls are counted with forward hooks on the transformers modules (registered for one
``generate`` and removed after), so nothing in the library is patched. Every target
forward of ``generate`` produces at least one token (its first one processes the prompt
and yields the first token), so all of them count as ``target_calls``, which makes them
comparable with paragen's count, which leaves out the prompt-only prefill call.
``draft_calls`` counts every assistant forward, its prompt prefill included.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class HFGreedyOptions:
    """``hf-greedy`` has no settings."""


@dataclass(frozen=True)
class HFAssistedOptions:
    """transformers' own defaults for an assistant model (its GenerationConfig)."""

    num_assistant_tokens: int = field(default=20, metadata={"help": "draft tokens per step (the start, if scheduled)"})
    num_assistant_tokens_schedule: str = field(default="constant", metadata={
        "help": "constant | heuristic | heuristic_transient (transformers' GenerationConfig)"})
    assistant_confidence_threshold: float = field(default=0.4, metadata={
        "help": "the assistant stops drafting below this confidence"})


@dataclass(frozen=True)
class HFLookupOptions:
    """transformers' prompt lookup settings."""

    prompt_lookup_num_tokens: int = field(default=10, metadata={"help": "tokens copied per match"})
    max_matching_ngram_size: int = field(default=2, metadata={"help": "longest n-gram matched"})


class Peer:
    """A transformers decoding mode; the flags mirror ``paragen.strategies.base.Strategy``."""

    name: ClassVar[str]
    Options: ClassVar[type]
    needs_draft: ClassVar[bool] = False
    supports_sampling: ClassVar[bool] = True
    lossless: ClassVar[bool] = True
    summary: ClassVar[str] = ""

    @classmethod
    def generate_kwargs(cls, options: Any) -> dict[str, Any]:
        """Extra keyword arguments of ``generate`` for this mode."""
        return {}


class HFGreedy(Peer):
    name = "hf-greedy"
    Options = HFGreedyOptions
    summary = "transformers generate(), one token per call"


class HFAssisted(Peer):
    name = "hf-assisted"
    Options = HFAssistedOptions
    needs_draft = True
    summary = "transformers assisted generation with the draft model"


class HFLookup(Peer):
    name = "hf-lookup"
    Options = HFLookupOptions
    summary = "transformers prompt lookup decoding"

    @classmethod
    def generate_kwargs(cls, options: HFLookupOptions) -> dict[str, Any]:
        return asdict(options)


PEERS: dict[str, type[Peer]] = {p.name: p for p in (HFGreedy, HFAssisted, HFLookup)}


class CallCounter:
    """Counts a module's forward calls while the ``with`` block runs (a forward hook)."""

    def __init__(self, module: torch.nn.Module | None) -> None:
        self.module = module
        self.calls = 0
        self._handle = None

    def _hook(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        self.calls += 1

    def __enter__(self) -> CallCounter:
        if self.module is not None:
            self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()


@dataclass(frozen=True)
class PeerOutput:
    """One ``generate`` call: new tokens (EOS cut), hook-counted calls, wall seconds."""

    tokens: tuple[int, ...]
    target_calls: int
    draft_calls: int | None
    seconds: float
    finish_reason: str


def assistant_config(module: torch.nn.Module, options: HFAssistedOptions) -> Any:
    """A GenerationConfig for the assistant: transformers reads assistant settings from the
    assistant module's own ``generation_config``, and may adapt them during a call."""
    from transformers import GenerationConfig

    cfg = copy.deepcopy(module.generation_config) if module.generation_config is not None else GenerationConfig()
    cfg.num_assistant_tokens = options.num_assistant_tokens
    cfg.num_assistant_tokens_schedule = options.num_assistant_tokens_schedule
    cfg.assistant_confidence_threshold = options.assistant_confidence_threshold
    return cfg


def run_peer(
    peer: type[Peer],
    options: Any,
    target: torch.nn.Module,
    draft: torch.nn.Module | None,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    eos_ids: tuple[int, ...],
    top_p: float | None = None,
) -> PeerOutput:
    """One ``generate`` call; its output is cut before the first EOS, as paragen's driver does.

    transformers stops at EOS too but emits it, so ``max_new_tokens`` is the same budget;
    ``min_new_tokens=0`` so that neither side suppresses EOS. Sampling draws from torch's
    global generator (``generate`` takes no generator): it is seeded inside ``fork_rng`` so
    the caller's random state is left as it was.
    """
    x = torch.tensor([prompt], device=target.device)
    kwargs: dict[str, Any] = dict(
        input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens, min_new_tokens=0,
        num_beams=1, eos_token_id=list(eos_ids) or None, pad_token_id=eos_ids[0] if eos_ids else 0,
        **peer.generate_kwargs(options),
    )
    if temperature > 0:  # temperature (and top-p) as paragen's: no top-k / top-p default
        kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=top_p or 1.0)
    else:
        kwargs.update(do_sample=False)
    if peer.needs_draft:
        # Fresh settings per call: the assistant's config is where transformers keeps
        # state adapted across calls, and every prompt should start from the same one.
        draft.generation_config = assistant_config(draft, options)
        kwargs["assistant_model"] = draft
    with torch.random.fork_rng(devices=[]), torch.inference_mode(), CallCounter(target) as t, CallCounter(draft) as d:
        torch.manual_seed(seed)
        start = time.perf_counter()
        out = target.generate(**kwargs)
        seconds = time.perf_counter() - start
    tokens = out[0, len(prompt):].tolist()
    stop = next((i for i, tok in enumerate(tokens) if tok in eos_ids), None)
    finish = "length" if stop is None else "eos"
    tokens = tokens if stop is None else tokens[:stop]
    return PeerOutput(tuple(tokens), t.calls, d.calls if peer.needs_draft else 0, seconds, finish)


# ---------------------------------------------------------------- llama.cpp


@dataclass(frozen=True)
class LlamaCppOptions:
    """llama.cpp's greedy decoding has no settings here; the GGUF weight type is the peer's name."""


class LlamaCpp(Peer):
    """llama.cpp (through llama-cpp-python) on the same weights, written to GGUF by
    ``paragen.models.gguf``; greedy only, one token per call, on the run's thread count.
    Listed only where ``llama_cpp`` is importable (``pip install 'paragen[llamacpp]'``)."""

    name = "llamacpp"
    Options = LlamaCppOptions
    supports_sampling = False
    weights: ClassVar[str] = "f32"
    # float32 keys and values (GGML_TYPE_F32) beside f32 weights, as the llamacpp backend keeps
    # them: llama.cpp's default f16 cache would round every key and value. None: llama.cpp's default.
    kv_type: ClassVar[int | None] = 0
    summary = "llama.cpp greedy, f32 GGUF of the same weights"

    @staticmethod
    def available() -> bool:
        import importlib.util

        return importlib.util.find_spec("llama_cpp") is not None


class LlamaCppF16(LlamaCpp):
    name = "llamacpp-f16"
    weights = "f16"
    kv_type = None
    summary = "llama.cpp greedy, f16 GGUF (exact for float16-stored weights such as the built-ins)"


class LlamaCppQ8(LlamaCpp):
    name = "llamacpp-q8_0"
    weights = "q8_0"
    kv_type = None
    lossless = False
    summary = "llama.cpp greedy, q8_0 GGUF (lossy: 8-bit weights and activations)"


PEERS.update({p.name: p for p in (LlamaCpp, LlamaCppF16, LlamaCppQ8)})


def load_llamacpp(peer: type[LlamaCpp], model: Any, threads: int, n_ctx: int) -> Any:
    """A ``llama_cpp.Llama`` on ``model``'s weights, converted to GGUF as ``peer.weights``.

    The GGUF file lives in a temporary directory only while llama.cpp maps it (it is removed
    once loaded: the mapping keeps the data)."""
    import tempfile
    from pathlib import Path

    from paragen.errors import InvalidInputError
    from paragen.models.gguf import write_gguf

    if not peer.available():
        raise InvalidInputError(f"peer '{peer.name}' needs llama-cpp-python: pip install 'paragen[llamacpp]' "
                                "(it compiles llama.cpp, about 5 minutes on 2 cores)")
    import llama_cpp

    with tempfile.TemporaryDirectory(prefix="paragen-gguf-") as tmp:
        path = write_gguf(model, Path(tmp) / f"model-{peer.weights}.gguf", peer.weights)
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                               n_batch=n_ctx, type_k=peer.kv_type, type_v=peer.kv_type, verbose=False)


def run_llamacpp(llm: Any, prompt: list[int], max_new_tokens: int, eos_ids: tuple[int, ...]) -> PeerOutput:
    """Greedy decoding (top-k 1, no repetition penalty) of ``prompt`` ids; EOS cut as paragen's driver does.

    Calls: one per token produced (an EOS included), as the transformers peers count them."""
    tokens: list[int] = []
    finish = "length"
    start = time.perf_counter()
    for tok in llm.generate(prompt, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        if tok in eos_ids:
            finish = "eos"
            break
        tokens.append(int(tok))
        if len(tokens) == max_new_tokens:
            break
    seconds = time.perf_counter() - start
    return PeerOutput(tuple(tokens), len(tokens) + (finish == "eos"), 0, seconds, finish)
