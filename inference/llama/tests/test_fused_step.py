"""The fused CPU decode step (`cpu_kernels`' DecodePlan: a whole decode pass in one C++
call) against the operator-by-operator step it replaces, in every precision and with
each kernel build the host runs.

The two paths compute the same float32 products in another order and round to the
model's dtype at the same points, so in float32 and weight-only int8 they agree to
float32 rounding; in half precision and q8_0 a different rounding of one value can
propagate, bounded here by half the tolerance against float32 (as the one-row kernel's
own test does).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from inference.llama import cpu_kernels
from inference.llama.generation import BatchDecoder, SamplingParams
from inference.llama.model import ThreadChooser, Transformer

from .conftest import random_model
from .test_precision import ISAS, TOLERANCE, tokens

# Widths that are multiples of 32 (the fused step's condition; TINY's ffn width of 176 is
# not, so the other engine tests keep the operator path): head_dim 16, 2 kv heads for 4
# query heads, ffn hidden 192.
SHAPE = {"dim": 64, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 32}
PRECISIONS = ["float32", "bfloat16", "float16", "int8", "q8_0"]
# Largest difference between the paths over the largest |logit| of the operator path.
BOUND = {"float32": 1e-5, "int8": 1e-5}


def model_in(precision: str, seed: int = 0, **overrides) -> Transformer:
    model = random_model(seed=seed, **{**SHAPE, **overrides})
    if precision in ("int8", "q8_0"):
        return model.prepare(precision)
    return model.to(getattr(torch, precision))


class _Spy:
    """Counts decode passes that ran operator by operator (`Transformer._run`)."""

    def __init__(self, model: Transformer):
        self.model = model
        self.runs = 0
        real = model._run

        def run(*args, **kwargs):
            self.runs += 1
            return real(*args, **kwargs)

        model._run = run


def mixed_steps(model: Transformer, toks: torch.Tensor) -> torch.Tensor:
    """Three rows at different positions, then the batch shrinks to one row."""
    cache = model.new_cache(3, 20)
    model.prefill(toks[:, :6], cache, torch.arange(3), None)
    out = [model.decode(toks[:, t], torch.tensor([t, t - 3, t - 1]), cache) for t in range(6, 14)]
    out += [model.decode(toks[:1, t], torch.tensor([t]), cache) for t in range(14, 20)]
    return torch.cat(out)


def both_paths(model: Transformer, toks: torch.Tensor, isa: str, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_kernel", cpu_kernels.module(isa))
    spy = _Spy(model)
    with torch.inference_mode():
        monkeypatch.setenv("LLAMA_FUSED_DECODE", "0")
        ref = mixed_steps(model, toks)
        ops = spy.runs
        monkeypatch.setenv("LLAMA_FUSED_DECODE", "1")
        spy.runs = 0
        fused = mixed_steps(model, toks)
    assert ops == 1 + 14  # the prefill and every decode step operator by operator
    assert spy.runs == 1  # the prefill only: every decode step was one C++ call
    return fused, ref


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_fused_step_equals_the_operator_step(precision, isa, two_threads, monkeypatch):
    toks = tokens(50, (3, 20))
    model = model_in(precision)
    fused, ref = both_paths(model, toks, isa, monkeypatch)
    scale = ref.abs().max()
    bound = (BOUND[precision] if precision in BOUND else TOLERANCE[precision] / 2) * scale
    assert fused.dtype == torch.float32 and fused.shape == ref.shape
    assert (fused - ref).abs().max() <= bound
    # The top token is the operator path's wherever its lead over the runner-up is more
    # than twice the difference allowed (random weights give near ties).
    top2 = ref.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * bound
    assert clear.sum() >= 10
    assert (fused.argmax(-1) == ref.argmax(-1))[clear].all()


@pytest.mark.parametrize("isa", ISAS)
def test_fused_step_with_heads_not_grouped_and_one_thread(isa, monkeypatch):
    """Multi-head attention (as many kv heads as query heads), one thread, a long head."""
    toks = tokens(51, (3, 20))
    model = model_in("float32", seed=3, n_heads=2, n_kv_heads=None)
    fused, ref = both_paths(model, toks, isa, monkeypatch)
    assert (fused - ref).abs().max() <= 1e-5 * ref.abs().max()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("precision", ["float32", "float16", "int8", "q8_0"])
def test_fused_step_with_a_large_vocabulary_takes_chunks_of_both_sizes(
    precision, isa, two_threads, monkeypatch
):
    """A product of over 6,000 output rows (a 10,000-token vocabulary: its rows at width 64
    are 256 bytes in float32) is cut into 1 MiB chunks and then 64 KiB ones, the last one
    short; every output row is computed once, as the operator path computes it."""
    toks = tokens(52, (3, 20)) * 3 % 10000
    model = model_in(precision, seed=4, vocab_size=10000)
    fused, ref = both_paths(model, toks, isa, monkeypatch)
    bound = BOUND.get(precision, TOLERANCE.get(precision, 0) / 2) * ref.abs().max()
    assert fused.shape[-1] == 10000
    assert (fused - ref).abs().max() <= bound
    assert (fused[:, 9000:] != 0).any(dim=-1).all()  # the last chunks' rows are written


@pytest.mark.parametrize("isa", ISAS)
def test_fused_q8_0_step_with_a_vocabulary_not_a_multiple_of_16(isa, two_threads, monkeypatch):
    """The AVX-512 q8_0 products take 16 output rows at a time (`pack_q8`): a 1,000-token
    vocabulary ends in a block of 8 rows, whose padding rows are never written out."""
    toks = tokens(53, (3, 20)) * 7 % 1000
    model = model_in("q8_0", seed=5, vocab_size=1000)
    fused, ref = both_paths(model, toks, isa, monkeypatch)
    assert fused.shape[-1] == 1000
    assert (fused - ref).abs().max() <= TOLERANCE["q8_0"] / 2 * ref.abs().max()
    assert (fused[:, 992:] != 0).any(dim=-1).all()


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "q8_0"])
def test_batch_decoder_gives_the_same_greedy_tokens_either_way(precision, two_threads, monkeypatch):
    """Continuous batching (rows admitted and ended at different steps) through the fused
    step gives the tokens of the operator path."""
    model = model_in(precision, seed=1)
    prompts = [[1, 5, 9, 200], [1, 17], [1, 99, 98, 97, 96, 95], [3, 4]]
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)

    def run() -> list[list[int]]:
        decoder = BatchDecoder(model, None, max_batch_size=3, max_seq_len=24)
        ids = [decoder.add(p, params) for p in prompts]
        done = {c.request_id: c.tokens for c in decoder.run()}
        decoder.close()
        return [done[i] for i in ids]

    monkeypatch.setenv("LLAMA_FUSED_DECODE", "0")
    ref = run()
    monkeypatch.setenv("LLAMA_FUSED_DECODE", "1")
    assert run() == ref
    assert model._plan is not None and model._plan[1] is not None


def test_shapes_the_fused_step_does_not_take_keep_the_operator_path(monkeypatch):
    """A width that is not a multiple of 32 (TINY's ffn of 176), more rows than
    SMALL_ROWS: the operator path, and the same logits as with the fused step off."""
    monkeypatch.setenv("LLAMA_FUSED_DECODE", "1")
    model = random_model()
    with torch.inference_mode():
        cache = model.new_cache(1, 8)
        model.prefill(tokens(52, (1, 4)), cache, torch.arange(1), None)
        model.decode(torch.tensor([3]), torch.tensor([4]), cache)
    assert model._plan is not None and model._plan[1] is None


def test_two_threads_stepping_one_model_get_their_own_results(monkeypatch):
    """The plan releases the GIL during a step and holds its own scratch rows: two Python
    threads decoding on one model (each with its own cache) must not see each other's
    rows."""
    monkeypatch.setenv("LLAMA_FUSED_DECODE", "1")
    model = model_in("float32", seed=2)
    toks = [tokens(60 + i, (2, 20)) for i in range(2)]

    def steps(t: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            cache = model.new_cache(2, 20)
            model.prefill(t[:, :4], cache, torch.arange(2), None)
            return torch.cat(
                [model.decode(t[:, p], torch.tensor([p, p - 1]), cache) for p in range(4, 20)]
            )

    alone = [steps(t) for t in toks]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            together = list(pool.map(steps, toks))
            for a, b in zip(alone, together, strict=True):
                assert torch.equal(a, b)


@pytest.mark.parametrize("fused", [False, True])
def test_decode_restores_the_thread_count_and_times_into_its_paths_chooser(fused, two_threads):
    """A step that one thread was "measured" faster for runs with one thread, is timed
    into its own path's chooser (the fused step's `plan_threads`, which tries one thread
    after 32 steps and then up to every 1,024; the operator path's `threads`: TINY's
    widths are not multiples of 32) and not the other's, and the thread count is
    restored after it."""
    model = model_in("float32") if fused else random_model()
    assert (model.plan_threads.explore, model.plan_threads.longest) == (32, 1024)
    model.threads, model.plan_threads = ThreadChooser(), ThreadChooser(explore=32, longest=1024)
    used, other = model.plan_threads, model.threads
    if not fused:
        used, other = other, used
    used.record(1, 2, 1.0)
    used.record(1, 1, 0.001)  # one thread "measured" faster
    cache = model.new_cache(1, 8)
    with torch.inference_mode():
        model.prefill(tokens(9, (1, 4)), cache, torch.arange(1), None)
        model.decode(torch.tensor([5]), torch.tensor([4]), cache)
    assert torch.get_num_threads() == 2
    assert used.avg[(1, 1)] != 0.001  # the step ran with one thread and was timed
    assert other.avg == {}
