"""`export_hf(ckpt_dir, out_dir)`: a checkpoint in the original layout -> a transformers
folder that `LlamaForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` load.

Writes `model.safetensors` (the weights renamed, wq/wk rows permuted for transformers'
half-split RoPE: see `hf.py`), `config.json`, `generation_config.json`, and the tokenizer:
`tokenizer.model` (SentencePiece, as released), `tokenizer.json` (the same BPE for the
`tokenizers` library), `tokenizer_config.json` and `special_tokens_map.json`.

Why `tokenizer.json` is built here: transformers cannot convert every SentencePiece BPE
model with byte fallback (the demo's, for one) to a fast tokenizer by itself. The BPE's
vocabulary is SentencePiece's pieces; its merges are every split of a piece into two
pieces, ranked by the merged piece's score (SentencePiece's BPE applies the best-scoring
merge first). The normaliser and decoder are LLaMA's: a
word marker in front and for every space, byte fallback, no pre-tokeniser.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .checkpoint import find_tokenizer
from .engine import Llama, resolve_dtype
from .hf import transformers_config, transformers_state_dict
from .tokenizer import Tokenizer

_SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """The SentencePiece model as a `tokenizers` BPE tokenizer (JSON)."""
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers import decoders, models, normalizers, processors

    sp = tokenizer.sp
    vocab = {sp.id_to_piece(i): i for i in range(sp.vocab_size())}
    merges: list[tuple[str, str]] = []
    # SentencePiece's BPE applies the merge whose result scores highest; whitespace runs
    # in LLaMA's model score -1e9 and so come last, whatever their ids.
    for piece, pid in sorted(vocab.items(), key=lambda kv: (-sp.get_score(kv[1]), kv[1])):
        if sp.is_control(pid) or sp.is_byte(pid) or sp.is_unknown(pid) or len(piece) < 2:
            continue
        splits = sorted(
            (vocab[piece[:k]], vocab[piece[k:]], piece[:k], piece[k:])
            for k in range(1, len(piece))
            if piece[:k] in vocab and piece[k:] in vocab
        )
        merges += [(a, b) for _, _, a, b in splits]
    unk = sp.id_to_piece(sp.unk_id())
    fast = FastTokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    fast.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    fast.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    bos = sp.id_to_piece(tokenizer.bos_id)
    fast.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_id)]
    )
    special = [sp.id_to_piece(i) for i in (sp.unk_id(), tokenizer.bos_id, tokenizer.eos_id)]
    from tokenizers import AddedToken

    fast.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return fast.to_str()


def export_hf(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str | torch.dtype = "float16",
    tokenizer: str | Path | None = None,
) -> Path:
    """Write the transformers folder; returns it."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_dtype = resolve_dtype(dtype)
    llama = Llama.load(ckpt_dir, dtype=torch_dtype, tokenizer=tokenizer)
    args = llama.model.args
    state = transformers_state_dict(llama.model.state_dict(), args)
    save_file(
        {k: v.detach().to(torch_dtype).contiguous().clone() for k, v in state.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    config = transformers_config(args)
    config.dtype = torch_dtype
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(out)
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": llama.tokenizer.bos_id, "eos_token_id": llama.tokenizer.eos_id})
        + "\n"
    )
    source = Path(tokenizer) if tokenizer else find_tokenizer(ckpt_dir)
    if source is not None:
        shutil.copyfile(source, out / "tokenizer.model")
    (out / "tokenizer.json").write_text(tokenizer_json(llama.tokenizer))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": args.max_seq_len,
                "add_bos_token": True,
                "add_eos_token": False,
                "clean_up_tokenization_spaces": False,
                **_SPECIAL,
            },
            indent=2,
        )
        + "\n"
    )
    (out / "special_tokens_map.json").write_text(json.dumps(_SPECIAL, indent=2) + "\n")
    return out
