"""The API fuzzed against its own OpenAPI schema (`/api/v1/schema/`), with schemathesis.

Every operation, anonymous and with a token holding both scopes, valid and invalid data:
never a 5xx, and every answer is one the schema declares (status, content type, headers,
body). Bounded: a few dozen examples per operation and mode.
"""

from __future__ import annotations

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
BOUNDED = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure is reproducible
    suppress_health_check=list(HealthCheck),
)

schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", get_wsgi_application())


@pytest.fixture
def fuzz_token(researcher) -> str:
    from accounts.services import token_create

    return token_create(user=researcher, name="fuzz", scopes=["generate", "download"])[1]


@pytest.fixture(autouse=True)
def _test_friendly_app(settings):
    from django.core import signals
    from django.db import close_old_connections

    # A completion that finds a real model waits for a worker that is not there.
    settings.JOBS_SYNC_WAIT_SECONDS = 1
    # The WSGI app closes the database connection after each request, and with it the
    # test's transaction; Django's own test client disconnects this signal the same way.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.mark.slow
@pytest.mark.django_db
@schema.parametrize()
@BOUNDED
def test_the_api_answers_anonymous_callers_as_its_schema_says(case):
    response = case.call()
    case.validate_response(response, checks=CHECKS)


@pytest.mark.slow
@pytest.mark.django_db
@schema.parametrize()
@BOUNDED
def test_the_api_answers_a_token_holder_as_its_schema_says(case, fuzz_token):
    response = case.call(headers={"Authorization": f"Bearer {fuzz_token}"})
    case.validate_response(response, checks=CHECKS)
