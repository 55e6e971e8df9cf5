"""Personal access tokens: shown once, hashed at rest, scoped, and killed when they must be."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import RequestFactory
from django.utils import timezone
from rest_framework.request import Request

from accounts import services
from accounts.authentication import TokenAuthentication, require_scope, token_authenticate
from accounts.models import AccessToken, Grant
from core.errors import InvalidInput, NotFound, PermissionDenied

pytestmark = pytest.mark.django_db


def bearer(key: str):
    return RequestFactory().get("/api/v1/models", HTTP_AUTHORIZATION=f"Bearer {key}")


def test_the_key_is_returned_once_and_only_its_hash_is_stored(researcher):
    token, key = services.token_create(user=researcher, name="laptop", scopes=["download"])
    assert key.startswith("llp_") and len(key) > 40
    row = AccessToken.objects.filter(pk=token.pk).values().get()
    assert key not in {str(value) for value in row.values()}
    assert row["key_hash"] == services.token_hash(key)
    assert key.startswith(row["prefix"])


def test_a_token_authenticates_and_records_its_use(researcher):
    token, key = services.token_create(user=researcher, name="nb", scopes=["generate"])
    user, found = token_authenticate(bearer(key))
    assert (user, found) == (researcher, token)
    token.refresh_from_db()
    assert token.last_used_at is not None


def test_no_header_is_no_token():
    assert token_authenticate(RequestFactory().get("/")) is None


@pytest.mark.parametrize("key", ["llp_" + "x" * 43, "not-a-portal-token", "llp_short"])
def test_an_unknown_key_is_refused(researcher, key):
    with pytest.raises(PermissionDenied) as excinfo:
        token_authenticate(bearer(key))
    assert excinfo.value.code == "token_invalid"


def test_a_key_with_a_known_prefix_but_wrong_rest_is_refused(researcher):
    _, key = services.token_create(user=researcher, name="nb", scopes=["generate"])
    forged = key[:12] + ("A" if key[12] != "A" else "B") + key[13:]
    with pytest.raises(PermissionDenied):
        token_authenticate(bearer(forged))


def test_revoked_and_expired_tokens_are_refused_with_the_reason(researcher):
    token, key = services.token_create(user=researcher, name="nb", scopes=["generate"])
    services.token_revoke(token=token, actor=researcher)
    with pytest.raises(PermissionDenied) as excinfo:
        token_authenticate(bearer(key))
    assert excinfo.value.code == "token_revoked"

    token2, key2 = services.token_create(user=researcher, name="old", scopes=["generate"])
    AccessToken.objects.filter(pk=token2.pk).update(expires_at=timezone.now() - timedelta(1))
    with pytest.raises(PermissionDenied) as excinfo:
        token_authenticate(bearer(key2))
    assert excinfo.value.code == "token_expired"


def test_only_the_owner_revokes_a_token(researcher, outsider):
    token, _ = services.token_create(user=researcher, name="nb", scopes=["generate"])
    with pytest.raises(NotFound):
        services.token_revoke(token=token, actor=outsider)
    token.refresh_from_db()
    assert token.revoked_at is None


def test_creation_checks_its_input(researcher):
    with pytest.raises(InvalidInput):
        services.token_create(user=researcher, name="", scopes=["download"])
    with pytest.raises(InvalidInput):
        services.token_create(user=researcher, name="x", scopes=["admin"])
    with pytest.raises(InvalidInput):
        services.token_create(user=researcher, name="x", scopes=[])
    with pytest.raises(InvalidInput):
        services.token_create(user=researcher, name="x", scopes=["download"], expires_in_days=0)
    assert not AccessToken.objects.filter(user=researcher).exists()


def test_scopes_are_enforced_for_tokens_and_sessions_pass(researcher):
    _, key = services.token_create(user=researcher, name="dl", scopes=["download"])
    request = bearer(key)
    require_scope(request, "download")
    with pytest.raises(PermissionDenied) as excinfo:
        require_scope(request, "generate")
    assert excinfo.value.code == "token_scope"

    session = RequestFactory().get("/")
    session.user = researcher
    require_scope(session, "generate")

    from django.contrib.auth.models import AnonymousUser

    anonymous = RequestFactory().get("/")
    anonymous.user = AnonymousUser()
    with pytest.raises(PermissionDenied):
        require_scope(anonymous, "download")


def test_drf_authentication_sets_the_token_as_auth(researcher):
    token, key = services.token_create(user=researcher, name="api", scopes=["generate"])
    assert TokenAuthentication().authenticate(Request(bearer(key))) == (researcher, token)
    assert TokenAuthentication().authenticate(Request(RequestFactory().get("/"))) is None


def _live_tokens(user) -> int:
    return AccessToken.objects.filter(user=user, revoked_at__isnull=True).count()


def test_a_password_change_kills_every_token(researcher):
    services.token_create(user=researcher, name="a", scopes=["download"])
    services.token_create(user=researcher, name="b", scopes=["generate"])
    researcher.refresh_from_db()
    researcher.set_password("a-completely-new-password-2024")
    researcher.save()
    assert _live_tokens(researcher) == 0
    assert (
        AccessToken.objects.filter(user=researcher, revoke_reason="password changed").count() == 2
    )


def test_saving_the_user_without_a_password_change_keeps_tokens(researcher):
    services.token_create(user=researcher, name="a", scopes=["download"])
    researcher.refresh_from_db()
    researcher.first_name = "Rosalind"
    researcher.save()
    researcher.last_login = timezone.now()
    researcher.save(update_fields=["last_login"])
    assert _live_tokens(researcher) == 1


def test_deactivation_kills_every_token(researcher, reviewer):
    services.token_create(user=researcher, name="a", scopes=["download"])
    services.user_deactivate(user=researcher, actor=reviewer, reason="left the lab")
    assert _live_tokens(researcher) == 0

    services.token_create(user=reviewer, name="b", scopes=["download"])
    reviewer.refresh_from_db()
    reviewer.is_active = False
    reviewer.save()  # the admin's checkbox
    assert _live_tokens(reviewer) == 0


def test_revoking_access_kills_every_token(researcher, reviewer):
    services.token_create(user=researcher, name="a", scopes=["download"])
    grant = Grant.objects.get(user=researcher, variant__slug="7b")
    services.grant_revoke(grant=grant, actor=reviewer, reason="Breach of license.")
    assert _live_tokens(researcher) == 0


def test_a_token_killed_by_a_revocation_carries_the_reviewers_reason(researcher, reviewer):
    _token, key = services.token_create(user=researcher, name="a", scopes=["download"])
    grant = Grant.objects.get(user=researcher, variant__slug="7b")
    services.grant_revoke(grant=grant, actor=reviewer, reason="Breach of license.")
    token = services.token_find(key)
    assert token.revoke_reason == "access to LLaMA 7B revoked: Breach of license"


def test_the_found_token_and_its_user_hold_what_the_orm_reads(researcher):
    """token_find reads the token and its user in one plain query: every field, converted,
    equals the ORM's (dates as aware datetimes, scopes as a list, flags as booleans)."""
    from django.contrib.auth import get_user_model

    token, key = services.token_create(
        user=researcher, name="laptop", scopes=["download", "generate"]
    )
    services.token_touch(token=token)

    found = services.token_find(key)
    expected = AccessToken.objects.select_related("user").get(pk=token.pk)

    for field in AccessToken._meta.concrete_fields:
        assert getattr(found, field.attname) == getattr(expected, field.attname), field.name
    for field in get_user_model()._meta.concrete_fields:
        value = getattr(found.user, field.attname)
        assert value == getattr(expected.user, field.attname), field.name
        assert type(value) is type(getattr(expected.user, field.attname)), field.name
    assert isinstance(found.scopes, list) and found.expires_at.tzinfo is not None
    assert found.user is not None and found.user.pk == researcher.pk
    assert not found._state.adding and found.user.is_authenticated
    assert services.token_find(key[:12] + "x" * (len(key) - 12)) is None  # same prefix, bad key
    assert services.token_find("llp_" + "0" * 40) is None  # no such prefix
