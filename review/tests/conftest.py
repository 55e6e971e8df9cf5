from __future__ import annotations

import pytest
from django.contrib.auth.models import Group

from accounts.selectors import REVIEWER_GROUP
from accounts.tests.factories import UserFactory


@pytest.fixture
def reviewer_client(client, reviewer):
    client.force_login(reviewer)
    return client


@pytest.fixture
def staff_not_reviewer(db):
    return UserFactory(email="staff@portal.example.org", is_staff=True)


@pytest.fixture
def group_member_not_staff(db):
    user = UserFactory(email="member@portal.example.org")
    group, _ = Group.objects.get_or_create(name=REVIEWER_GROUP)
    user.groups.add(group)
    return user


# Data that migrations seed: a transactional test that ran before (live_server, a Celery
# worker) flushed it at its teardown, so a transactional test re-seeds what it needs.
SEED_MIGRATIONS = [
    "weights.migrations.0002_catalog",
    "accounts.migrations.0003_license_and_reviewers",
    "weights.migrations.0004_variant_license",
    "review.migrations.0002_reason_templates",
]


@pytest.fixture
def seeded(transactional_db):
    import importlib

    from django.apps import apps

    for name in SEED_MIGRATIONS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue  # renamed by its owner: that app's own tests will say so
        module.forwards(apps, None)
