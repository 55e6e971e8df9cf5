"""The official `openai` client and the portal's own Python client against a live portal
and a real worker."""

from __future__ import annotations

import openai
import pytest
from django.test import override_settings

from accounts.services import token_create
from inference.models import GenerationJob, JobState

pytestmark = [
    pytest.mark.worker,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def oai(live_server, generate_token):
    client = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=generate_token, max_retries=0)
    yield client
    # A kept-alive HTTP connection keeps a live-server thread, and its database
    # connection, open past the end of the run.
    client.close()


@pytest.fixture
def portal(live_server, generate_token):
    from portal_client import Client

    client = Client(live_server.url, generate_token, progress=False, retries=1)
    yield client
    client._session().close()


def test_openai_client_completes_a_prompt(jobs_worker, published_demo, oai, researcher):
    completion = oai.completions.create(
        model="demo", prompt="The model", max_tokens=8, temperature=0, logprobs=1, user="u-17"
    )

    job = GenerationJob.objects.get()
    assert job.state == JobState.SUCCEEDED
    assert job.source == "openai" and job.external_user == "u-17" and job.owner == researcher
    assert completion.id == f"cmpl-{job.pk.hex}"
    assert completion.object == "text_completion"
    assert completion.model == "demo"
    [choice] = completion.choices
    assert choice.text == job.outputs[0]["text"]
    assert choice.finish_reason in ("length", "stop")
    assert len(choice.logprobs.token_logprobs) == len(job.outputs[0]["token_ids"])
    assert completion.usage.prompt_tokens == job.prompt_tokens
    assert completion.usage.completion_tokens == job.completion_tokens
    assert completion.usage.total_tokens == job.prompt_tokens + job.completion_tokens


def test_openai_client_streams_a_completion(jobs_worker, published_demo, oai):
    chunks = list(
        oai.completions.create(
            model="demo",
            prompt=["The model", "A question"],
            max_tokens=10,
            temperature=0.8,
            seed=3,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )

    job = GenerationJob.objects.get()
    assert job.state == JobState.SUCCEEDED
    texts: dict[int, str] = {}
    finish: dict[int, str] = {}
    for chunk in chunks[:-1]:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert texts == {o["index"]: o["text"] for o in job.outputs}
    assert set(finish) == {0, 1, 2, 3}
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == job.completion_tokens


def test_openai_client_lists_the_models_the_token_may_run(oai, published_demo):
    assert [m.id for m in oai.models.list()] == ["demo", "7b"]
    assert oai.models.retrieve("demo").id == "demo"


def test_openai_errors_have_openais_shape(live_server, oai, published_demo, outsider):
    with pytest.raises(openai.NotFoundError) as missing:
        oai.completions.create(model="llama-70b", prompt="x")
    assert missing.value.code == "model_not_found"
    assert missing.value.body["type"] == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as bad:
        oai.completions.create(model="demo", prompt="x", temperature=5)
    assert bad.value.body["param"] == "temperature"

    with pytest.raises(openai.BadRequestError) as too_long:
        oai.completions.create(model="demo", prompt="word " * 300, max_tokens=16)
    assert too_long.value.code == "context_length_exceeded"
    assert "256-token context" in too_long.value.message

    with pytest.raises(openai.BadRequestError) as unsupported:
        oai.completions.create(model="demo", prompt="x", logit_bias={"1": 5})
    assert unsupported.value.body["param"] == "logit_bias"

    with override_settings(JOBS_MAX_ACTIVE_PER_USER=0), pytest.raises(openai.RateLimitError) as rl:
        oai.completions.create(model="demo", prompt="x")
    assert rl.value.response.headers["Retry-After"]
    assert rl.value.body["type"] == "rate_limit_error"

    with (
        openai.OpenAI(
            base_url=f"{live_server.url}/v1", api_key="llp_not-a-real-token-000000", max_retries=0
        ) as wrong_key,
        pytest.raises(openai.AuthenticationError) as auth,
    ):
        wrong_key.models.list()
    assert auth.value.code == "invalid_api_key"

    stranger_key = token_create(user=outsider, name="x", scopes=["generate"])[1]
    with (
        openai.OpenAI(
            base_url=f"{live_server.url}/v1", api_key=stranger_key, max_retries=0
        ) as stranger,
        pytest.raises(openai.PermissionDeniedError) as denied,
    ):
        stranger.completions.create(model="demo", prompt="x")
    assert denied.value.code == "no_grant"
    assert not GenerationJob.objects.exists()


def test_portal_client_generates_streams_lists_and_cancels(jobs_worker, published_demo, portal):
    result = portal.generate("demo", "The model", max_new_tokens=6, seed=1, temperature=0.7)
    assert result.job["state"] == "succeeded"
    assert result.text == GenerationJob.objects.get(pk=result.id).outputs[0]["text"]
    assert result.usage["completion_tokens"] >= 1

    pieces = list(portal.stream("demo", "The model", max_new_tokens=6, seed=1, temperature=0.7))
    assert "".join(pieces) == result.text  # same seed, same text

    queued = portal.submit("demo", "The model", max_new_tokens=150)
    cancelled = portal.cancel(queued["id"])
    assert cancelled["id"] == queued["id"]
    assert portal.jobs(limit=3)[0]["id"] == queued["id"]


def test_portal_client_raises_errors_that_say_why(live_server, published_demo, portal, outsider):
    from portal_client import BadParameters, Client, JobNotFound, NoAccess, QuotaExceeded

    with pytest.raises(BadParameters) as bad:
        portal.submit("demo", "x", max_new_tokens=0)
    assert bad.value.param == "max_new_tokens"
    with pytest.raises(BadParameters) as too_long:
        portal.submit("demo", "word " * 300, max_new_tokens=16)
    assert too_long.value.limit == 256
    with pytest.raises(JobNotFound):
        portal.submit("70b", "x")
    with override_settings(JOBS_MAX_ACTIVE_PER_USER=0), pytest.raises(QuotaExceeded) as quota:
        portal.submit("demo", "x")
    assert quota.value.retry_after and quota.value.retry_after > 0
    stranger = Client(
        live_server.url,
        token_create(user=outsider, name="x", scopes=["generate"])[1],
        progress=False,
        retries=1,
    )
    with pytest.raises(NoAccess) as denied:
        stranger.generate("demo", "x")
    stranger._session().close()
    assert "/access/" in str(denied.value)
