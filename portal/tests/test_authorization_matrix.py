"""The authorization matrix: every routed URL, requested as every kind of person, answers as
one table says (issue 12).

- `ROUTES` is the table: a row per URL (its name, or its pattern when it has none; a row
  whose key holds `*` covers every URL that matches it, and an exact row wins over one).
  Each row says, per method, the outcome for each persona in `PERSONAS`. A routed URL
  without a row fails `test_every_routed_url_has_a_row`: a new URL must be classified.
- Outcomes: "ok" (2xx), "redirect" (3xx elsewhere than a login page), "login" (3xx to the
  site's or the admin's login page), or the status code ("400", "401", "403", "404", ...).
- URLs that take an object's id are requested with an object of `approved` (the review
  console's with the applicant's application and the approved researcher's grant, the
  admin's with any row of the model): everyone else gets 404 for someone else's object.
  `test_a_second_user_gets_404_for_the_first_users_objects` checks it again between two
  people of the same kind, and that the object is untouched.
- Every request runs in a savepoint that is rolled back, so no request changes what the
  next one sees (a withdrawal, a revoked token, a used link), and the order does not matter.
- No answer is a 5xx; answers under /api/ and /v1/ are JSON (except the few successful
  answers that are by design something else: `NOT_JSON_WHEN_OK`).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.contrib import admin
from django.contrib.contenttypes.models import ContentType
from django.core.signals import request_finished
from django.db import close_old_connections, transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.utils import timezone

from accounts import services as account_services
from accounts.models import Grant
from accounts.tests.factories import (
    ReviewerFactory,
    UserFactory,
    application_fill,
    grant_access,
)
from catalog.models import ModelVariant
from weights.client_wheel import client_wheel

ROOT = Path(__file__).resolve().parents[2]
LLAMA_TOKENIZER = ROOT / "testdata" / "llama-tokenizer" / "tokenizer.model"

PERSONAS = (
    "anonymous",
    "unverified",  # signed up, email address not verified
    "applicant",  # a submitted application, no grant
    "rejected",
    "unlicensed",  # approved for 7B, the license version in force not accepted
    "approved",  # approved for 7B, license accepted
    "revoked",
    "expired",  # a 7B grant whose end has passed
    "reviewer",
    "superuser",
    "token",  # approved's token with the scope the URL needs (no session)
    "wrong_scope",  # approved's token without the scope the URL needs (no session)
)


def o(default: str, **overrides: str) -> dict[str, str]:
    """A persona -> outcome map: `default` for everyone not named."""
    unknown = set(overrides) - set(PERSONAS)
    assert not unknown, f"unknown personas {unknown}"
    return {persona: overrides.get(persona, default) for persona in PERSONAS}


# Common shapes of a row.
EVERYONE = o("ok")
SIGNED_IN = o("ok", anonymous="login", token="login", wrong_scope="login")
# The console: 403 with where to sign in for anonymous visitors, 404 for people who are not
# reviewers (it does not tell them what it holds).
CONSOLE = o("404", anonymous="403", token="403", wrong_scope="403", reviewer="ok", superuser="ok")
# The admin: staff only (others go to its login page); reviewers are staff without model
# permissions; models kept read-only refuse adding and deleting even to a superuser.
ADMIN_SITE = o("login", reviewer="ok", superuser="ok")
ADMIN_MODEL = o("login", reviewer="403", superuser="ok")
ADMIN_REFUSED = o("login", reviewer="403", superuser="403")
# Files of a size: the one access check (no grant, no license, revoked, expired: 403, with
# why); a session or a download-scoped token.
DOWNLOAD_FILE = o("403", anonymous="login", approved="ok", token="ok")
# The REST API (session or token): only the 7B grant with its license passes.
API_7B = o("403", anonymous="401", approved="ok", token="ok")
API_SIGNED_IN = o("ok", anonymous="401", wrong_scope="403")
# The approved researcher's own object: everyone else 404.
API_OWN = o("404", anonymous="401", wrong_scope="403", approved="ok", token="ok")
# Evaluations: the owner's (approved's) task or evaluation, which staff may also see.
API_OWN_OR_STAFF = API_OWN | {"reviewer": "ok", "superuser": "ok"}
PAGE_OWN_OR_STAFF = o(
    "404", anonymous="login", token="login", wrong_scope="login", approved="ok", reviewer="ok",
    superuser="ok",
)  # fmt: skip
# OpenAI-style routes: tokens only (a session is not enough: no CSRF exposure).
OPENAI = o("401", token="ok", wrong_scope="403")
# allauth pages that only a signed-out visitor uses; a signed-in one is sent on.
SIGNED_OUT_PAGE = o("redirect", anonymous="ok", token="ok", wrong_scope="ok")
SIGNED_IN_REDIRECT = o("redirect", anonymous="login", token="login", wrong_scope="login")
# Answers that depend on the person's own application (a decided application cannot be
# withdrawn: 409; nothing to withdraw: 404).
WITHDRAW = SIGNED_IN | {
    "unverified": "404",
    "applicant": "redirect",
    "rejected": "409",
    "unlicensed": "409",
    "approved": "409",
    "revoked": "409",
    "expired": "409",
    "reviewer": "404",
    "superuser": "404",
}

ROUTES: dict[str, dict[str, dict[str, str]]] = {
    # --- site pages ---------------------------------------------------------------------
    "home": {"GET": EVERYONE},
    "healthz": {"GET": EVERYONE},
    "weights:variant_list": {"GET": EVERYONE},
    "weights:variant_detail": {"GET": EVERYONE},
    "weights:checklist": {"GET": DOWNLOAD_FILE},
    "weights:manifest": {"GET": DOWNLOAD_FILE},
    "weights:download_script": {"GET": DOWNLOAD_FILE},
    "download": {
        "GET": o("404", anonymous="login", approved="redirect", token="redirect", wrong_scope="403")
    },
    "client_wheel": {"GET": EVERYONE},  # the Python client, for pip install from the portal
    "inference:playground": {"GET": SIGNED_IN},
    # Model cards are public, every version of them.
    "catalog:card": {"GET": EVERYONE},
    "catalog:card_history": {"GET": EVERYONE},
    "catalog:card_version": {"GET": EVERYONE},
    "catalog:card_table": {"GET": EVERYONE},
    "catalog:card_version_table": {"GET": EVERYONE},
    # --- the applicant's pages --------------------------------------------------------
    "access:status": {"GET": SIGNED_IN},
    # A decided or submitted application sends its owner to the status page; the POST
    # (an empty draft) saves a draft where one may be started.
    "access:apply": {
        "GET": SIGNED_IN_REDIRECT | {"unverified": "ok", "reviewer": "ok", "superuser": "ok"},
        "POST": SIGNED_IN_REDIRECT,
    },
    "access:withdraw": {"POST": WITHDRAW},
    "access:reapply": {"POST": SIGNED_IN_REDIRECT},
    # An empty acceptance (no typed name) is refused with the form again.
    "access:license": {
        "GET": EVERYONE,  # readable before signing up; accepting it needs an account
        "POST": o("400", anonymous="login", token="login", wrong_scope="login"),
    },
    "access:tokens": {"GET": SIGNED_IN, "POST": SIGNED_IN},
    "access:token_revoke": {
        "POST": o("404", anonymous="login", token="login", wrong_scope="login", approved="redirect")
    },
    # --- REST API ----------------------------------------------------------------------
    "weights-api-links": {"GET": API_7B},
    "inference-api:models": {"GET": API_SIGNED_IN},
    "inference-api:jobs": {"GET": API_SIGNED_IN, "POST": API_7B},
    "inference-api:job-detail": {"GET": API_OWN},
    "inference-api:job-cancel": {"POST": API_OWN},
    "inference-api:job-stream": {"GET": API_OWN},
    "inference-api:schema": {"GET": EVERYONE},
    "inference-api:docs": {"GET": EVERYONE},
    # --- evaluations: uploading needs a grant (or staff); running one, a grant for the size
    "evaluations:index": {"GET": SIGNED_IN},
    "evaluations:start": {
        "POST": PAGE_OWN_OR_STAFF | {"approved": "redirect", "reviewer": "403", "superuser": "403"}
    },
    "evaluations:task-file": {"GET": PAGE_OWN_OR_STAFF},
    "evaluations:detail": {"GET": PAGE_OWN_OR_STAFF},
    "evaluations:status": {"GET": PAGE_OWN_OR_STAFF},
    "evaluations:items-csv": {"GET": PAGE_OWN_OR_STAFF},
    "evaluations:items-json": {"GET": PAGE_OWN_OR_STAFF},
    "evaluations:cancel": {
        "POST": PAGE_OWN_OR_STAFF
        | {"approved": "redirect", "reviewer": "redirect", "superuser": "redirect"}
    },
    "evaluations:resume": {
        "POST": PAGE_OWN_OR_STAFF
        | {"approved": "redirect", "reviewer": "redirect", "superuser": "redirect"}
    },
    "evaluations-api:tasks": {
        "GET": API_SIGNED_IN,
        "POST": API_7B | {"reviewer": "ok", "superuser": "ok"},
    },
    "evaluations-api:task-detail": {"GET": API_OWN_OR_STAFF, "DELETE": API_OWN_OR_STAFF},
    "evaluations-api:evaluations": {
        "GET": API_SIGNED_IN,
        "POST": API_OWN | {"reviewer": "403", "superuser": "403"},
    },
    "evaluations-api:detail": {"GET": API_OWN_OR_STAFF},
    "evaluations-api:cancel": {"POST": API_OWN_OR_STAFF},
    # running: nothing to resume (409); only the owner may resume
    "evaluations-api:resume": {
        "POST": API_OWN | {"approved": "409", "token": "409", "reviewer": "403", "superuser": "403"}
    },
    "evaluations-api:items": {"GET": API_OWN_OR_STAFF},
    "evaluations-api:items-csv": {"GET": API_OWN_OR_STAFF},
    # --- OpenAI-style API --------------------------------------------------------------
    "openai:models": {"GET": OPENAI},
    "openai:model": {"GET": OPENAI},
    "openai:tokenizer-file": {"GET": OPENAI},
    "openai:completions": {"POST": OPENAI},
    "openai:tokenize": {"POST": OPENAI},
    "openai:detokenize": {"POST": OPENAI},
    # No chat format: a 400 that says so, to whoever may use the API.
    "openai:chat-completions": {"POST": OPENAI | {"token": "400"}},
    "openai:not-found": {"GET": o("404"), "POST": o("404")},
    # --- review console ----------------------------------------------------------------
    "review:queue": {"GET": CONSOLE},
    "review:dashboard": {"GET": CONSOLE},
    "review:export": {"GET": CONSOLE},
    "review:detail": {"GET": CONSOLE},
    # A decision without `confirmed` answers its confirmation page.
    "review:bulk": {"POST": CONSOLE},
    "review:claim": {"POST": CONSOLE | {"reviewer": "redirect", "superuser": "redirect"}},
    # Nobody holds the application's claim: nothing to release.
    "review:release": {"POST": CONSOLE | {"reviewer": "409", "superuser": "409"}},
    "review:take_over": {"POST": CONSOLE},
    "review:add_note": {"POST": CONSOLE | {"reviewer": "redirect", "superuser": "redirect"}},
    "review:approve": {"POST": CONSOLE},
    "review:reject": {"POST": CONSOLE},
    "review:return": {"POST": CONSOLE},
    "review:revoke": {"POST": CONSOLE},
    "review:cards": {"GET": CONSOLE},
    # An empty card is refused with the form again.
    "review:card_edit": {"GET": CONSOLE, "POST": CONSOLE | {"reviewer": "400", "superuser": "400"}},
    # --- admin -------------------------------------------------------------------------
    "admin:index": {"GET": ADMIN_SITE},
    "admin:login": {"GET": o("ok", reviewer="redirect", superuser="redirect")},
    # Staff see the "logged out" page; anyone else is sent on.
    "admin:logout": {"POST": o("redirect", reviewer="ok", superuser="ok")},
    "admin:password_change": {"GET": ADMIN_SITE},
    "admin:password_change_done": {"GET": ADMIN_SITE},
    # Without its query parameters the autocomplete refuses everyone.
    "admin:autocomplete": {"GET": ADMIN_REFUSED},
    "admin:jsi18n": {"GET": ADMIN_SITE},
    # A grant has no page on the site to show.
    "admin:view_on_site": {"GET": o("login", reviewer="404", superuser="404")},
    "admin:app_list": {"GET": o("login", reviewer="404", superuser="ok")},
    "admin:*_changelist": {"GET": ADMIN_MODEL},
    "admin:*_add": {"GET": ADMIN_MODEL},
    "admin:*_history": {"GET": ADMIN_MODEL},
    "admin:*_delete": {"GET": ADMIN_MODEL},
    "admin:*_change": {"GET": ADMIN_MODEL},
    "admin:auth_user_password_change": {"GET": ADMIN_MODEL},
    # The record of who decided what is never written through the admin.
    "admin:accounts_application_add": {"GET": ADMIN_REFUSED},
    "admin:accounts_application_delete": {"GET": ADMIN_REFUSED},
    "admin:accounts_grant_add": {"GET": ADMIN_REFUSED},
    "admin:accounts_grant_delete": {"GET": ADMIN_REFUSED},
    "admin:accounts_accesstoken_add": {"GET": ADMIN_REFUSED},
    "admin:accounts_accesstoken_delete": {"GET": ADMIN_REFUSED},
    "admin:accounts_licenseacceptance_add": {"GET": ADMIN_REFUSED},
    "admin:accounts_licenseacceptance_delete": {"GET": ADMIN_REFUSED},
    "admin:accounts_auditentry_add": {"GET": ADMIN_REFUSED},
    "admin:accounts_auditentry_delete": {"GET": ADMIN_REFUSED},
    "admin:catalog_license_add": {"GET": ADMIN_REFUSED},
    "admin:catalog_modelcardversion_add": {"GET": ADMIN_REFUSED},
    "admin:catalog_modelcardversion_delete": {"GET": ADMIN_REFUSED},
    "admin:catalog_cardversionseen_add": {"GET": ADMIN_REFUSED},
    "admin:catalog_licenseversion_add": {"GET": ADMIN_REFUSED},
    "admin:catalog_weightfile_add": {"GET": ADMIN_REFUSED},
    "admin:weights_downloadlink_add": {"GET": ADMIN_REFUSED},
    "admin:weights_downloadevent_add": {"GET": ADMIN_REFUSED},
    "admin:inference_generationjob_add": {"GET": ADMIN_REFUSED},
    "admin:evaluations_evaluationtask_add": {"GET": ADMIN_REFUSED},
    "admin:evaluations_evaluation_add": {"GET": ADMIN_REFUSED},
    # `<id>/` redirects to `<id>/change/` for staff (checked above), to the login otherwise.
    "admin/*/<path:object_id>/": {"GET": o("login", reviewer="redirect", superuser="redirect")},
    "admin/(?P<url>.*)$": {"GET": o("login", reviewer="404", superuser="404")},
    # --- allauth -----------------------------------------------------------------------
    "account_login": {"GET": SIGNED_OUT_PAGE, "POST": SIGNED_OUT_PAGE},
    "account_logout": {
        "GET": o("ok", anonymous="redirect", token="redirect", wrong_scope="redirect"),
        "POST": o("redirect"),
    },
    "account_inactive": {"GET": EVERYONE},
    "account_signup": {"GET": SIGNED_OUT_PAGE, "POST": SIGNED_OUT_PAGE},
    "account_reauthenticate": {"GET": SIGNED_IN},
    "account_email": {"GET": SIGNED_IN},
    "account_email_verification_sent": {"GET": EVERYONE},
    "account_change_password": {"GET": SIGNED_IN},
    # Every cast member has a password: setting one sends them to changing it.
    "account_set_password": {"GET": SIGNED_IN_REDIRECT},
    "account_reset_password": {"GET": EVERYONE, "POST": EVERYONE},
    # No login code was asked for.
    "account_confirm_login_code": {"GET": SIGNED_IN_REDIRECT},
    "account_confirm_email": {"GET": EVERYONE},
    "account_reset_password_from_key_done": {"GET": EVERYONE},
    "account_reset_password_from_key": {"GET": EVERYONE},
    "account_reset_password_done": {"GET": EVERYONE},
}

# Successful answers under /api/ and /v1/ that are not JSON, by design.
NOT_JSON_WHEN_OK = {
    "inference-api:docs",  # Swagger UI, a page
    "inference-api:schema",  # OpenAPI YAML
    "inference-api:job-stream",  # server-sent events
    "openai:completions",  # requested with stream=true: server-sent events
    "openai:tokenizer-file",  # the SentencePiece file
    "evaluations-api:items-csv",  # a CSV download
}

# The scope a token needs: "generate" on these and on every /v1/ URL, "download" elsewhere.
# `token` sends a token with both scopes; `wrong_scope` one with only the other scope.
GENERATE_ROUTES = {
    "inference-api:models",
    "inference-api:jobs",
    "inference-api:job-detail",
    "inference-api:job-cancel",
    "inference-api:job-stream",
    "evaluations-api:tasks",
    "evaluations-api:task-detail",
    "evaluations-api:evaluations",
    "evaluations-api:detail",
    "evaluations-api:cancel",
    "evaluations-api:resume",
    "evaluations-api:items",
    "evaluations-api:items-csv",
}

# Minimal bodies for unsafe methods: enough to reach the authorization decision, and where
# simple a valid request (the savepoint undoes whatever it does; a console decision without
# `confirmed` answers its confirmation page). "{name}" is filled from the world's values.
JSON_BODIES = {
    "inference-api:jobs": {"model": "7b", "prompt": "Hello", "max_new_tokens": 1},
    "openai:completions": {"model": "7b", "prompt": "Hello", "max_tokens": 1, "stream": True},
    "openai:tokenize": {"model": "7b", "prompt": "Hello"},
    "openai:detokenize": {"model": "7b", "tokens": [1, 15043]},
    "openai:chat-completions": {"model": "7b", "messages": [{"role": "user", "content": "Hi"}]},
    "evaluations-api:tasks": {"name": "t", "kind": "loglikelihood", "content": '{"text": "x"}'},
}
FORM_BODIES = {
    "evaluations:start": {"task": "{task_id}", "model": "7b"},
    "evaluations-api:evaluations": {"task": "{task_id}", "model": "7b"},
    "access:tokens": {"name": "laptop", "scopes": ["download"], "expires_in_days": "30"},
    "review:add_note": {"text": "A note."},
    "review:take_over": {"note": "Taking it over."},
    "review:approve": {"size": "7b", "ends_on": "{ends_on}"},
    "review:reject": {"size": "7b", "reason": "Out of scope."},
    "review:return": {"message": "Please describe the evaluation."},
    "review:revoke": {"reason": "Shared the weights."},
    "review:bulk": {"action": "reject", "ids": ["{application_id}"], "reason": "Out of scope."},
}


# --- the routes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    key: str  # `namespace:name`, or the pattern when it has no name
    pattern: str  # the full pattern, prefixes included
    converters: tuple[str, ...] = field(default=())
    admin_model: type | None = None


def _walk(resolver: URLResolver, prefix: str = "", namespace: str | None = None):
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            inner = entry.namespace
            ns = f"{namespace}:{inner}" if namespace and inner else (inner or namespace)
            yield from _walk(entry, prefix + str(entry.pattern), ns)
        elif isinstance(entry, URLPattern):
            pattern = prefix + str(entry.pattern)
            if entry.name:
                key = f"{namespace}:{entry.name}" if namespace else entry.name
            else:
                key = pattern
            yield key, pattern, entry


def routes() -> list[Route]:
    model_of = {}
    for model in admin.site._registry:
        opts = model._meta
        model_of[f"admin/{opts.app_label}/{opts.model_name}/"] = model
    found = []
    for key, pattern, _ in _walk(get_resolver()):
        names = tuple(re.findall(r"<(?:\w+:)?(\w+)>", pattern))
        admin_model = next((m for p, m in model_of.items() if pattern.startswith(p)), None)
        found.append(Route(key=key, pattern=pattern, converters=names, admin_model=admin_model))
    return found


def row_for(key: str) -> tuple[str, dict] | None:
    if key in ROUTES:
        return key, ROUTES[key]
    matches = [k for k in ROUTES if "*" in k and fnmatch.fnmatchcase(key, k)]
    if len(matches) > 1:
        raise AssertionError(f"{key} matches several rows: {matches}")
    return (matches[0], ROUTES[matches[0]]) if matches else None


def test_every_routed_url_has_a_row():
    keys = [route.key for route in routes()]
    missing = sorted({key for key in keys if row_for(key) is None})
    assert not missing, (
        "These URLs have no row in ROUTES; say what each persona gets there:\n  "
        + "\n  ".join(missing)
    )
    stale = sorted(
        k for k in ROUTES if not any(k == key or fnmatch.fnmatchcase(key, k) for key in keys)
    )
    assert not stale, f"These rows of ROUTES match no routed URL: {stale}"
    for key, row in ROUTES.items():
        for method, outcomes in row.items():
            assert set(outcomes) == set(PERSONAS), (key, method)


# --- the world -------------------------------------------------------------------------


@dataclass
class Owner:
    """An approved researcher and what they own: the URLs with an id name these."""

    user: object
    grant: Grant
    tokens: dict[str, tuple]  # "download" | "generate" | "both" | "owned" -> (token, key)
    job: object
    link: object
    evaluation: object  # running, of a task of theirs, on 7B

    def values(self) -> dict[str, object]:
        return {
            "grant_id": self.grant.pk,
            "token_id": self.tokens["owned"][0].pk,
            "job_id": str(self.job.pk),
            "link_id": self.link.pk,
            "task_id": self.evaluation.task_id,
            "evaluation_id": str(self.evaluation.pk),
        }


@dataclass
class World:
    users: dict[str, object]  # persona -> the user it signs in as
    variant: ModelVariant  # 7B, published
    owner: Owner  # `approved`, with the tokens the token personas send
    values: dict[str, object]  # URL parameter -> value


def _publish_7b(tmp_path: Path) -> ModelVariant:
    """7B with fake shards and the real LLaMA tokenizer, so /v1/tokenize answers."""
    from weights.services import variant_publish
    from weights.tests.checkpoints import write_checkpoint

    variant = ModelVariant.objects.get(slug="7b")
    directory = write_checkpoint(tmp_path / "7B", variant, shard_bytes=1024, checklist=False)
    shutil.copyfile(LLAMA_TOKENIZER, directory / "tokenizer.model")
    lines = [
        f"{hashlib.md5(p.read_bytes()).hexdigest()}  {p.name}\n"  # noqa: S324
        for p in sorted(directory.iterdir())
    ]
    (directory / "checklist.chk").write_text("".join(lines))
    variant_publish(variant=variant, directory=directory)
    variant.refresh_from_db()
    return variant


def approved_owner(email: str) -> Owner:
    from accounts.services import token_create
    from evaluations.services import evaluation_start, task_upload
    from inference.services import job_submit
    from weights.services import download_links_issue

    user = UserFactory(email=email)
    (grant,) = grant_access(user, "7b")
    tokens = {
        name: token_create(user=user, name=name, scopes=scopes)
        for name, scopes in (
            ("download", ["download"]),
            ("generate", ["generate"]),
            ("both", ["download", "generate"]),
            ("owned", ["download"]),
        )
    }
    job = job_submit(
        user=user, variant=grant.variant, prompts=["Hello"], params={"max_new_tokens": 1}
    )
    link = download_links_issue(user=user, variant=grant.variant)[0]
    task = task_upload(user=user, name="texts", kind="loglikelihood", data='{"text": "Hi."}')
    evaluation = evaluation_start(user=user, task=task, variant=grant.variant)
    return Owner(user=user, grant=grant, tokens=tokens, job=job, link=link, evaluation=evaluation)


def build_world(tmp_path: Path) -> World:
    from review import services as review_services
    from weights.services import download_link_use

    variant = _publish_7b(tmp_path)
    reviewer = ReviewerFactory()
    owner = approved_owner("approved@uni.example.edu")

    applicant = UserFactory(email="applicant@uni.example.edu")
    application = application_fill(applicant, "7b")

    rejected = UserFactory(email="rejected@uni.example.edu")
    account_services.application_reject(
        application=application_fill(rejected, "7b"), reviewer=reviewer, reason="Out of scope."
    )

    unlicensed = UserFactory(email="unlicensed@uni.example.edu")
    grant_access(unlicensed, "7b", accept_license=False)

    revoked = UserFactory(email="revoked@uni.example.edu")
    (revoked_grant,) = grant_access(revoked, "7b")
    account_services.grant_revoke(grant=revoked_grant, actor=reviewer, reason="Shared weights.")

    expired = UserFactory(email="expired@uni.example.edu")
    (expired_grant,) = grant_access(expired, "7b")
    past = timezone.now() - timedelta(days=1)
    Grant.objects.filter(pk=expired_grant.pk).update(
        starts_at=past - timedelta(days=30), ends_at=past
    )

    superuser = UserFactory(email="root@portal.example.org", is_staff=True, is_superuser=True)

    # A row of every model the admin shows, so its object pages have something to show.
    review_services.claim_take(application=application_fill(UserFactory(), "7b"), reviewer=reviewer)
    review_services.note_add(application=application, author=reviewer, text="Checked.")
    download_link_use(link_id=owner.link.pk, user=owner.user, ip="127.0.0.1", user_agent="test")

    users = {
        "unverified": UserFactory(email="unverified@uni.example.edu", verified=False),
        "applicant": applicant,
        "rejected": rejected,
        "unlicensed": unlicensed,
        "approved": owner.user,
        "revoked": revoked,
        "expired": expired,
        "reviewer": reviewer,
        "superuser": superuser,
    }
    values = {
        **owner.values(),
        "slug": variant.slug,
        "model": variant.slug,
        "application_id": application.pk,
        "id": owner.user.pk,  # the admin's password page of a user
        "url": "nothing-here/",
        "app_label": "accounts",
        # A table of the cards; a key no email confirmation or password reset has.
        "key": "hyperparameters",
        "uidb36": "0",
        "version": 1,
        "fmt": "csv",
        "filename": client_wheel().filename,
        "ends_on": (timezone.localdate() + timedelta(days=365)).isoformat(),
    }
    return World(users=users, variant=variant, owner=owner, values=values)


def url_for(route: Route, values: dict[str, object]) -> str:
    """The route's pattern with its parameters filled in (and checked to resolve back)."""
    values = dict(values)
    if route.admin_model is not None:
        obj = route.admin_model._default_manager.order_by("pk").first()
        assert obj is not None, f"build_world makes no {route.admin_model.__name__}"
        values["object_id"] = obj.pk
    if "content_type_id" in route.converters:
        values["content_type_id"] = ContentType.objects.get_for_model(Grant).pk
        values["object_id"] = Grant.objects.order_by("pk").first().pk

    def fill(match: re.Match) -> str:
        return str(values[match.group(1)])

    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", fill, route.pattern)
    path = re.sub(r"<(?:\w+:)?(\w+)>", fill, path)
    url = "/" + path.replace("^", "").replace("$", "").replace(".*", "nothing-here")
    match = resolve(urlsplit(url).path)
    assert (match.view_name if match.url_name else match.route) == route.key, (route, url)
    return url


# --- requests ----------------------------------------------------------------------------


def classify(response) -> str:
    status = response.status_code
    if 300 <= status < 400:
        path = urlsplit(response["Location"]).path
        return "login" if path in ("/accounts/login/", "/admin/login/") else "redirect"
    if 200 <= status < 300:
        return "ok"
    return str(status)


def finish(response) -> None:
    """Close a streamed answer (a file, server-sent events), as the test client closes the
    others, without its end-of-request signal closing the test's database connection."""
    if response.streaming:
        request_finished.disconnect(close_old_connections)
        try:
            response.close()
        finally:
            request_finished.connect(close_old_connections)


def is_json(response) -> bool:
    return response.get("Content-Type", "").split(";")[0].strip() == "application/json"


def needed_scope(route_key: str) -> str:
    return (
        "generate"
        if route_key in GENERATE_ROUTES or route_key.startswith("openai:")
        else "download"
    )


class Visitor:
    """One person's client: signed in by session, or sending a token, or neither."""

    def __init__(self, *, user=None, token: str | None = None, values: dict[str, object]):
        self.client = Client(raise_request_exception=False)
        if user is not None:
            self.client.force_login(user)
        self.cookies = SimpleCookie(self.client.cookies.output(header="", sep="\n"))
        self.token = token
        self.values = values

    def _fill(self, value):
        if isinstance(value, list):
            return [self._fill(v) for v in value]
        return value.format(**self.values)

    def request(
        self, method: str, route_key: str, url: str, *, token: str | None = None, keep=False
    ):
        """One request; unless `keep`, in a savepoint that is rolled back afterwards."""
        token = token or self.token
        kwargs: dict = {"headers": {"Authorization": f"Bearer {token}"} if token else {}}
        if method == "POST":
            if route_key in JSON_BODIES:
                kwargs.update(data=JSON_BODIES[route_key], content_type="application/json")
            else:
                body = FORM_BODIES.get(route_key, {})
                kwargs.update(data={k: self._fill(v) for k, v in body.items()})
        # A savepoint per request: nothing a request changes is seen by the next one. The
        # session cookie goes back too (a logout replaces it).
        with transaction.atomic():
            response = getattr(self.client, method.lower())(url, **kwargs)
            transaction.set_rollback(not keep)
        self.client.cookies = SimpleCookie(self.cookies.output(header="", sep="\n"))
        return response


def persona_token(persona: str, world: World, route_key: str) -> str | None:
    """The key the token personas send on this URL (the scope it needs, or the other one)."""
    tokens = world.owner.tokens
    if persona == "token":
        return tokens["both"][1]
    if persona == "wrong_scope":
        return tokens["download" if needed_scope(route_key) == "generate" else "generate"][1]
    return None


@pytest.fixture
def world(db, s3, tmp_path, monkeypatch, settings) -> Iterator[World]:
    from core import workers
    from portal import health

    # /healthz asks for a Celery worker's ping; none runs here, and its answer is the same
    # for everyone.
    monkeypatch.setitem(health.CHECKS, "worker", lambda: "stubbed")
    world = build_world(tmp_path)
    # A worker serving 7B, as far as the portal can tell (its presence key, made to outlive
    # the test however slow the machine), so /v1/completions answers instead of a 503. No
    # job reaches it: the test's transaction never commits.
    settings.WORKER_PRESENCE_SECONDS = 3600
    node, queues = f"authz-matrix-{uuid.uuid4().hex[:8]}", [world.variant.queue_name]
    workers.announce(node=node, queues=queues)
    yield world
    workers.withdraw(node=node, queues=queues)


def test_every_route_answers_each_persona_as_the_table_says(world):
    problems: list[str] = []
    count = 0
    table = [
        (route, found, url_for(route, world.values))
        for route in routes()
        if (found := row_for(route.key)) is not None  # else test_every_routed_url_has_a_row
    ]
    for persona in PERSONAS:
        visitor = Visitor(user=world.users.get(persona), values=world.values)
        for route, found, url in table:
            token = persona_token(persona, world, route.key)
            for method, outcomes in found[1].items():
                response = visitor.request(method, route.key, url, token=token)
                count += 1
                got = classify(response)
                where = f"{method} {url} [{route.key}] as {persona}"
                if response.status_code >= 500:
                    problems.append(f"{where}: {response.status_code}")
                elif got != outcomes[persona]:
                    problems.append(f"{where}: expected {outcomes[persona]}, got {got}")
                api = url.startswith(("/api/", "/v1/"))
                exempt = got == "ok" and route.key in NOT_JSON_WHEN_OK
                if api and not exempt and not is_json(response):
                    problems.append(f"{where}: not JSON ({response.get('Content-Type')})")
                finish(response)
    assert not problems, f"{len(problems)} of {count} answers:\n" + "\n".join(problems)


# --- someone else's objects ------------------------------------------------------------

# Every URL that names an object a person owns, the method it serves, and whether a token
# reaches it (a page takes a session only). The console's ids (applications, grants) are
# every reviewer's to see, and 404 to everyone else (the matrix).
OWNED_OBJECT_ROUTES = {
    "access:token_revoke": ("POST", False),
    "download": ("GET", True),
    "inference-api:job-detail": ("GET", True),
    "inference-api:job-cancel": ("POST", True),
    "inference-api:job-stream": ("GET", True),
    "evaluations:task-file": ("GET", False),
    "evaluations:detail": ("GET", False),
    "evaluations:status": ("GET", False),
    "evaluations:items-csv": ("GET", False),
    "evaluations:items-json": ("GET", False),
    "evaluations:cancel": ("POST", False),
    "evaluations:resume": ("POST", False),
    "evaluations-api:task-detail": ("GET", True),
    "evaluations-api:detail": ("GET", True),
    "evaluations-api:cancel": ("POST", True),
    "evaluations-api:resume": ("POST", True),
    "evaluations-api:items": ("GET", True),
    "evaluations-api:items-csv": ("GET", True),
}
OBJECT_PARAMETERS = {
    "token_id", "link_id", "job_id", "application_id", "grant_id", "object_id", "task_id",
    "evaluation_id",
}  # fmt: skip


def test_every_url_naming_an_owned_object_is_checked_for_outsiders():
    named = {
        route.key
        for route in routes()
        if OBJECT_PARAMETERS & set(route.converters)
        and not route.key.startswith(("review:", "admin:", "admin/"))
    }
    assert named == set(OWNED_OBJECT_ROUTES)


def test_a_second_user_gets_404_for_the_first_users_objects(world):
    """Two approved researchers: each object of the first, asked for by the second (session
    and token), is a 404, and stays as it was; the first still reaches it."""
    from accounts.models import AccessToken
    from inference.models import GenerationJob
    from weights.models import DownloadLink

    first = world.owner
    second = approved_owner("second@uni.example.edu")
    values = {**world.values, **first.values()}
    before = (
        AccessToken.objects.get(pk=first.tokens["owned"][0].pk).revoked_at,
        GenerationJob.objects.get(pk=first.job.pk).state,
        DownloadLink.objects.get(pk=first.link.pk).use_count,
    )
    by_route = {route.key: route for route in routes()}
    problems = []
    for key, (method, takes_token) in OWNED_OBJECT_ROUTES.items():
        url = url_for(by_route[key], values)
        askers = [("first by session", Visitor(user=first.user, values=values), None, False)]
        askers.append(("second by session", Visitor(user=second.user, values=values), None, True))
        if takes_token:
            askers.append(
                ("second by token", Visitor(values=values), second.tokens["both"][1], True)
            )
        for who, visitor, token, outsider in askers:
            # An outsider's request is kept, so the object is seen to stay as it was.
            response = visitor.request(method, key, url, token=token, keep=outsider)
            got = response.status_code
            finish(response)
            if outsider and got != 404:
                problems.append(f"{method} {url} as {who}: {got}, not 404")
            if (not outsider and got in (403, 404)) or got >= 500:
                problems.append(f"{method} {url} as {who}: {got}")
    assert not problems, "\n".join(problems)
    after = (
        AccessToken.objects.get(pk=first.tokens["owned"][0].pk).revoked_at,
        GenerationJob.objects.get(pk=first.job.pk).state,
        DownloadLink.objects.get(pk=first.link.pk).use_count,
    )
    assert after == before
