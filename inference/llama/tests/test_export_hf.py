"""`python -m inference.llama export-hf`: a folder transformers loads, with the engine's
logits and SentencePiece's token ids."""

from __future__ import annotations

import random

import pytest
import torch

from inference.llama import Llama
from inference.llama.__main__ import main
from inference.llama.export import tokenizer_json

from .conftest import ROOT

SAMPLES = [
    "The river begins",
    "Hello  world\n\nnew 123 é ü 日本 😀",
    " leading space",
    "tab\tand\u00a0nbsp",
    "",
]


def _corpus_samples(n: int = 300) -> list[str]:
    text = (ROOT / "inference" / "llama" / "data" / "demo_corpus.txt").read_text()
    rnd = random.Random(0)
    out = []
    for _ in range(n):
        i = rnd.randrange(len(text) - 200)
        out.append(text[i : i + rnd.randrange(1, 200)])
    return out


def test_export_hf_loads_in_transformers_with_the_engines_logits(demo_dir, tmp_path, capsys):
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = tmp_path / "demo-hf"
    assert main(["export-hf", str(demo_dir), str(out), "--dtype", "float32"]) == 0
    assert "wrote" in capsys.readouterr().out
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer.model"):
        assert (out / name).is_file(), name

    hf = LlamaForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(out)
    llama = Llama.load(demo_dir, dtype="float32")
    ids = llama.tokenizer.encode("The river begins to flow past the old mill", bos=True)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits[0]
        ours = llama.model.forward(torch.tensor([ids]))[0]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)

    for text in SAMPLES + _corpus_samples():
        assert tok(text)["input_ids"] == llama.tokenizer.encode(text, bos=True), text
        assert tok(text, add_special_tokens=False)["input_ids"] == llama.tokenizer.encode(
            text, bos=False
        )
        ids = llama.tokenizer.encode(text, bos=False)
        assert tok.decode(ids) == llama.tokenizer.decode(ids)
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)


@pytest.mark.parametrize("dtype", ["float16"])
def test_export_hf_keeps_the_requested_dtype(demo_dir, tmp_path, dtype):
    from safetensors import safe_open

    out = tmp_path / "hf"
    assert main(["export-hf", str(demo_dir), str(out), "--dtype", dtype]) == 0
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.get_tensor("lm_head.weight").dtype == getattr(torch, dtype)


def test_the_original_llama_tokenizer_converts_to_the_same_ids(llama_tokenizer):
    from tokenizers import Tokenizer as FastTokenizer

    fast = FastTokenizer.from_str(tokenizer_json(llama_tokenizer))
    for text in SAMPLES + _corpus_samples(100):
        assert fast.encode(text).ids == llama_tokenizer.encode(text, bos=True), text
        ids = llama_tokenizer.encode(text, bos=False)
        assert fast.decode(ids) == llama_tokenizer.decode(ids)
