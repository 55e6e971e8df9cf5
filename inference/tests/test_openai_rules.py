"""The OpenAI-compatible routes' rules, without a worker: parameters refused by name in
OpenAI's error shape, JSON everywhere under /v1/, vLLM's tokenize routes, the API docs,
and limits sized for evaluation harnesses."""

from __future__ import annotations

import pytest

from inference.models import GenerationJob
from inference.services import job_submit


@pytest.fixture
def oai_client(api_client, generate_token):
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {generate_token}")
    return api_client


def _complete(client, **body):
    return client.post("/v1/completions", {"model": "demo", **body}, format="json")


def _error(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x", "frequency": 1, "top_a": 2}, "frequency"),  # unknown, named
        ({"prompt": "x", "n": 0}, "n"),
        ({"prompt": "x", "max_tokens": "many"}, "max_tokens"),
        ({"prompt": "x", "temperature": [1]}, "temperature"),
        ({"max_tokens": 3}, "prompt"),  # missing
        ({"prompt": []}, "prompt"),
        ({"prompt": [1, "a"]}, "prompt"),
        ({"prompt": [[1, 2], []]}, "prompt"),
        ({"prompt": "x", "logprobs": 21}, "logprobs"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),  # 0 only scores an echoed prompt
        ({"prompt": "x", "max_tokens": 100_000}, "max_tokens"),  # the service's name, mapped
        ({"prompt": "x", "stop": 5}, "stop"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
    ],
)
def test_bad_parameters_are_400s_naming_the_openai_field(oai_client, body, param):
    error = _error(_complete(oai_client, **body), 400)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert not GenerationJob.objects.exists()


def test_unknown_parameters_are_all_named(oai_client):
    error = _error(_complete(oai_client, prompt="x", frequency=1, top_a=2), 400)
    assert "frequency" in error["message"] and "top_a" in error["message"]


def test_every_answer_under_v1_is_json(oai_client):
    assert _error(oai_client.get("/v1/no-such-route"), 404)["code"] == "unknown_url"
    assert _error(oai_client.get("/v1/completions"), 405)["type"] == "invalid_request_error"
    assert _error(oai_client.delete("/v1/models"), 405)
    chat = _error(
        oai_client.post(
            "/v1/chat/completions",
            {"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
            format="json",
        ),
        400,
    )
    assert "base models" in chat["message"] and "chat format" in chat["message"]
    assert chat["code"] == "chat_not_supported"


def test_tokenize_and_detokenize_in_vllms_shapes(oai_client, published_demo, demo_checkpoint):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(demo_checkpoint / "tokenizer.model"))
    response = oai_client.post(
        "/v1/tokenize", {"model": "demo", "prompt": "The river begins"}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["tokens"] == [1, *sp.encode("The river begins")]
    assert body["count"] == len(body["tokens"])
    assert body["max_model_len"] == published_demo.context_length
    assert body["token_strs"] is None

    plain = oai_client.post(
        "/v1/tokenize",
        {
            "model": "demo",
            "prompt": "The river",
            "add_special_tokens": False,
            "return_token_strs": True,
        },
        format="json",
    ).json()
    assert plain["tokens"] == sp.encode("The river")
    assert plain["token_strs"] == [sp.id_to_piece(t) for t in plain["tokens"]]

    back = oai_client.post(
        "/v1/detokenize", {"model": "demo", "tokens": body["tokens"]}, format="json"
    )
    assert back.json() == {"prompt": "The river begins"}
    assert (
        _error(
            oai_client.post("/v1/detokenize", {"model": "demo", "tokens": [10**6]}, format="json"),
            400,
        )["param"]
        == "tokens"
    )
    assert _error(
        oai_client.post("/v1/tokenize", {"model": "demo", "text": "x"}, format="json"), 400
    )["param"] in ("text", "prompt")


def test_token_id_prompts_outside_the_vocabulary_are_refused(oai_client, published_demo):
    error = _error(_complete(oai_client, prompt=[[1, 5], [1, 10**6]], max_tokens=1), 400)
    assert error["param"] == "prompt" and "vocabulary" in error["message"]


def test_an_outsider_cannot_tokenize(api_client, outsider, published_demo):
    from accounts.services import token_create

    key = token_create(user=outsider, name="x", scopes=["generate"])[1]
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    response = api_client.post("/v1/tokenize", {"model": "demo", "prompt": "x"}, format="json")
    assert _error(response, 403)["code"] == "no_grant"


def test_the_openai_routes_are_in_the_api_docs(client):
    schema = client.get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    for route in ("/v1/completions", "/v1/models", "/v1/tokenize", "/v1/detokenize"):
        assert route in schema["paths"], route
    completion = schema["paths"]["/v1/completions"]["post"]
    assert "openai" in completion["tags"]


def test_eight_scoring_requests_of_32_prompts_fit_the_default_limits(researcher, published_demo):
    # What lm-evaluation-harness sends with num_concurrent=8, batch_size=32: all in flight
    # at once, none refused.
    prompts = [[1, *range(10, 10 + 20 + i % 7)] for i in range(32)]
    for _ in range(8):
        job_submit(
            user=researcher,
            variant=published_demo,
            prompts=prompts,
            params={"max_new_tokens": 1, "echo": True, "logprobs": True, "top_logprobs": 1},
        )
    assert GenerationJob.objects.filter(state="queued").count() == 8


def test_generation_jobs_still_count_against_the_active_limit(researcher, published_demo):
    from django.test import override_settings

    from core.errors import RateLimited

    with override_settings(JOBS_MAX_ACTIVE_PER_USER=2):
        for _ in range(2):
            job_submit(
                user=researcher, variant=published_demo, prompts=["x"], params={"max_new_tokens": 4}
            )
        with pytest.raises(RateLimited):
            job_submit(
                user=researcher, variant=published_demo, prompts=["x"], params={"max_new_tokens": 4}
            )
        # a scoring job is bounded by its tokens in flight instead
        job_submit(
            user=researcher,
            variant=published_demo,
            prompts=["x"],
            params={"max_new_tokens": 0, "echo": True},
        )


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        ('{"model": "demo", "prompt": "a\\u0000b"}', "prompt"),
        ('{"model": "demo", "prompt": ["ok", "\\ud800"]}', "prompt"),
        ('{"model": "demo", "prompt": "ok", "stop": ["\\udfff"]}', "stop"),
        ('{"model": "demo", "prompt": "ok", "stop": "x\\u0000"}', "stop"),
    ],
)
def test_nul_and_lone_surrogates_are_400s_never_stored(oai_client, raw, param):
    response = oai_client.post("/v1/completions", raw, content_type="application/json")
    error = response.json()["error"]
    assert response.status_code == 400
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert not GenerationJob.objects.exists()


def test_scoring_jobs_in_flight_are_bounded_by_their_tokens(researcher, published_demo):
    from core.errors import RateLimited

    # 64 prompts of 255 token ids with one new token: 64 x 256 tokens, one job's most
    prompts = [[1, *([7] * 254)]] * 64
    params = {"max_new_tokens": 1, "echo": True, "logprobs": True}
    for _ in range(4):  # 4 x 16,384 tokens: the 256 contexts of 256 tokens allowed at once
        job_submit(user=researcher, variant=published_demo, prompts=prompts, params=params)
    with pytest.raises(RateLimited) as limited:
        job_submit(user=researcher, variant=published_demo, prompts=prompts, params=params)
    assert limited.value.code == "too_many_jobs" and limited.value.extra["limit"] == 256 * 256


def test_grant_holders_download_the_tokenizer(
    oai_client, api_client, outsider, published_demo, demo_checkpoint
):
    from accounts.services import token_create

    response = oai_client.get(
        "/v1/models/demo/tokenizer.model", HTTP_ACCEPT="application/octet-stream"
    )
    assert response.status_code == 200
    assert (
        b"".join(response.streaming_content) == (demo_checkpoint / "tokenizer.model").read_bytes()
    )
    assert "tokenizer.model" in response["Content-Disposition"]

    key = token_create(user=outsider, name="x", scopes=["generate"])[1]
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert _error(api_client.get("/v1/models/demo/tokenizer.model"), 403)["code"] == "no_grant"
