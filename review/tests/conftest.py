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
