"""What the OpenAPI schema states, checked against what the API does (the fuzz test
samples the rest)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def schema(client) -> dict:
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    return json.loads(response.content)


@pytest.fixture
def token_client(client, researcher):
    from accounts.services import token_create

    key = token_create(user=researcher, name="t", scopes=["generate", "download"])[1]
    client.defaults["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


@pytest.mark.django_db
def test_every_operation_declares_its_error_answers(schema):
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert {"400", "401", "403", "503"} <= statuses, (method, path)
            if method == "post":
                assert {"404", "409", "413", "429"} <= statuses, (method, path)
            if "{" in path:
                assert "404" in statuses, (method, path)


@pytest.mark.django_db
def test_error_bodies_are_declared_with_a_message(schema):
    error = schema["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["required"] == ["code", "message"]
    assert error["properties"]["message"]["minLength"] == 1
    jobs_post = schema["paths"]["/api/v1/jobs"]["post"]["responses"]
    assert jobs_post["429"]["headers"]["Retry-After"]["schema"]["type"] == "integer"


@pytest.mark.django_db
def test_the_job_list_states_its_limit_and_a_job_needs_prompt_or_prompts(schema):
    parameters = {p["name"]: p for p in schema["paths"]["/api/v1/jobs"]["get"]["parameters"]}
    assert parameters["limit"]["schema"]["minimum"] == 1
    assert parameters["limit"]["schema"]["maximum"] == 200
    create = schema["components"]["schemas"]["CreateInput"]
    assert create["oneOf"] == [{"required": ["prompt"]}, {"required": ["prompts"]}]


@pytest.mark.django_db
def test_the_stream_declares_its_events(schema):
    ok = schema["paths"]["/api/v1/jobs/{job_id}/stream"]["get"]["responses"]["200"]
    events = ok["content"]["text/event-stream"]["schema"]["oneOf"]
    names = {event["properties"]["event"]["enum"][0] for event in events}
    assert names == {"state", "token", "reset", "waiting", "end", "error"}
    for event in events:
        assert event["properties"]["data"]["contentMediaType"] == "application/json"
        assert event["properties"]["data"]["contentSchema"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/models/demo/links", "/api/v1/jobs/0/stream"])
@pytest.mark.parametrize("value", ["", "AAA"])
def test_a_format_outside_the_enum_is_refused_with_a_message(token_client, path, value):
    response = token_client.get(path, {"format": value})

    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "not_found"
    assert error["message"]


@pytest.mark.django_db
def test_an_invalid_list_item_is_named_by_its_parameter(token_client):
    # The error's `param` is declared a string: a list item's index once came back as `param`.
    response = token_client.post(
        "/v1/detokenize", {"model": "demo", "tokens": [1, -1]}, content_type="application/json"
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "tokens"
    assert error["message"].startswith("tokens[1]: ")
