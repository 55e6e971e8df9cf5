"""Scoring: prompt log-probabilities, top-N alternatives, score-only requests
(max_new_tokens 0) and token-id prompts, checked against transformers' LlamaForCausalLM."""

from __future__ import annotations

import pytest
import torch

from inference.llama.generation import BatchDecoder, SamplingParams, generate
from inference.llama.hf import to_transformers

from .conftest import random_model

PROMPTS = [
    [1, 17, 42, 99, 3, 200, 7],
    [1, 5, 6],
    [44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54],  # no BOS: ids are used as they are
    [1, 250],
    [9],
]


@pytest.fixture(scope="module")
def pair():
    model = random_model(seed=3)
    return model, to_transformers(model, attn_implementation="eager")


def _reference(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


@pytest.mark.parametrize("max_new_tokens", [0, 1, 3])
def test_prompt_logprobs_equal_transformers(pair, max_new_tokens):
    model, hf = pair
    params = SamplingParams(max_new_tokens=max_new_tokens, echo=True, logprobs=True, top_logprobs=5)
    completions = generate(model, None, PROMPTS, params)
    for ids, c in zip(PROMPTS, completions, strict=True):
        ref = _reference(hf, ids)
        assert c.prompt_tokens == ids
        assert c.prompt_logprobs[0] is None and c.prompt_top_logprobs[0] is None
        assert len(c.prompt_logprobs) == len(ids) == len(c.prompt_top_logprobs)
        if len(ids) > 1:
            expected = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
            torch.testing.assert_close(
                torch.tensor(c.prompt_logprobs[1:]), expected, atol=1e-4, rtol=0
            )
        for pos, top in enumerate(c.prompt_top_logprobs[1:]):
            values, idx = torch.topk(ref[pos], 5)
            assert list(top) == idx.tolist()
            torch.testing.assert_close(torch.tensor(list(top.values())), values, atol=1e-4, rtol=0)
        assert len(c.tokens) == max_new_tokens
        assert c.finish_reason == "length"
        if max_new_tokens:
            # greedy: the first new token is the likeliest after the prompt
            assert c.tokens[0] == int(ref[-1].argmax())
            assert c.logprobs[0] == pytest.approx(float(ref[-1].max()), abs=1e-4)
            assert len(c.top_logprobs) == max_new_tokens
            assert next(iter(c.top_logprobs[0])) == c.tokens[0]


def test_score_only_requests_use_no_cache_row_and_share_a_pass(pair, monkeypatch):
    model, _ = pair
    decoder = BatchDecoder(model, None, max_batch_size=1, max_seq_len=32)
    passes = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda t: passes.append(t.shape) or forward(t))
    params = SamplingParams(max_new_tokens=0, echo=True, logprobs=True)
    for i, ids in enumerate(PROMPTS):
        decoder.add(ids, params, request_id=i)
    done = decoder.step()
    assert sorted(c.request_id for c in done) == list(range(len(PROMPTS)))
    assert passes == [(len(PROMPTS), max(map(len, PROMPTS)))]  # one batched pass, 1 slot
    assert not decoder.has_work()


def test_batched_scores_equal_one_at_a_time(pair):
    model, _ = pair
    params = SamplingParams(max_new_tokens=2, echo=True, logprobs=True, top_logprobs=3)
    together = generate(model, None, PROMPTS, params)
    for ids, c in zip(PROMPTS, together, strict=True):
        [alone] = generate(model, None, [ids], params)
        assert alone.tokens == c.tokens
        torch.testing.assert_close(
            torch.tensor(alone.prompt_logprobs[1:]),
            torch.tensor(c.prompt_logprobs[1:]),
            atol=1e-5,
            rtol=0,
        )


def test_top_logprobs_without_echo_follow_each_sampled_token(pair):
    model, _ = pair
    params = SamplingParams(max_new_tokens=4, logprobs=True, top_logprobs=2)
    [c] = generate(model, None, [PROMPTS[0]], params)
    assert c.prompt_logprobs is None
    assert len(c.top_logprobs) == len(c.tokens) == 4
    for tok, lp, top in zip(c.tokens, c.logprobs, c.top_logprobs, strict=True):
        assert len(top) == 2 and top[tok] == lp  # greedy: the chosen one is the likeliest


def test_score_only_on_the_demo_model_with_text_prompts(demo_dir):
    from inference.llama import Llama

    llama = Llama.load(demo_dir, dtype="float32")
    hf = to_transformers(llama.model, attn_implementation="eager")
    [c] = llama.generate(
        ["The river begins"], SamplingParams(max_new_tokens=0, echo=True, logprobs=True)
    )
    assert c.text == "The river begins" and c.tokens == []
    ref = _reference(hf, c.prompt_tokens)
    ids = c.prompt_tokens
    expected = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    torch.testing.assert_close(torch.tensor(c.prompt_logprobs[1:]), expected, atol=1e-4, rtol=0)


def test_top_logprobs_is_bounded():
    with pytest.raises(ValueError):
        SamplingParams(top_logprobs=21)
    with pytest.raises(ValueError):
        SamplingParams(max_new_tokens=-1)


def test_prompts_with_a_common_context_share_its_prefill(pair, monkeypatch):
    """A harness's choices: one context, several short endings. The context is prefilled
    once per pass; every number still equals transformers'."""
    model, hf = pair
    context = [1, 30, 31, 32, 33, 34, 35, 36]
    endings = [[40], [41, 42], [43, 44, 45], [46], [30, 31]]
    other = [[1, 9, 8, 7, 6, 5], [1, 9, 8, 7, 6, 4, 3]]  # a second cluster
    prompts = [context + e for e in endings] + other + [[5, 6]]
    calls = []
    for name in ("forward", "prefill", "decode"):
        original = getattr(model, name)
        monkeypatch.setattr(
            model, name, lambda *a, _o=original, _n=name, **k: calls.append(_n) or _o(*a, **k)
        )
    for max_new in (0, 1):
        calls.clear()
        params = SamplingParams(max_new_tokens=max_new, echo=True, logprobs=True, top_logprobs=3)
        completions = generate(model, None, prompts, params)
        # one prefill for both clusters, their endings decoded together, one plain forward
        assert calls.count("prefill") == 1 and calls.count("forward") == 1
        assert calls.count("decode") == 3  # the longest ending
        for ids, c in zip(prompts, completions, strict=True):
            ref = _reference(hf, ids)
            expected = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
            assert c.prompt_logprobs[0] is None
            torch.testing.assert_close(
                torch.tensor(c.prompt_logprobs[1:]), expected, atol=1e-4, rtol=0
            )
            for pos, top in enumerate(c.prompt_top_logprobs[1:]):
                assert list(top) == torch.topk(ref[pos], 3).indices.tolist()
            if max_new:
                assert c.tokens == [int(ref[-1].argmax())]
                assert c.logprobs[0] == pytest.approx(float(ref[-1].max()), abs=1e-4)
