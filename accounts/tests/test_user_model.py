from __future__ import annotations

import pytest
from django.contrib.auth import authenticate, get_user_model


@pytest.mark.django_db
def test_the_email_is_the_login_and_is_case_insensitive():
    User = get_user_model()
    user = User.objects.create_user("Ada@Example.org", "a-long-enough-password", first_name="Ada")

    assert user.email == "ada@example.org"
    assert not hasattr(user, "username") or user.username is None
    assert authenticate(email="ADA@example.org", password="a-long-enough-password") == user
    assert authenticate(email="ada@example.org", password="wrong-password-here") is None
    assert user.display_name == "Ada"


@pytest.mark.django_db
def test_superusers_are_staff():
    admin = get_user_model().objects.create_superuser("root@example.org", "another-long-password")
    assert admin.is_staff and admin.is_superuser
