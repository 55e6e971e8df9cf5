"""The one access check of the review console. Every view is wrapped in `reviewer_required`.

Anonymous visitors get 403 (with where to sign in); signed-in people who are not reviewers
get 404, so the console does not tell them what it holds.
"""

from __future__ import annotations

from functools import wraps

from accounts.models import Application, Grant
from accounts.selectors import user_is_reviewer
from core.errors import NotFound, PermissionDenied


def review_require(user) -> None:
    """Raise unless `user` is a reviewer (`accounts.selectors.user_is_reviewer`, which
    memoises its answer on the user, so the services this request calls ask no more)."""
    if user is None or not user.is_authenticated:
        raise PermissionDenied(
            "Sign in (/accounts/login/) with a reviewer account to use the review console.",
            code="anonymous",
        )
    if not user_is_reviewer(user):
        raise NotFound("There is no such page.")


def reviewer_required(view):
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        review_require(request.user)
        return view(request, *args, **kwargs)

    wrapper.review_protected = True  # the URL test checks every console view carries this
    return wrapper


def application_get_for_review(application_id: int) -> Application:
    """An application the console may show: anything past the draft stage."""
    application = (
        (Application.objects.select_related("user").exclude(submitted_at__isnull=True))
        .filter(pk=application_id)
        .first()
    )
    if application is None:
        raise NotFound(f"There is no submitted application #{application_id}.")
    return application


def grant_get_for_review(grant_id: int) -> Grant:
    """A grant the console may revoke, with what its confirmation page shows."""
    grant = (
        Grant.objects.select_related("user", "variant", "application").filter(pk=grant_id).first()
    )
    if grant is None:
        raise NotFound(f"There is no grant #{grant_id}.")
    return grant
