"""Conversion to Hugging Face transformers' LlamaForCausalLM, for tests and benchmarks.

transformers rotates the two halves of each head (rotate_half) where the original code
rotates interleaved pairs, so its conversion script permutes the rows of wq and wk; the
same permutation is applied here. transformers is imported lazily: the engine itself does
not depend on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from .model import ModelArgs, Transformer

if TYPE_CHECKING:
    from transformers import LlamaConfig, LlamaForCausalLM


def permute_rotary(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved-pair rows -> half-split rows, per head (transformers' convert script)."""
    out_features, dim = w.shape
    head_dim = out_features // n_heads
    return w.view(n_heads, head_dim // 2, 2, dim).transpose(1, 2).reshape(out_features, dim)


def transformers_config(args: ModelArgs) -> LlamaConfig:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.hidden_dim,
        num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads,
        num_key_value_heads=args.kv_heads,
        rms_norm_eps=args.norm_eps,
        max_position_embeddings=args.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def transformers_state_dict(
    state_dict: Mapping[str, torch.Tensor], args: ModelArgs
) -> dict[str, torch.Tensor]:
    out = {
        "model.embed_tokens.weight": state_dict["tok_embeddings.weight"],
        "model.norm.weight": state_dict["norm.weight"],
        "lm_head.weight": state_dict["output.weight"],
    }
    for i in range(args.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        out[dst + "self_attn.q_proj.weight"] = permute_rotary(
            state_dict[src + "attention.wq.weight"], args.n_heads
        )
        out[dst + "self_attn.k_proj.weight"] = permute_rotary(
            state_dict[src + "attention.wk.weight"], args.kv_heads
        )
        names = {
            "attention.wv": "self_attn.v_proj",
            "attention.wo": "self_attn.o_proj",
            "feed_forward.w1": "mlp.gate_proj",
            "feed_forward.w2": "mlp.down_proj",
            "feed_forward.w3": "mlp.up_proj",
            "attention_norm": "input_layernorm",
            "ffn_norm": "post_attention_layernorm",
        }
        for a, b in names.items():
            out[dst + b + ".weight"] = state_dict[src + a + ".weight"]
    return out


def to_transformers(model: Transformer, attn_implementation: str = "sdpa") -> LlamaForCausalLM:
    """A LlamaForCausalLM with copies of `model`'s weights, same dtype and device."""
    from transformers import LlamaForCausalLM

    if model.par.enabled:
        raise ValueError("convert the merged model, not one tensor-parallel rank")
    config = transformers_config(model.args)
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        hf = LlamaForCausalLM(config)
    sd = {
        k: v.detach().clone()
        for k, v in transformers_state_dict(model.state_dict(), model.args).items()
    }
    hf.load_state_dict(sd, strict=True, assign=True)
    # Buffers (rotary inv_freq) were created on meta: rebuild them on the real device.
    hf.model.rotary_emb = type(hf.model.rotary_emb)(config)
    return hf.to(device=model.device, dtype=model.dtype).eval()
