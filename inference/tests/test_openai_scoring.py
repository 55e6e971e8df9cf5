"""Scoring through the OpenAI routes with the official `openai` client, a live portal and a
real worker: prompt log-probabilities equal to transformers' LlamaForCausalLM on the same
checkpoint, top-N alternatives, offsets, token-id prompts, and a harness's concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch

from inference.models import GenerationJob, JobState

pytestmark = [
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]

TEXTS = ["The river begins", "A model of the", "Once upon a time there was"]


@pytest.fixture
def oai(live_server, generate_token):
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=generate_token, max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def reference(demo_checkpoint):
    """log_softmax of transformers' LlamaForCausalLM on the worker's checkpoint (float32)."""
    from inference.llama import Llama
    from inference.llama.hf import to_transformers

    llama = Llama.load(demo_checkpoint, dtype="float32")
    hf = to_transformers(llama.model, attn_implementation="eager")

    def logprobs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)

    return llama.tokenizer, logprobs


def _check_choice(choice, ids: list[int], ref: torch.Tensor, top_n: int, new_tokens: int):
    lp = choice.logprobs
    assert len(lp.tokens) == len(ids) + new_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    expected = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    got = torch.tensor(lp.token_logprobs[1 : len(ids)])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    for pos in range(1, len(ids)):
        top = lp.top_logprobs[pos]
        assert len(top) == top_n
        assert max(top.values()) == pytest.approx(float(ref[pos - 1].max()), abs=1e-4)
    # offsets index the returned text, one per token
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == sorted(lp.text_offset)
    for i, (token, at) in enumerate(zip(lp.tokens, lp.text_offset, strict=True)):
        assert choice.text[at : at + len(token)] == token, i


def test_echo_scores_text_prompts_as_transformers_does(jobs_worker, published_demo, oai, reference):
    tokenizer, logprobs = reference
    completion = oai.completions.create(
        model="demo", prompt=TEXTS, max_tokens=0, echo=True, logprobs=5
    )
    assert [c.index for c in completion.choices] == [0, 1, 2]
    for text, choice in zip(TEXTS, completion.choices, strict=True):
        ids = tokenizer.encode(text, bos=True)
        assert choice.text == text
        assert choice.finish_reason == "length"
        _check_choice(choice, ids, logprobs(ids), top_n=5, new_tokens=0)
    assert completion.usage.completion_tokens == 0
    job = GenerationJob.objects.get()
    assert job.state == JobState.SUCCEEDED and job.params["max_new_tokens"] == 0


def test_token_id_prompts_are_scored_as_sent(jobs_worker, published_demo, oai, reference):
    tokenizer, logprobs = reference
    # as lm-evaluation-harness sends them: ids without BOS, one new token, logprobs 1
    batch = [tokenizer.encode(t, bos=False) for t in TEXTS]
    completion = oai.completions.create(
        model="demo", prompt=batch, max_tokens=1, echo=True, logprobs=1, temperature=0
    )
    for ids, choice in zip(batch, completion.choices, strict=True):
        ref = logprobs(ids)
        _check_choice(choice, ids, ref, top_n=1, new_tokens=1)
        # the one new token is the greedy one, and it is its own top alternative
        assert choice.logprobs.token_logprobs[-1] == pytest.approx(float(ref[-1].max()), abs=1e-4)
        assert choice.text == tokenizer.decode(ids) + choice.text[len(tokenizer.decode(ids)) :]

    single = oai.completions.create(
        model="demo", prompt=batch[0], max_tokens=0, echo=True, logprobs=2
    )
    assert single.choices[0].text == tokenizer.decode(batch[0])


def test_top_k_is_honoured(jobs_worker, published_demo, oai):
    greedy = oai.completions.create(model="demo", prompt="The river", max_tokens=6, temperature=0)
    top1 = oai.completions.create(
        model="demo",
        prompt="The river",
        max_tokens=6,
        temperature=1.0,
        seed=5,
        extra_body={"top_k": 1},
    )
    assert top1.choices[0].text == greedy.choices[0].text
    assert GenerationJob.objects.filter(params__top_k=1).count() == 1


def test_eight_concurrent_requests_of_32_prompts_are_all_scored(
    jobs_worker, published_demo, oai, reference
):
    tokenizer, _ = reference
    words = ["the", "river", "model", "time", "once", "upon", "a", "there", "was", "of"]
    prompts = [
        tokenizer.encode(" ".join(words[(i + k) % len(words)] for k in range(3 + i % 5)), bos=False)
        for i in range(32)
    ]

    def score(_):
        return oai.completions.create(
            model="demo", prompt=prompts, max_tokens=1, echo=True, logprobs=1, temperature=0
        )

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(score, range(8)))
    assert GenerationJob.objects.filter(state=JobState.SUCCEEDED).count() == 8
    first = [c.logprobs.token_logprobs for c in results[0].choices]
    for result in results[1:]:
        # batched with different neighbours, the same numbers
        for a, b in zip(first, [c.logprobs.token_logprobs for c in result.choices], strict=True):
            assert a[0] is None and b[0] is None
            torch.testing.assert_close(torch.tensor(a[1:]), torch.tensor(b[1:]), atol=1e-5, rtol=0)


def test_a_stream_carries_the_top_alternatives_of_each_token(jobs_worker, published_demo, oai):
    chunks = list(
        oai.completions.create(
            model="demo", prompt="The river", max_tokens=5, temperature=0, logprobs=3, stream=True
        )
    )
    with_logprobs = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert with_logprobs
    for lp in with_logprobs:
        [top] = lp.top_logprobs
        assert len(top) == 3
        assert lp.token_logprobs[0] == pytest.approx(max(top.values()))  # greedy
    job = GenerationJob.objects.get()
    assert len(with_logprobs) == len(job.outputs[0]["token_ids"])
