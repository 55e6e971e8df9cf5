"""Fixtures for the engine tests: tiny random checkpoints, the demo checkpoint, the
original LLaMA tokenizer. Nothing here touches the database."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from inference.llama.checkpoint import save_checkpoint
from inference.llama.demo import build_demo_checkpoint
from inference.llama.model import ModelArgs, Transformer, init_weights
from inference.llama.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[3]
LLAMA_TOKENIZER = ROOT / "testdata" / "llama-tokenizer" / "tokenizer.model"

# Tiny shapes that still split over 4 ranks: 8 heads, 4 kv heads (grouped-query),
# ffn hidden 176, vocab 256.
TINY = {
    "dim": 64,
    "n_layers": 2,
    "n_heads": 8,
    "n_kv_heads": 4,
    "vocab_size": 256,
    "multiple_of": 16,
    "norm_eps": 1e-5,
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and the cores are shared; tests that
    exercise the multi-threaded path ask for `two_threads`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def two_threads(_one_thread):
    torch.set_num_threads(2)
    yield


def random_model(params: dict | None = None, seed: int = 0, **overrides) -> Transformer:
    params = dict(params or TINY)
    params.update(overrides)
    args = ModelArgs.from_params(params, max_seq_len=128)
    return init_weights(Transformer(args), seed=seed, std=0.1).eval().requires_grad_(False)


def write_random_checkpoint(
    path: Path, params: dict | None = None, *, shards: int = 1, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A random model saved in the original layout; returns its full state dict."""
    params = dict(params or TINY)
    model = random_model(params, seed=seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(path, state, params, shards=shards)
    return state


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real demo checkpoint (trained as `make_demo_checkpoint` does), 2 shards."""
    out = tmp_path_factory.mktemp("demo")
    build_demo_checkpoint(out, shards=2, seed=0)
    return out


@pytest.fixture(scope="session")
def demo_tokenizer(demo_dir: Path) -> Tokenizer:
    return Tokenizer(demo_dir / "tokenizer.model")


@pytest.fixture(scope="session")
def llama_tokenizer() -> Tokenizer:
    assert LLAMA_TOKENIZER.is_file(), (
        f"the original LLaMA tokenizer must be at {LLAMA_TOKENIZER} (the repository's test data)"
    )
    return Tokenizer(LLAMA_TOKENIZER)
