from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from inference.llama.hf import to_transformers
from inference.llama.model import ModelArgs, apply_rope, ffn_hidden_dim, rope_table, small_linear

from .conftest import TINY, random_model


@pytest.mark.parametrize(
    ("dim", "multiple_of", "multiplier", "expected"),
    [
        (4096, 256, None, 11008),  # 7B
        (5120, 256, None, 13824),  # 13B
        (6656, 256, None, 17920),  # 33B
        (8192, 256, None, 22016),  # 65B
        (8192, 4096, 1.3, 28672),  # LLaMA 2 70B
    ],
)
def test_ffn_hidden_size_follows_the_original_rule(dim, multiple_of, multiplier, expected):
    assert ffn_hidden_dim(dim, multiple_of, multiplier) == expected


def test_state_dict_has_the_original_release_names():
    model = random_model(n_layers=1)
    assert set(model.state_dict()) == {
        "tok_embeddings.weight",
        "layers.0.attention.wq.weight",
        "layers.0.attention.wk.weight",
        "layers.0.attention.wv.weight",
        "layers.0.attention.wo.weight",
        "layers.0.feed_forward.w1.weight",
        "layers.0.feed_forward.w2.weight",
        "layers.0.feed_forward.w3.weight",
        "layers.0.attention_norm.weight",
        "layers.0.ffn_norm.weight",
        "norm.weight",
        "output.weight",
    }
    assert model.layers[0].attention.wk.weight.shape == (4 * 8, 64)  # 4 kv heads of 8


def test_rope_rotates_interleaved_pairs():
    head_dim, theta = 8, 500000.0
    x = torch.randn(1, 5, 2, head_dim)  # [B, T, H, D]
    out = apply_rope(x, rope_table(head_dim, 5, theta))
    for pos in range(5):
        for j in range(head_dim // 2):
            angle = pos * theta ** (-2 * j / head_dim)
            a, b = x[0, pos, :, 2 * j], x[0, pos, :, 2 * j + 1]
            expected0 = a * math.cos(angle) - b * math.sin(angle)
            expected1 = a * math.sin(angle) + b * math.cos(angle)
            torch.testing.assert_close(out[0, pos, :, 2 * j], expected0, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(out[0, pos, :, 2 * j + 1], expected1, atol=1e-5, rtol=1e-5)


VARIANTS = {
    "mha": {"n_kv_heads": None},
    "gqa": {"n_kv_heads": 2},
    "rope_theta_eps_multiplier": {
        "rope_theta": 500000.0,
        "norm_eps": 1e-6,
        "ffn_dim_multiplier": 1.3,
    },
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_transformers(variant):
    model = random_model(**VARIANTS[variant])
    hf = to_transformers(model)
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(tokens)
        theirs = hf(tokens).logits
    assert ours.shape == (2, 24, 256)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_the_parameters_come_from_params_json():
    args = ModelArgs.from_params({**TINY, "rope_theta": 1e6, "norm_eps": 1e-6, "extra": 1})
    model = random_model({**TINY, "rope_theta": 1e6, "norm_eps": 1e-6})
    assert args.rope_theta == 1e6
    assert model.norm.eps == 1e-6
    assert model.layers[0].attention_norm.eps == 1e-6
    with pytest.raises(ValueError, match="scaled RoPE"):
        ModelArgs.from_params({**TINY, "use_scaled_rope": True})


@pytest.mark.parametrize("threads", [1, 2])
def test_cached_prefill_and_decode_equal_the_full_forward(threads):
    torch.set_num_threads(threads)
    model = random_model()
    tokens = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        full = model(tokens)
        cache = model.new_cache(3, 32)
        first = model.prefill(tokens[:, :12], cache, torch.arange(3), None)
        torch.testing.assert_close(first, full[:, :12], atol=1e-5, rtol=0)
        for t in range(12, 20):
            step = model.decode(tokens[:, t], torch.full((3,), t), cache)
            torch.testing.assert_close(step, full[:, t], atol=1e-5, rtol=0)


def test_decode_rows_at_different_positions_match_their_own_forward():
    model = random_model()
    gen = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, 256, (n,), generator=gen) for n in (5, 11, 8)]
    with torch.inference_mode():
        cache = model.new_cache(3, 32)
        width = max(len(s) for s in seqs)
        padded = torch.zeros(3, width, dtype=torch.long)
        for i, s in enumerate(seqs):
            padded[i, : len(s)] = s
        # Right-padded prefill of everything but the last token, then one decode step
        # with each row at its own position.
        last = torch.tensor([len(s) - 2 for s in seqs])
        model.prefill(padded, cache, torch.arange(3), last)
        step = model.decode(
            torch.stack([s[-1] for s in seqs]), torch.tensor([len(s) - 1 for s in seqs]), cache
        )
        for i, s in enumerate(seqs):
            torch.testing.assert_close(step[i], model(s[None])[0, -1], atol=1e-5, rtol=0)


def test_small_linear_is_bitwise_the_linear(two_threads):
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(96, 40, generator=gen)
    for shape in [(1, 40), (3, 1, 40), (16, 40)]:
        x = torch.randn(*shape, generator=gen)
        assert torch.equal(small_linear(x, w), F.linear(x, w))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_runs_close_to_float32(dtype):
    model = random_model()
    tokens = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = model(tokens)
        half = model.to(dtype)
        out = half(tokens)
        cache = half.new_cache(2, 16)
        half.prefill(tokens[:, :9], cache, torch.arange(2), torch.tensor([8, 8]))
        step = half.decode(tokens[:, 9], torch.tensor([9, 9]), cache)
    assert cache.k[0].dtype == dtype
    assert out.dtype == torch.float32  # logits come back in float32
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert (step - ref[:, 9]).abs().max() < 0.05 * ref.abs().max()


def test_positions_beyond_the_context_are_refused():
    model = random_model()
    with pytest.raises(ValueError, match="context length 128"):
        model(torch.zeros(1, 129, dtype=torch.long))
