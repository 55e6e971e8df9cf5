"""Personal access tokens on requests: `Authorization: Bearer llp_...`.

`TokenAuthentication` serves DRF views (request.auth is the AccessToken);
`token_authenticate` serves plain Django views (download links, the OpenAI-style API).
A bad, expired or revoked token is refused with a reason, never treated as anonymous.
"""

from __future__ import annotations

from django.http import HttpRequest
from rest_framework.authentication import BaseAuthentication

from accounts.models import TOKEN_PREFIX, AccessToken, User
from accounts.services import token_find, token_touch
from core.errors import PermissionDenied


def _bearer(request: HttpRequest) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


def token_authenticate(request: HttpRequest) -> tuple[User, AccessToken] | None:
    """The user and token of a Bearer token, None when the request carries none."""
    key = _bearer(request)
    if key is None:
        return None
    if not key.startswith(TOKEN_PREFIX):
        raise PermissionDenied(
            "This is not a portal access token: create one on /access/tokens/.",
            code="token_invalid",
        )
    token = token_find(key)
    if token is None:
        raise PermissionDenied(
            "This access token is not valid: check it was copied whole, or create a new one "
            "on /access/tokens/.",
            code="token_invalid",
        )
    if token.revoked_at is not None:
        raise PermissionDenied(
            f"This access token was revoked ({token.revoke_reason or 'revoked'}); "
            "create a new one on /access/tokens/.",
            code="token_revoked",
        )
    if not token.is_usable():
        raise PermissionDenied(
            f"This access token expired on {token.expires_at:%Y-%m-%d}; create a new one on "
            "/access/tokens/.",
            code="token_expired",
        )
    if not token.user.is_active:
        raise PermissionDenied("This account is deactivated.", code="inactive")
    token_touch(token=token)
    return token.user, token


class TokenAuthentication(BaseAuthentication):
    """DRF authentication by personal access token; request.auth is the AccessToken."""

    def authenticate(self, request):
        return token_authenticate(request._request if hasattr(request, "_request") else request)

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


def require_scope(request, scope: str) -> None:
    """A session passes; a token must carry `scope` ("download" | "generate")."""
    token = getattr(request, "auth", None)
    if not isinstance(token, AccessToken) and _bearer(request) is not None:
        result = token_authenticate(request)
        token = result[1] if result else None
    if isinstance(token, AccessToken):
        if not token.has_scope(scope):
            raise PermissionDenied(
                f"This access token lacks the '{scope}' scope; create a token with it on "
                "/access/tokens/.",
                code="token_scope",
            )
        return
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        raise PermissionDenied("Sign in, or send a personal access token.", code="anonymous")
