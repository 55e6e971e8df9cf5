"""Arbitrary Unicode, lone surrogates and NUL included, at every entry point of jobs.

For any text: never a 5xx; text the rule refuses (core/text.py) gets a 400 that says why;
anything accepted is stored so that the owner's job list and the job itself still read.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from django.test import override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog.tests.factories import file_row
from core.text import find_bad_text, text_problem

# Any code point: surrogates (excluded by hypothesis's default alphabet) and NUL included,
# with the awkward ones drawn often enough to matter.
_any_char = st.one_of(
    st.characters(codec=None, categories=None, exclude_categories=()),
    st.sampled_from(["\x00", "\ud800", "\udbff", "\udc00", "\udfff", "\ufffe", "\U0010ffff"]),
    st.integers(0xD800, 0xDFFF).map(chr),
)
any_text = st.lists(_any_char, max_size=12).map("".join)

# An example costs a few queries; enough of them find both the bad and the good cases.
EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
LIMITS = override_settings(JOBS_MAX_ACTIVE_PER_USER=10**6, JOBS_TOKENS_PER_DAY=10**9)


def _as_received(body: dict) -> dict:
    # What the server decodes: a high and a low surrogate next to each other in a Python str
    # travel as two escapes that JSON joins into one valid character.
    return json.loads(json.dumps(body))


def _post_json(client, path: str, body: dict, key: str):
    # json.dumps writes a lone surrogate as the escape `\ud800`, as any JSON client does.
    return client.post(
        path,
        data=json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key}",
    )


def _reads_back(client, key: str, job_id: str | None) -> None:
    listing = client.get("/api/v1/jobs", HTTP_AUTHORIZATION=f"Bearer {key}")
    assert listing.status_code == 200, listing.content[:300]
    listing.json()
    if job_id is not None:
        detail = client.get(f"/api/v1/jobs/{job_id}", HTTP_AUTHORIZATION=f"Bearer {key}")
        assert detail.status_code == 200, detail.content[:300]


def _check_refusal(response, bad: tuple[str, str] | None) -> None:
    assert response.status_code < 500, response.content[:500]
    if bad is not None:
        assert response.status_code == 400, response.content[:500]
        error = response.json()["error"]
        assert error["code"] == "invalid_text"
        assert error["message"]
        assert ("surrogate" in error["message"]) or ("NUL" in error["message"])


@pytest.mark.django_db
@LIMITS
@EXAMPLES
@given(prompt=any_text, stop=st.lists(any_text, max_size=3))
def test_rest_job_submission_never_fails_on_text(client, generate_token, prompt, stop):
    response = _post_json(
        client,
        "/api/v1/jobs",
        {"model": "demo", "prompt": prompt, "stop": stop, "max_new_tokens": 4},
        generate_token,
    )

    bad = find_bad_text(_as_received({"prompt": prompt, "stop": stop}))
    _check_refusal(response, bad)
    if bad is None and response.status_code != 201:
        assert response.json()["error"]["code"] != "invalid_text"
    _reads_back(client, generate_token, response.json().get("id"))


@pytest.fixture
def demo_served(db, settings):
    """The demo size as a running portal has it: files published and a worker announced, so
    a completion is stored as a job (no worker process is needed: the stream is not read)."""

    from core import workers

    file_row("demo")
    settings.WORKER_PRESENCE_SECONDS = 3600  # the key outlives a slow run
    workers.announce(node="text-inputs@test", queues=["gpu.demo"])
    yield
    workers.withdraw(node="text-inputs@test", queues=["gpu.demo"])


@pytest.mark.django_db
@LIMITS
@EXAMPLES
@given(prompts=st.lists(any_text, min_size=1, max_size=3), stop=any_text)
def test_openai_completions_never_fail_on_text(client, generate_token, demo_served, prompts, stop):
    body = {"model": "demo", "prompt": prompts, "stop": stop, "max_tokens": 4, "stream": True}
    response = _post_json(client, "/v1/completions", body, generate_token)
    # The event stream is not read (nor closed, which would end the test's connection): the
    # job is stored, which is the point.

    bad = find_bad_text(_as_received({"prompt": prompts, "stop": stop}))
    _check_refusal(response, bad)
    if bad is not None:
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"  # OpenAI's shape kept
        assert error["param"] in ("prompt", "stop")
    _reads_back(client, generate_token, None)


@pytest.mark.django_db
@EXAMPLES
@given(text=any_text)
def test_query_strings_and_paths_never_fail_on_text(client, generate_token, text):
    # Query values reach database filters; a NUL there is refused by PostgreSQL.
    auth = {"HTTP_AUTHORIZATION": f"Bearer {generate_token}"}
    listing = client.get("/api/v1/jobs", {"state": text.encode("utf-8", "surrogatepass")}, **auth)
    assert listing.status_code < 500, listing.content[:300]

    raw = quote(text.encode("utf-8", "surrogatepass"), safe="")  # bytes as a client sends them
    detail = client.get(f"/api/v1/jobs/x{raw}", **auth)
    assert detail.status_code < 500, detail.content[:300]
    if "\x00" in text:
        assert detail.status_code == 400


@pytest.mark.django_db
@EXAMPLES
@given(name=any_text, affiliation=any_text)
def test_page_forms_never_fail_on_text(client, applicant, name, affiliation):
    # A form body is bytes: a browser cannot encode a surrogate, a script may send its bytes
    # (surrogatepass), which the server decodes as U+FFFD. NUL travels as %00.
    client.force_login(applicant)
    fields = {"full_name": name, "affiliation": affiliation, "action": "save"}
    body = "&".join(
        f"{k}={quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in fields.items()
    )
    response = client.post(
        "/access/apply/", data=body, content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code < 500, response.content[:300]
    if "\x00" in name + affiliation:
        assert response.status_code == 400
        assert b"NUL character" in response.content
    assert client.get("/access/").status_code == 200
    assert client.get("/access/apply/").status_code in (200, 302)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain text, émoji \U0001f600, CJK 漢字", None),
        ("\ufffe\uffff\U0010ffff private \ue000", None),  # noncharacters are storable
        ("a\x00b", "NUL character (U+0000) at position 1"),
        ("ab\ud800", "lone surrogate (U+D800) at position 2"),
        ("\udc00", "lone surrogate (U+DC00) at position 0"),
    ],
)
def test_the_rule(text, expected):
    problem = text_problem(text)

    if expected is None:
        assert problem is None
    else:
        assert expected in problem
