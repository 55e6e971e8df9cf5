"""The inference form of the weights: fused projections against the module-by-module
reference, and bfloat16 / float16 / int8 against float32.

Tolerances are on the logits' scale (the largest |logit| of the float32 reference) and
come from what these formats can hold: bfloat16 keeps 8 bits of mantissa (relative
rounding 2^-9 per value, accumulated over the layers), float16 11 bits, int8 weights
one part in 254 of the largest weight of each group of 32 input columns.
Measured maxima over the cases here: bfloat16 2.2%, float16 0.2%, int8 2.7% (groups of
32 input columns, float32 activations); the bounds below leave about 2x of room, no more.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.llama import cpu_kernels, int8_groups, kernels
from inference.llama.__main__ import main
from inference.llama.engine import Llama
from inference.llama.generation import BatchDecoder, SamplingParams
from inference.llama.hf import to_transformers
from inference.llama.kernels import half_linear
from inference.llama.model import KVCache, ThreadChooser

from .conftest import random_model

# Largest |logit - float32 logit| over the largest |float32 logit|.
TOLERANCE = {"bfloat16": 0.03, "float16": 0.004, "int8": 0.05, "q8_0": 0.05}

# The kernel builds this host runs, each test of a kernel takes each in turn: the AVX2 one
# wherever the kernels build, the AVX-512 one where the CPU has its flags too (so an AVX2
# CI host covers the first, this VM both).
ISAS = [isa for isa in ("avx2", "avx512") if cpu_kernels.supported(isa)]

VARIANTS = {"gqa": {}, "mha": {"n_kv_heads": None}, "theta": {"rope_theta": 500000.0}}


def variant_model(precision: str, seed: int = 0, **overrides):
    model = random_model(seed=seed, **overrides)
    if precision in ("int8", "q8_0"):
        return model.prepare(precision)
    if precision != "float32":
        model = model.to(getattr(torch, precision))
    return model


def tokens(seed: int, shape=(3, 20)) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed))


def cached_logits(model, toks: torch.Tensor, prompt: int, cache=None) -> torch.Tensor:
    """Logits of positions prompt..T-1 by prefill then one decode step per position, into
    `cache` if given (else a new one of the model's)."""
    bsz, total = toks.shape
    cache = cache if cache is not None else model.new_cache(bsz, total)
    model.prefill(toks[:, :prompt], cache, torch.arange(bsz), None)
    steps = [
        model.decode(toks[:, t], torch.full((bsz,), t), cache, span=t + 1)
        for t in range(prompt, total)
    ]
    return torch.stack(steps, dim=1)


# -- fused against the reference -----------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_model_equals_the_unfused_reference(variant, threads):
    torch.set_num_threads(threads)
    model = random_model(**VARIANTS[variant])
    toks = tokens(1)
    with torch.inference_mode():
        model.fused = False
        ref_full = model(toks)
        ref_steps = cached_logits(model, toks, 12)
        model.fused = True
        full = model(toks)
        steps = cached_logits(model, toks, 12)
    assert model.layers[0].attention.qkv is not None  # the fused path did run
    torch.testing.assert_close(full, ref_full, atol=1e-5, rtol=0)
    torch.testing.assert_close(steps, ref_steps, atol=1e-5, rtol=0)
    torch.testing.assert_close(steps, ref_full[:, 12:], atol=1e-5, rtol=0)


def test_fusing_keeps_the_parameters_and_their_names():
    model = random_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.prepare()
    after = model.state_dict()
    assert list(after) == list(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    attn = model.layers[0].attention
    # No second copy: the parameters are views of the fused matrix.
    assert attn.wq.weight.data_ptr() == attn.qkv.weight.data_ptr()
    assert attn.wk.weight.untyped_storage().data_ptr() == attn.qkv.weight.data_ptr()
    # transformers still reads the original names and layout.
    hf = to_transformers(model)
    toks = tokens(2, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(toks), hf(toks).logits, atol=1e-4, rtol=0)


def test_prepared_weights_follow_a_dtype_change():
    model = random_model()
    toks = tokens(3, (2, 10))
    with torch.inference_mode():
        ref = model(toks)
        half = model.to(torch.bfloat16)
        out = half(toks)
    assert half.layers[0].attention.qkv.weight.dtype == torch.bfloat16
    assert (out - ref).abs().max() <= TOLERANCE["bfloat16"] * ref.abs().max()


def test_training_takes_the_reference_path_with_gradients():
    model = random_model().requires_grad_(True).train()
    loss = model(tokens(4, (2, 8))).logsumexp(-1).mean()
    loss.backward()
    assert model.layers[0].attention.wq.weight.grad is not None
    assert model.layers[0].feed_forward.w3.weight.grad is not None


# -- precisions against float32 ------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("precision", list(TOLERANCE))
def test_logits_stay_within_the_stated_tolerance_of_float32(precision, variant):
    overrides = VARIANTS[variant]
    toks = tokens(5)
    with torch.inference_mode():
        ref_model = random_model(**overrides)
        ref = ref_model(toks)
        model = variant_model(precision, **overrides)
        full = model(toks)
        steps = cached_logits(model, toks, 12)
    bound = TOLERANCE[precision] * ref.abs().max()
    assert full.dtype == steps.dtype == torch.float32
    assert (full - ref).abs().max() <= bound
    assert (steps - ref[:, 12:]).abs().max() <= bound


@pytest.mark.parametrize("precision", list(TOLERANCE))
def test_greedy_tokens_agree_with_float32_where_the_margin_allows(precision):
    """Where float32's top token leads the runner-up by more than twice the tolerance,
    the lower precision must pick the same token; elsewhere a different pick is a tie
    broken by rounding, which is counted, not failed."""
    toks = tokens(6, (4, 24))
    with torch.inference_mode():
        ref = random_model()(toks)
        low = variant_model(precision)(toks)
    bound = TOLERANCE[precision] * ref.abs().max()
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * bound
    same = ref.argmax(-1) == low.argmax(-1)
    assert clear.sum() >= 10  # the check has cases to bite on
    assert same[clear].all()
    assert same.float().mean() >= 0.75


def test_int8_quantization_keeps_a_loud_weight_to_its_group():
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(7))
    w[3, 40] = 100.0  # one loud weight must not cost its row's other groups their precision
    q, scale = int8_groups.quantize(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (48, 4)
    back = int8_groups.dequantize(q, scale, torch.float32)
    assert (back - w).abs().max() <= scale.float().max() / 2
    assert scale[3, 1] > 20 * scale[3, 0]  # the loud weight's group
    assert scale[3, 0] < 2 * scale[4, 0]  # the rest of its row as precise as any other row


@settings(max_examples=30, deadline=None)
@given(
    out_f=st.integers(1, 40),
    groups=st.integers(1, 6),
    width=st.sampled_from([32, 16, 8, 1]),
    log_scale=st.floats(-12, 6),
    seed=st.integers(0, 2**16),
)
def test_int8_rounding_stays_within_half_a_step(out_f, groups, width, log_scale, seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, groups * width, generator=gen) * 2.0**log_scale
    q, scale = int8_groups.quantize(w)
    step = scale.float().repeat_interleave(w.shape[1] // scale.shape[1], dim=1)
    assert q.abs().max() <= 127
    assert ((int8_groups.dequantize(q, scale, torch.float32) - w).abs() <= step / 2).all()
    # The step is the group's own: its largest weight over 127 (float16-rounded, at
    # least float16's smallest normal number).
    amax = w.abs().reshape(out_f, scale.shape[1], -1).amax(-1)
    expect = (amax / 127).clamp(min=2.0**-14)
    assert ((scale.float() - expect).abs() <= expect * 2.0**-10).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 8, 16, 17])
def test_int8_kernel_equals_the_dequantized_product(rows, isa, two_threads, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_kernel", cpu_kernels.module(isa))
    gen = torch.Generator().manual_seed(rows)
    w = torch.randn(200, 256, generator=gen) * 0.05
    q, scale = int8_groups.quantize(w)
    x = torch.randn(rows, 256, generator=gen)
    ref = x.double() @ int8_groups.dequantize(q, scale, torch.float64).T
    out = int8_groups.matmul(x, q, scale)
    assert int8_groups.kernel() is not None  # built here (AVX2 CPU with a compiler)
    # float32 sums of 256 products in another order than float64's.
    torch.testing.assert_close(out.double(), ref, atol=1e-4, rtol=1e-5)
    half = int8_groups.matmul(x.bfloat16(), q, scale)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.double(), ref, atol=0.05, rtol=0.02)


def test_int8_model_reads_about_a_quarter_of_the_float32_bytes():
    fp32 = random_model().prepare()
    int8 = random_model().prepare("int8")
    assert int8.layers[0].attention.wq.weight.device.type == "meta"  # float copy released
    assert int8.dtype == torch.float32  # activations: the model's own dtype
    assert int8.weight_bytes() < 0.3 * fp32.weight_bytes()


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_batch_decoder_runs_rows_at_different_positions(precision, two_threads):
    model = variant_model(precision)
    prompts = [[1, 5, 9, 200], [1, 17], [1, 99, 98, 97, 96, 95]]
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    decoder = BatchDecoder(model, None, max_batch_size=3, max_seq_len=16)
    ids = [decoder.add(p, params) for p in prompts]
    done = {c.request_id: c for c in decoder.run()}
    # Each row alone, decoded by a fresh cache, gives its own greedy tokens.
    for rid, prompt in zip(ids, prompts, strict=True):
        alone = BatchDecoder(model, None, max_batch_size=1, max_seq_len=16)
        alone.add(prompt, params)
        [single] = list(alone.run())
        assert done[rid].tokens == single.tokens


def test_llama_load_quantizes_on_request(demo_dir):
    with pytest.raises(ValueError, match="unknown quantization"):
        Llama.load(demo_dir, quantize="int4")
    fp32 = Llama.load(demo_dir)
    int8 = Llama.load(demo_dir, quantize="int8")
    assert fp32.model.layers[0].attention.qkv is not None  # fused at load
    assert int8.model.quantize == "int8" and int8.model.dtype == torch.float32
    toks = tokens(8, (2, 10)) % fp32.model.args.vocab_size
    with torch.inference_mode():
        ref, out = fp32.model(toks), int8.model(toks)
    assert (out - ref).abs().max() <= TOLERANCE["int8"] * ref.abs().max()


@pytest.mark.parametrize("quantize", ["int8", "q8_0"])
def test_cli_generates_with_int8_weights(capsys, demo_dir, quantize):
    code = main(
        ["generate", "--ckpt", str(demo_dir), "--prompt", "The old keeper",
         "--temperature", "0", "--max-new-tokens", "8", "--quantize", quantize, "--json"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    [line] = out.splitlines()
    assert len(json.loads(line)["tokens"]) == 8


# -- threads -------------------------------------------------------------------------------
def test_thread_chooser_keeps_the_faster_count_and_retries_the_other():
    chooser = ThreadChooser(explore=4)
    assert chooser.choose(1, 1) == 1  # one thread: nothing to choose
    picks = [chooser.choose(1, 2) for _ in range(2)]
    assert picks == [2, 1]  # all threads, then one thread tried at once
    chooser.record(1, 2, 0.010)
    chooser.record(1, 1, 0.004)
    picks = [chooser.choose(1, 2) for _ in range(8)]
    assert picks.count(1) == 6 and picks.count(2) == 2  # the slower one every 4th step
    # A new batch size starts with what won for the others.
    assert chooser.choose(8, 2) == 1


def test_thread_chooser_tries_a_loser_less_often_and_switches_on_a_win():
    chooser = ThreadChooser(explore=4, longest=16)
    chooser.record(1, 2, 0.010)
    chooser.record(1, 1, 0.004)

    def until_try() -> int:
        for n in range(1, 100):
            if chooser.choose(1, 2) == 2:
                return n
        raise AssertionError("never tried")

    gaps = []
    for _ in range(4):
        gaps.append(until_try())
        chooser.record(1, 2, 0.009)  # the try loses again
    assert gaps == [4, 8, 16, 16]
    until_try()
    chooser.record(1, 2, 0.002)  # now it wins: its time replaces the stale average
    assert chooser.choose(1, 2) == 2
    assert chooser.interval[1] == 4


def test_static_decode_equals_the_dynamic_one():
    """decode(static=True), the shape-stable step a CUDA graph captures, attends over
    the whole cache under a mask: same logits, one row or several."""
    model = random_model()
    toks = tokens(10)
    with torch.inference_mode():
        full = model(toks)
        for rows in (1, 3):
            cache = model.new_cache(rows, 32)
            model.prefill(toks[:rows, :12], cache, torch.arange(rows), None)
            for t in range(12, 20):
                step = model.decode(toks[:rows, t], torch.full((rows,), t), cache, static=True)
                torch.testing.assert_close(step, full[:rows, t], atol=1e-5, rtol=0)


# -- packed (oneDNN layout) ------------------------------------------------------------------
def test_packed_float32_weights_equal_the_reference_and_give_back_the_state_dict(monkeypatch):
    # float32 is packed only where the fused decode step does not run (it takes the
    # plain matrices): switched off here.
    monkeypatch.setenv("LLAMA_FUSED_DECODE", "0")
    model = random_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    toks = tokens(11)
    with torch.inference_mode():
        model.fused = False
        ref_full = model(toks)
        model.fused = True
        model.prepare(pack=True)
        full = model(toks)
        steps = cached_logits(model, toks, 12)
    assert model.layers[0].attention.qkv.kind == "packed"
    assert model.layers[0].attention.wq.weight.device.type == "meta"  # no second copy
    torch.testing.assert_close(full, ref_full, atol=1e-5, rtol=0)
    torch.testing.assert_close(steps, ref_full[:, 12:], atol=1e-5, rtol=0)
    after = model.state_dict()
    assert list(after) == list(before)
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    hf = to_transformers(model)
    with torch.no_grad():
        torch.testing.assert_close(hf(toks).logits, ref_full, atol=1e-4, rtol=0)


def test_packed_bfloat16_stays_within_its_tolerance():
    toks = tokens(12)
    with torch.inference_mode():
        ref = random_model()(toks)
        model = random_model().to(torch.bfloat16).prepare(pack=True)
        full = model(toks)
        steps = cached_logits(model, toks, 12)
    bound = TOLERANCE["bfloat16"] * ref.abs().max()
    assert (full - ref).abs().max() <= bound
    assert (steps - ref[:, 12:]).abs().max() <= bound


def test_an_int8_state_dict_holds_the_dequantized_weights():
    model = random_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = model.prepare("int8").state_dict()
    for name in ("layers.1.feed_forward.w3.weight", "layers.0.feed_forward.w2.weight"):
        w, back = before[name], after[name]
        _, scale = int8_groups.quantize(w)
        step = scale.float().repeat_interleave(w.shape[1] // scale.shape[1], dim=1)
        assert back.dtype == torch.float32
        assert ((back - w).abs() <= step / 2).all(), name


def test_a_q8_0_state_dict_from_its_blocks_is_int8s():
    """q8_0 holds the weights in 16-row blocks (`int8_groups.pack`; the output's 250 rows
    end in a short block): its state dict, unpacked and dequantized, is int8's exactly."""
    model = random_model(vocab_size=250)
    q8 = copy.deepcopy(model).prepare("q8_0")
    assert q8._out.blocks and q8.layers[0].attention.qkv.blocks
    int8 = model.prepare("int8").state_dict()
    back = q8.state_dict()
    assert back.keys() == int8.keys()
    for name, w in int8.items():
        assert torch.equal(back[name], w), name


def test_int8_without_the_kernel_dequantizes_to_the_same_logits(monkeypatch):
    toks = tokens(13)
    with torch.inference_mode():
        model = variant_model("int8")
        fast = model(toks)
        fast_steps = cached_logits(model, toks, 12)
        monkeypatch.setattr(cpu_kernels, "_kernel", False)  # as where it cannot be built
        slow = model(toks)
        slow_steps = cached_logits(model, toks, 12)
    torch.testing.assert_close(fast, slow, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast_steps, slow_steps, atol=1e-4, rtol=0)


def test_int8_groups_beat_one_scale_per_row_on_weights_with_outliers():
    """Real checkpoints have a few large weights per row; with one scale per row they
    would coarsen the whole row; with groups only the outlier's 32 neighbours. Rounding
    noise then falls on 32 of 256 weights a row instead of all of them: sqrt(8) = 2.8x
    less error expected (measured 2.8x), asserted 2x."""
    gen = torch.Generator().manual_seed(14)
    model = random_model(dim=256, n_heads=4, n_kv_heads=2)
    state = model.state_dict()
    for name, w in state.items():
        if w.dim() == 2 and "tok_embeddings" not in name:
            rows = torch.arange(w.shape[0])
            cols = torch.randint(0, w.shape[1], (w.shape[0],), generator=gen)
            w[rows, cols] *= 30.0  # one loud weight per row
    model.load_state_dict(state)
    per_row = {}
    for name, w in state.items():
        if w.dim() == 2 and "tok_embeddings" not in name:
            step = w.abs().amax(dim=1, keepdim=True) / 127
            w = torch.round(w / step) * step
        per_row[name] = w
    toks = tokens(15, (2, 16))
    with torch.inference_mode():
        ref = model(toks)
        row_model = random_model(dim=256, n_heads=4, n_kv_heads=2)
        row_model.load_state_dict(per_row)
        row_err = (row_model(toks) - ref).abs().max()
        group_err = (model.prepare("int8")(toks) - ref).abs().max()
    assert group_err < row_err / 2


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("rows", [2, 3, 4, 5, 8, 16])
def test_half_kernel_equals_float32_products_of_the_same_values(
    dtype, rows, isa, two_threads, monkeypatch
):
    """half_mm (2-16 rows of float16/bfloat16 weights): float32 products and sums of the
    same half-precision values, rounded once to the output dtype."""
    monkeypatch.setattr(cpu_kernels, "_kernel", cpu_kernels.module(isa))
    gen = torch.Generator().manual_seed(rows)
    w = (torch.randn(200, 256, generator=gen) * 0.05).to(dtype)
    x = torch.randn(rows, 256, generator=gen).to(dtype)
    ref = (x.double() @ w.double().T).to(dtype)
    out = half_linear(x, w)
    assert cpu_kernels.kernel() is not None
    assert out.dtype == dtype
    # One rounding of the result to the output dtype: half an ulp, plus float32 sums.
    ulp = 2.0**-10 if dtype == torch.float16 else 2.0**-7
    tol = ref.double().abs() * ulp + 1e-5
    assert ((out.double() - ref.double()).abs() <= tol).all()


class _Counting:
    """The built kernel module, counting calls by name (to see which path a matmul took)."""

    def __init__(self, mod):
        self.mod, self.calls = mod, {}

    def __getattr__(self, name):
        fn = getattr(self.mod, name)

        def counted(*args):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*args)

        return counted


def _float64_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Float32 sums of K products, any order: at most (K + 1) float32 roundings of the sum
    of |products| (the textbook gamma_K bound, plus the product's own rounding)."""
    k = x.shape[-1]
    return (k + 1) * 2.0**-24 * (x.double().abs() @ w.double().abs().T) + 1e-30


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    out_f=st.integers(1, 70),
    width=st.integers(1, 300),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
    bf16_row=st.booleans(),
)
def test_one_row_half_kernel_equals_float64_products(
    isa, dtype, out_f, width, threads, seed, bf16_row
):
    """half_mv (one row, any width: AVX2 vector steps of 16 and 8 and a scalar tail,
    AVX-512 steps of 16 and a masked tail; output rows in blocks of 4 and single ones)
    against float64 products of the same values. A row of bfloat16 values (a bfloat16
    model's) against bfloat16 weights takes AVX-512's vdpbf16ps (32 columns a step, a
    masked last one)."""
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(out_f, width, generator=gen) * 0.05).to(dtype)
    x = torch.randn(1, width, generator=gen)
    if bf16_row:
        x = x.bfloat16().float()
    torch.set_num_threads(threads)  # conftest's _one_thread restores it after the test
    out = cpu_kernels.module(isa).half_mv(x, w)
    ref = x.double() @ w.double().T
    assert out.shape == (1, out_f) and out.dtype == torch.float32
    assert ((out.double() - ref).abs() <= _float64_bound(x, w)).all()


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=40, deadline=None)
@given(
    dtype=st.sampled_from([torch.float16, torch.bfloat16]),
    rows=st.integers(2, 16),
    out_f=st.integers(1, 90),
    groups=st.integers(1, 80),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_few_row_half_kernel_equals_float64_products(
    isa, dtype, rows, out_f, groups, threads, seed
):
    """half_mm's tiles (2 output rows x up to 4 activation rows, AVX-512: up to 8; odd
    remainders of each), width blocks (up to 2560 columns: several blocks and a short
    last one for 8-16 rows) and chunks handed out to 1 or 2 threads: every output against
    float64 products of the same values."""
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(out_f, groups * 32, generator=gen) * 0.05).to(dtype)
    x = torch.randn(rows, groups * 32, generator=gen)
    torch.set_num_threads(threads)  # conftest's _one_thread restores it after the test
    out = cpu_kernels.module(isa).half_mm(x, w)
    ref = x.double() @ w.double().T
    assert out.shape == (rows, out_f) and out.dtype == torch.float32
    assert ((out.double() - ref).abs() <= _float64_bound(x, w)).all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1000, 2059), (4099, 37), (3, 4096)])
def test_one_row_half_kernel_splits_wide_matrices_into_chunks(dtype, shape, isa, two_threads):
    """Matrices of many chunks (output rows handed out from a shared counter to two
    threads): every output row computed once, against float64; through `half_linear`
    with a half-precision row as the model gives it."""
    gen = torch.Generator().manual_seed(shape[1])
    w = (torch.randn(*shape, generator=gen) * 0.05).to(dtype)
    x = torch.randn(1, 1, shape[1], generator=gen).to(dtype)
    counting = _Counting(cpu_kernels.module(isa))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu_kernels, "_kernel", counting)
        mp.setattr(kernels, "aten_one_row_float16", lambda: False)  # as on an AVX2 host
        out = half_linear(x, w)
    assert counting.calls == {"half_mv": 1}
    assert out.shape == (1, 1, shape[0]) and out.dtype == dtype
    ref = x[0].double() @ w.double().T
    # float32 sums, then one rounding to the output dtype (half an ulp).
    ulp = 2.0**-11 if dtype == torch.float16 else 2.0**-8
    tol = _float64_bound(x[0], w) + ref.abs() * ulp * 1.01 + 2.0**-25  # float16 subnormals
    assert ((out[0].double() - ref).abs() <= tol).all()


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("isa", ISAS)
def test_batch_one_decode_with_the_one_row_kernel_matches_aten(precision, seed, isa, two_threads):
    """Decode at batch 1 in half precision goes through half_mv; its logits against ATen's
    path (the kernels switched off): the same float32 products summed in another order,
    so they differ only where a sum rounds to the other neighbouring half-precision value
    and that propagates. Measured at most 0.85% (bfloat16) and 0.09% (float16) of the
    largest float32 logit; bounded by half the tolerance against float32, and each path
    within that tolerance of float32."""
    toks = tokens(20 + seed, (1, 20))
    with torch.inference_mode():
        ref = random_model(seed=seed)(toks)[:, 8:]
        model = variant_model(precision, seed=seed)
        counting = _Counting(cpu_kernels.module(isa))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cpu_kernels, "_kernel", counting)
            mp.setattr(kernels, "aten_one_row_float16", lambda: False)  # as on an AVX2 host
            fast = cached_logits(model, toks, 8)
            mp.setattr(cpu_kernels, "_kernel", False)
            slow = cached_logits(model, toks, 8)
    per_step = 4 * model.args.n_layers + 1  # fused qkv, wo, fused w1/w3, w2; the output
    assert counting.calls.get("half_mv", 0) >= 12 * per_step  # every decode step's matmuls
    bound = TOLERANCE[precision] * ref.abs().max()
    assert (fast - slow).abs().max() <= bound / 2
    assert (fast - ref).abs().max() <= bound
    assert (slow - ref).abs().max() <= bound


def _q8_reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor):
    """llama.cpp's q8_0 x q8_0 in float64: x rounded per group of 32 to int8 (scale
    max|x| / 127, kept in float32; values x * (127 / max|x|) rounded half to even, as the
    kernel computes them), exact integer dot products per group, scaled. Also returns the
    bound of float32 scaling and summing over the groups."""
    rows, width = x.shape
    xg = x.reshape(rows, width // 32, 32)
    amax = xg.abs().amax(-1, keepdim=True)
    # tensor / tensor: IEEE float32 division (a scalar over a tensor is not, in torch)
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))
    xq = torch.round(xg * inv)
    d = (amax / 127.0).squeeze(-1)  # float32, as the kernel's
    qw = q.reshape(q.shape[0], -1, 32).double()
    dots = torch.einsum("rgk,ogk->rog", xq.double(), qw)  # exact, as the kernel's int32 sums
    scales = (scale.float()[None] * d[:, None]).double()  # the float32 product of the scales
    # float32: a fused multiply-add per group, group after group; every rounding is bounded
    # by the sum of |products| (cancellation inside a group is exact in int32).
    mags = torch.einsum("rgk,ogk->rog", xq.double().abs(), qw.abs()) * scales.abs()
    bound = (width // 32 + 4) * 2.0**-24 * mags.sum(-1) + 1e-30
    return (dots * scales).sum(-1), bound, xq.abs().max()


@pytest.mark.parametrize("isa", ISAS)
@settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 16),
    out_f=st.integers(1, 40),
    groups=st.integers(1, 9),
    log_scale=st.floats(-10, 6),
    threads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_int8_by_int8_kernel_equals_the_q8_reference(
    isa, rows, out_f, groups, log_scale, threads, seed
):
    """q8_packed_mm against llama.cpp's q8_0 in float64: AVX2 (int16 pair sums) and AVX-512
    (VNNI on the weights + 128 as unsigned bytes); 1-16 rows (blocks of 8 or 4), 1-40
    output rows (16-row blocks, a short last one), 1-9 groups; and q8_pack's blocks
    unpacked give back the weights and scales."""
    gen = torch.Generator().manual_seed(seed)
    q, scale = int8_groups.quantize(torch.randn(out_f, groups * 32, generator=gen) * 0.05)
    x = torch.randn(rows, groups * 32, generator=gen) * 2.0**log_scale
    if rows * groups > 1:
        x[0, :32] = 0.0  # a group of zeros: scale 0, no division by zero
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        mod = cpu_kernels.module(isa)
        pw, ps = mod.q8_pack(q, scale)
        out = mod.q8_packed_mm(x, pw, ps, out_f)
    finally:
        torch.set_num_threads(before)
    assert pw.shape == (-(-out_f // 16), groups, 512) and ps.shape == (pw.shape[0], groups, 16)
    q_back, scale_back = int8_groups.unpack(pw, ps, out_f)
    assert torch.equal(q_back, q) and torch.equal(scale_back, scale)
    ref, bound, qmax = _q8_reference(x, q, scale)
    assert qmax == 127  # every nonzero group's largest value at full scale
    assert torch.isfinite(out).all()
    assert ((out.double() - ref).abs() <= bound).all()
    # and within the activations' rounding (half a step of each group) of the weight-only
    # product: sum over k of |w| * step / 2
    exact = x.double() @ int8_groups.dequantize(q, scale, torch.float64).T
    step = x.reshape(rows, groups, 32).abs().amax(-1).double() / 127
    w = int8_groups.dequantize(q, scale, torch.float64).abs().reshape(out_f, groups, 32).sum(-1)
    assert ((out.double() - exact).abs() <= step @ w.T / 2 * 1.001 + bound).all()


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_half_precision_decode_attends_over_a_float_copy_of_the_cache(precision, two_threads):
    """CPU decode in half precision attends in float32 over one float32 buffer that the
    layers share: each layer's span (rows at different positions, a batch that shrinks)
    must see exactly its own cache, as a fresh float32 copy of it would."""
    toks = tokens(30, (3, 20))
    model = variant_model(precision)

    def steps() -> torch.Tensor:
        cache = model.new_cache(3, 20)
        model.prefill(toks[:, :6], cache, torch.arange(3), None)
        out = [model.decode(toks[:, t], torch.tensor([t, t - 3, t]), cache) for t in range(6, 14)]
        out += [model.decode(toks[:1, t], torch.tensor([t]), cache) for t in range(14, 20)]
        assert cache.kv[0].dtype == getattr(torch, precision)  # the cache keeps its dtype
        return torch.cat(out)

    with torch.inference_mode():
        shared = steps()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(
                KVCache,
                "as_float",
                lambda c, layer, rows, span: c.kv[layer][:, :rows, :, :span].float(),
            )
            fresh = steps()
    assert torch.equal(shared, fresh)


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("isa", ISAS)
def test_q8_0_decode_rounds_activations_and_stays_near_weight_only_int8(rows, isa, two_threads):
    """q8_0 holds int8's weights in 16-row blocks; passes of up to 16 rows (decode) go
    through the int8 x int8 kernel, longer ones (prefill) through the weight-only path.
    Its logits stay within int8's bound of float32 and of weight-only int8, and its greedy
    tokens are int8's wherever int8's top token leads by more than twice that bound."""
    toks = tokens(40 + rows, (rows, 20))
    with torch.inference_mode():
        ref = random_model()(toks)[:, 8:]
        int8 = cached_logits(variant_model("int8"), toks, 8)
        model = variant_model("q8_0")
        counting = _Counting(cpu_kernels.module(isa))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cpu_kernels, "_kernel", counting)
            q8 = cached_logits(model, toks, 8)
    # Fused qkv, wo, fused w1/w3 and the output per step (w2's 176 input columns are not
    # whole groups of 32: the dequantizing path), and a prefill of up to 16 rows too.
    per_step = 3 * model.args.n_layers + 1
    prefill = per_step if rows * 8 <= 16 else 0
    assert counting.calls.get("q8_packed_mm", 0) == 12 * per_step + prefill
    assert "int8_group_mm" not in counting.calls
    bound = TOLERANCE["q8_0"] * ref.abs().max()
    assert (q8 - ref).abs().max() <= bound
    assert (q8 - int8).abs().max() <= bound
    assert not torch.equal(q8, int8)  # the activations were rounded
    top2 = int8.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * bound
    assert (q8.argmax(-1) == int8.argmax(-1))[clear].all()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", [(1, 1, 768), (8, 1, 2048), (3, 5, 77), (2, 13)])
def test_rms_norm_kernel_equals_aten(shape, isa):
    """The decode step's C++ RMSNorm against ATen's: float32 sums in another order, so
    within a few float32 roundings of each output (widths with a scalar tail too)."""
    gen = torch.Generator().manual_seed(shape[-1])
    x = torch.randn(*shape, generator=gen) * 3
    w = torch.randn(shape[-1], generator=gen)
    out = cpu_kernels.module(isa).rms_norm(x, w, 1e-5)
    ref = torch.nn.functional.rms_norm(x.double(), w.shape, w.double(), 1e-5)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert ((out.double() - ref).abs() <= 8 * 2.0**-24 * ref.abs() + 1e-30).all()


@pytest.mark.parametrize("avx512", [True, False])
def test_one_float16_row_goes_to_aten_where_its_avx512_kernel_is_faster(avx512, monkeypatch):
    """float16 at one row: ATen's kernel where torch runs AVX-512 code, half_mv elsewhere;
    bfloat16 always half_mv; both equal to float64 products within float32 sums and one
    rounding to the output dtype."""
    gen = torch.Generator().manual_seed(3)
    counting = _Counting(cpu_kernels.kernel())
    monkeypatch.setattr(cpu_kernels, "_kernel", counting)
    monkeypatch.setattr(kernels, "aten_one_row_float16", lambda: avx512)
    for dtype in (torch.float16, torch.bfloat16):
        w = (torch.randn(300, 512, generator=gen) * 0.05).to(dtype)
        x = torch.randn(1, 1, 512, generator=gen).to(dtype)
        out = half_linear(x, w)
        ref = x[0].double() @ w.double().T
        ulp = 2.0**-11 if dtype == torch.float16 else 2.0**-8
        tol = _float64_bound(x[0], w) + ref.abs() * ulp * 1.01 + 2.0**-25
        assert ((out[0].double() - ref).abs() <= tol).all()
    assert counting.calls == {"half_mv": 1 if avx512 else 2}


AVX2_FLAGS = {"avx", "avx2", "fma", "f16c"}
AVX512_FLAGS = AVX2_FLAGS | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
AVX512_FLAGS |= {"avx512_bf16", "avx512_vnni"}


def test_the_kernel_build_follows_the_cpu_flags_and_the_environment(monkeypatch):
    """The AVX-512 build only where the CPU lists every flag it is compiled for;
    LLAMA_CPU_KERNELS_ISA=avx2 keeps the AVX2 one (A/B runs, tests of that path on an
    AVX-512 host); none without AVX2 or with LLAMA_CPU_KERNELS=0."""
    monkeypatch.delenv("LLAMA_CPU_KERNELS_ISA", raising=False)
    monkeypatch.delenv("LLAMA_CPU_KERNELS", raising=False)
    for flags, isa in [
        (AVX512_FLAGS, "avx512"),
        (AVX512_FLAGS - {"avx512_vnni"}, "avx2"),
        (AVX2_FLAGS, "avx2"),
        (AVX2_FLAGS - {"f16c"}, None),
    ]:
        monkeypatch.setattr(cpu_kernels, "_cpu_flags", lambda flags=flags: flags)
        assert cpu_kernels.preferred_isa() == isa
    monkeypatch.setenv("LLAMA_CPU_KERNELS_ISA", "avx2")
    monkeypatch.setattr(cpu_kernels, "_cpu_flags", lambda: AVX512_FLAGS)
    assert cpu_kernels.preferred_isa() == "avx2"
    monkeypatch.setenv("LLAMA_CPU_KERNELS", "0")
    assert cpu_kernels.preferred_isa() is None


def test_the_loaded_kernels_are_the_chosen_build():
    mod = cpu_kernels.kernel()
    assert mod is not None and mod.isa() == cpu_kernels.preferred_isa()
    for isa in ISAS:
        assert cpu_kernels.module(isa).isa() == isa


@pytest.mark.parametrize("isa", ISAS)
def test_the_avx512_build_takes_bfloat16_and_the_float16_row_from_onednn(isa, monkeypatch):
    """Where the AVX-512 build runs, bfloat16 weights stay plain for half_mv/half_mm
    instead of oneDNN's packed layout, and one float16 row goes to half_mv, not ATen's
    kernel (both measured slower than the AVX-512 kernels here); with the AVX2 build the
    former policy holds."""
    monkeypatch.setattr(cpu_kernels, "_kernel", cpu_kernels.module(isa))
    cpu = torch.device("cpu")
    onednn_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert not kernels.can_pack(torch.float32, cpu)  # the fused decode step's plain matrices
    assert kernels.can_pack(torch.bfloat16, cpu) == (onednn_bf16 and isa == "avx2")
    monkeypatch.setenv("LLAMA_FUSED_DECODE", "0")
    assert kernels.can_pack(torch.float32, cpu)
    aten_avx512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    expect = aten_avx512 and isa == "avx2"
    assert kernels.aten_one_row_float16.__wrapped__() == expect


def test_an_avx512_build_that_fails_leaves_the_avx2_one(monkeypatch):
    """Where the AVX-512 build cannot be built (an older compiler), `kernel()` loads the
    AVX2 build rather than none."""
    real = cpu_kernels.module
    monkeypatch.setattr(cpu_kernels, "_kernel", None)
    monkeypatch.setattr(cpu_kernels, "preferred_isa", lambda: "avx512")
    monkeypatch.setattr(cpu_kernels, "module", lambda isa: None if isa == "avx512" else real(isa))
    mod = cpu_kernels.kernel()
    assert mod is not None and mod.isa() == "avx2"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_silu_matches_aten_across_the_float_range(dtype, isa):
    """The fused step's SiLU(gate) * up (8 lanes at a time, its own exp) against ATen's
    `F.silu(g) * u` in the model's dtype, over gates from -120 to 120 (exp's overflow
    and underflow on both sides), zeros and a scalar tail: float32 within a few ulps,
    half precision equal but for rare one-ulp rounding ties."""
    gen = torch.Generator().manual_seed(7)
    gate = torch.cat(
        [
            torch.linspace(-120, 120, 4001),
            torch.randn(3000, generator=gen) * 4,
            torch.zeros(8),
            torch.tensor([88.5, 88.8, 89.0, -87.0, -88.0, -104.0]),
        ]
    )
    up = torch.randn(gate.numel(), generator=gen)  # 7015 values: a tail of 7
    code = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[dtype]
    out = cpu_kernels.module(isa).silu_mul_rounded(gate, up, code)
    g, u = gate.to(dtype), up.to(dtype)
    ref = (torch.nn.functional.silu(g) * u).float()
    assert out.shape == gate.shape and not out.isnan().any()
    if dtype == torch.float32:
        # Where float32's exp(-g) overflows (g < -88.7) both give 0 (or a value below
        # 1e-35) where float64 gives about 1e-37.
        assert ((out - ref).abs() <= 8 * 2.0**-24 * ref.abs() + 1e-35).all()
        assert (out[gate < -89] == 0).all()
    else:
        ulp = torch.finfo(dtype).eps * ref.abs().clamp(min=torch.finfo(dtype).tiny)
        assert ((out - ref).abs() <= ulp * 1.01).all()
        assert (out == ref).float().mean() >= 0.995


def test_a_q8_0_model_keeps_its_cache_in_float16_within_its_tolerance(two_threads):
    """q8_0 over float32 activations keeps keys and values in float16 (llama.cpp's default
    cache type): the cache holds the float16 rounding of what a float32 cache would, and
    the logits stay within q8_0's tolerance of float32, moved from a float32 cache's by
    no more than q8_0's own rounding of the activations moves them from weight-only
    int8's. Other models keep their own dtype."""
    assert variant_model("float32").new_cache(1, 8).kv[0].dtype == torch.float32
    assert variant_model("int8").new_cache(1, 8).kv[0].dtype == torch.float32
    assert variant_model("bfloat16").new_cache(1, 8).kv[0].dtype == torch.bfloat16
    toks = tokens(77, (2, 20))
    with torch.inference_mode():
        model = variant_model("q8_0")
        assert model.cache_dtype == torch.float16
        half_cache = model.new_cache(2, 20)
        wide_cache = model.new_cache(2, 20, dtype=torch.float32)
        assert half_cache.kv[0].dtype == torch.float16
        half = cached_logits(model, toks, 8, half_cache)
        wide = cached_logits(model, toks, 8, wide_cache)
        int8 = cached_logits(variant_model("int8"), toks, 8)
        ref = random_model()(toks)[:, 8:]
    # The prompt's keys and values (every layer) and the first layer's at every position
    # come from the same float32 values; later ones follow the rounded attention.
    for layer in range(model.args.n_layers):
        span = 20 if layer == 0 else 8
        filled = wide_cache.kv[layer][:, :, :, :span]
        assert torch.equal(half_cache.kv[layer][:, :, :, :span], filled.half())
    assert not torch.equal(half, wide)
    assert (half - ref).abs().max() <= TOLERANCE["q8_0"] * ref.abs().max()
    assert (half - wide).abs().max() <= (wide - int8).abs().max()
