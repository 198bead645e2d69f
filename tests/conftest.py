"""Shared fixtures: tiny random models in float64 (the oracle's home ground) and a model directory."""

from __future__ import annotations

import pytest
import torch

from paragen.models.io import save_model
from paragen.models.native import NativeConfig, NativeModel
from paragen.train.tokenizer import train_tokenizer


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny models run fastest on one thread, and do not fight a training job for cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def own_cost_cache(tmp_path_factory):
    """``auto``'s measured call costs go to a directory of this run, not the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PARAGEN_CACHE", str(tmp_path_factory.mktemp("paragen-cache")))
    yield
    mp.undo()


TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "def sub(a, b):\n    return a - b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nprint(os.path.join('a', 'b'))\n",
] * 20


def tiny_model(
    seed: int = 0, vocab: int = 50, std: float = 0.5, attention: str = "causal", eos: int | None = None,
    max_len: int = 512, layers: int = 2, bias: bool = False,
) -> NativeModel:
    """A random float64 model. A large init std gives peaked, varied distributions (less argmax ties)."""
    cfg = NativeConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_len, attention=attention, eos_token_id=eos,
        attention_bias=bias, tie_word_embeddings=not bias,
    )
    model = NativeModel(cfg).init_weights(seed, std=std).double().eval()
    if bias:  # Qwen2-style q/k/v biases: make them non-zero so parity tests see them
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return model


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=300)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer):
    """A saved tiny model with a real tokenizer, in the Hugging Face layout (float32)."""
    model = NativeModel(NativeConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, eos_token_id=tokenizer.eos_id,
        mask_token_id=tokenizer.mask_id,
    )).init_weights(3, std=0.3)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("models") / "tiny", dtype=torch.float32)
