"""allauth's hooks: where people land after signing in, and what its emails carry."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.conf import settings

from accounts.selectors import user_is_reviewer


class AccountAdapter(DefaultAccountAdapter):
    def get_login_redirect_url(self, request) -> str:
        # Reviewers work in the console; everyone else follows their access at /access/.
        # An explicit ?next= still wins (allauth checks it before asking the adapter).
        if user_is_reviewer(request.user):
            return settings.REVIEW_LANDING_URL
        return super().get_login_redirect_url(request)

    def send_mail(self, template_prefix: str, email: str, context: dict) -> None:
        # allauth's messages use the portal's own greeting and signature
        # (templates/account/email/base_message.txt), which name the portal's address.
        super().send_mail(template_prefix, email, {"site_url": settings.SITE_URL, **context})
