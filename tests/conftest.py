"""Shared fixtures: tiny random models in float64 (the oracle's home ground) and a model directory."""

from __future__ import annotations

import pytest
import torch

from paragen.models.io import save_model
from paragen.models.native import NativeConfig, NativeModel
from paragen.train.tokenizer import train_tokenizer
from tests.helpers import TEXTS


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
