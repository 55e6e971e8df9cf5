"""A tiny demo checkpoint in the original release layout, built from text the project ships.

`build_demo_checkpoint(out_dir, shards=N, seed=S)` trains a SentencePiece tokenizer (BPE
with byte fallback, like LLaMA's) on `data/demo_corpus.txt`, trains a small LLaMA on the
same text for a few hundred steps, so that the demo writes words rather than noise, and
writes `params.json` (v1 keys, vocab_size -1), `consolidated.NN.pth` split by the
model-parallel rule, `tokenizer.model` and `checklist.chk`.

Deterministic: the same seed gives byte-identical files. Training runs on one thread for
that (float sums depend on how work is split over threads) and the whole build takes
well under a minute on two cores.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch

from .checkpoint import save_checkpoint
from .model import ModelArgs, Transformer, init_weights
from .tokenizer import Tokenizer

CORPUS = Path(__file__).parent / "data" / "demo_corpus.txt"

# v1 params.json keys only, so the original release's code would load it too. Every size
# divides by 8, so `--shards` may be 1, 2, 4 or 8.
DEMO_PARAMS: dict[str, Any] = {
    "dim": 128,
    "multiple_of": 32,
    "n_heads": 8,
    "n_layers": 4,
    "norm_eps": 1e-05,
    "vocab_size": -1,
}
DEMO_VOCAB = 1024
DEMO_STEPS = 300
DEMO_SEQ_LEN = 64
DEMO_BATCH = 16


def train_tokenizer(text: str, vocab_size: int = DEMO_VOCAB) -> bytes:
    """A SentencePiece model with LLaMA's settings (BPE, byte fallback, split digits,
    identity normalisation; unk 0, BOS 1, EOS 2, no pad)."""
    lines = [line for line in text.splitlines() if line.strip()]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,  # deterministic merges
        shuffle_input_sentence=False,
        minloglevel=2,
    )
    return out.getvalue()


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(
    model: Transformer,
    data: torch.Tensor,
    *,
    steps: int,
    seed: int,
    seq_len: int = DEMO_SEQ_LEN,
    batch: int = DEMO_BATCH,
    lr: float = 3e-3,
    log: Callable[[str], None] | None = None,
) -> float:
    """Next-token training on random windows of `data`; returns the last loss."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warmup = max(1, steps // 10)
    loss_value = float("nan")
    model.train()
    for step in range(steps):
        # Warm up, then cosine decay to a tenth.
        scale = (
            (step + 1) / warmup
            if step < warmup
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        )
        for group in opt.param_groups:
            group["lr"] = lr * scale
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=gen)
        window = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
        logits = model(window[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_value = loss.item()
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"step {step:4d}  loss {loss_value:.3f}")
    model.eval()
    return loss_value


def build_demo_checkpoint(
    out_dir: str | Path,
    *,
    shards: int = 1,
    seed: int = 0,
    steps: int = DEMO_STEPS,
    corpus: str | Path = CORPUS,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write the demo checkpoint into `out_dir`; returns the files written."""
    if shards not in (1, 2, 4, 8):
        raise ValueError("shards must be 1, 2, 4 or 8")
    started = time.monotonic()
    text = Path(corpus).read_text(encoding="utf-8")
    proto = train_tokenizer(text)
    tokenizer = Tokenizer(model_proto=proto)
    args = ModelArgs.from_params(DEMO_PARAMS, vocab_size=tokenizer.n_words)
    # Paragraphs as documents: BOS before each, as the original pretraining data had.
    ids: list[int] = []
    for para in text.split("\n\n"):
        if para.strip():
            ids.extend(tokenizer.encode(para.strip(), bos=True, eos=False))
    data = torch.tensor(ids)
    if log:
        log(f"tokenizer: {tokenizer.n_words} pieces; corpus: {len(ids)} tokens")
    with _threads(1):
        torch.manual_seed(seed)
        model = init_weights(Transformer(args), seed=seed)
        loss = train(model, data, steps=steps, seed=seed, log=log) if steps else float("nan")
    # Half precision, as the original checkpoints were released.
    state = {k: v.detach().to(torch.float16) for k, v in model.state_dict().items()}
    files = save_checkpoint(
        out_dir, state, DEMO_PARAMS, shards=shards, tokenizer_model=proto, checklist=True
    )
    if log:
        log(f"final loss {loss:.3f}; wrote {len(files)} files in {time.monotonic() - started:.1f}s")
    return files
