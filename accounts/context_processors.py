"""What every page's layout needs to know about the person viewing it."""

from __future__ import annotations

from django.http import HttpRequest

from accounts.selectors import user_is_reviewer


def nav(request: HttpRequest) -> dict:
    """`user_is_reviewer` for the nav's link to the review console.

    A callable, so the template asks only when it renders the link (a template calls what it
    is given), and the answer is `accounts.selectors.user_is_reviewer`'s, memoised on
    `request.user` for the rest of the request.
    """
    return {"user_is_reviewer": lambda: user_is_reviewer(getattr(request, "user", None))}
