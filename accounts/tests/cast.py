"""The cast every test can use (registered in the root conftest.py).

- `applicant`: verified, an application for 7B and 13B waiting for review
- `researcher`: approved for demo and 7B, license accepted
- `revoked_researcher`: was approved for 7B, then revoked
- `reviewer`, `second_reviewer`: staff in the "reviewers" group
- `outsider`: verified, never applied
Every password is `accounts.tests.factories.CAST_PASSWORD`.

Tests that use `live_server` also get the migrations' data back (catalog, license,
reviewers group): an earlier transactional test may have flushed it.
"""

from __future__ import annotations

import pytest

from accounts.tests.factories import (
    ReviewerFactory,
    UserFactory,
    application_fill,
    grant_access,
)


@pytest.fixture
def applicant(db):
    user = UserFactory(email="applicant@uni.example.edu", first_name="Ada", last_name="Applicant")
    application_fill(user, "7b", "13b")
    return user


@pytest.fixture
def researcher(db):
    user = UserFactory(email="researcher@uni.example.edu", first_name="Rosa", last_name="Search")
    grant_access(user, "demo", "7b")
    return user


@pytest.fixture
def revoked_researcher(db):
    from accounts import services

    user = UserFactory(email="revoked@uni.example.edu", first_name="Rex", last_name="Voked")
    (grant,) = grant_access(user, "7b")
    services.grant_revoke(grant=grant, actor=ReviewerFactory(), reason="Shared the weights.")
    return user


@pytest.fixture
def reviewer(db):
    return ReviewerFactory(email="reviewer@portal.example.org", first_name="Rita", last_name="View")


@pytest.fixture
def second_reviewer(db):
    return ReviewerFactory(
        email="reviewer2@portal.example.org", first_name="Sam", last_name="Second"
    )


@pytest.fixture
def outsider(db):
    return UserFactory(email="outsider@example.com", first_name="Otto", last_name="Outside")
