"""Automatic flags: what a reviewer should look at twice, and what keeps a size with the
automatic policy from being approved without a person. Submission calls `flags_compute`
directly (`accounts.services.applications`); the review console stores the results it is
sent with `application_submitted` as `review.models.Flag` rows.

Each check is a small function over the application and a bounded number of queries:
the duplicate check compares with at most `REVIEW_DUPLICATE_CANDIDATES` recent applications
of other accounts, whatever the size of the table.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from django.conf import settings
from django.db import models
from django.utils import timezone

from accounts.models import (
    Application,
    Grant,
    GrantStatus,
    LicenseAcceptance,
    SizeDecision,
    SizeOutcome,
)
from accounts.validators import orcid_error


class FlagCode(models.TextChoices):
    WEBMAIL = "webmail", "Free webmail address"
    DOMAIN_MISMATCH = "domain_mismatch", "Email domain does not match the affiliation"
    DUPLICATE_USE_CASE = "duplicate_use_case", "Use case nearly identical to another account's"
    SHARED_IP = "shared_ip", "Several accounts from one IP address"
    RESTRICTED_COUNTRY = "restricted_country", "Country on the restricted list"
    INVALID_ORCID = "invalid_orcid", "Invalid ORCID iD"
    RECENT_REJECTION = "recent_rejection", "Rejected recently"
    PRIOR_REFUSAL = "prior_refusal", "Access revoked, or a size rejected, before"
    FLAGS_UNAVAILABLE = "flags_unavailable", "The automatic checks could not run"


# The free webmail providers applicants use most; REVIEW_WEBMAIL_DOMAINS adds more.
WEBMAIL_DOMAINS = frozenset(
    {
        "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de",
        "yahoo.co.jp", "ymail.com", "hotmail.com", "hotmail.co.uk", "hotmail.fr", "outlook.com",
        "live.com", "msn.com", "aol.com", "icloud.com", "me.com", "mac.com", "proton.me",
        "protonmail.com", "pm.me", "gmx.com", "gmx.de", "gmx.net", "web.de", "mail.com",
        "mail.ru", "yandex.ru", "yandex.com", "qq.com", "163.com", "126.com", "sina.com",
        "foxmail.com", "naver.com", "zoho.com", "tutanota.com", "fastmail.com", "hey.com",
        "rediffmail.com", "libero.it", "orange.fr", "free.fr", "t-online.de",
    }
)  # fmt: skip

# Second-level labels under which a country's registries hand out names (ox.ac.uk, uni.edu.au).
_SECOND_LEVEL = frozenset({"ac", "co", "com", "edu", "gov", "go", "gob", "net", "org", "or", "re"})
_STOPWORDS = frozenset({"of", "the", "and", "for", "de", "la", "le", "der", "und", "at", "in"})
_WORD_RE = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class FlagResult:
    code: str
    detail: str
    related_application_id: int | None = None


# --- Pure helpers -------------------------------------------------------------------------


def email_domain(email: str) -> str:
    return (email or "").rsplit("@", 1)[-1].strip().lower().rstrip(".")


def registrable_domain(host: str) -> str:
    """'cs.ox.ac.uk' -> 'ox.ac.uk', 'mail.stanford.edu' -> 'stanford.edu' (a heuristic that
    covers the academic cases without a public-suffix list)."""
    labels = [label for label in (host or "").lower().strip(".").split(".") if label]
    if len(labels) <= 2:
        return ".".join(labels)
    if len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def _words(text: str) -> list[str]:
    folded = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode()
    return _WORD_RE.findall(folded.lower())


def domain_matches_affiliation(domain: str, affiliation: str) -> bool:
    """Does the domain's name ('mit' of mit.edu, 'ox' of ox.ac.uk) appear in the affiliation,
    as a word, the start of a word, or its initials ('Massachusetts Institute of Technology')?"""
    name = registrable_domain(domain).split(".")[0]
    words = _words(affiliation)
    if not name or not words:
        return False
    if len(name) >= 3 and name in "".join(words):
        return True
    if any(w.startswith(name) or (len(w) >= 4 and name.startswith(w)) for w in words):
        return True
    significant = [w for w in words if w not in _STOPWORDS]
    initials = {"".join(w[0] for w in words), "".join(w[0] for w in significant)}
    return name in initials


def normalize_text(text: str) -> str:
    return " ".join(_words(text))


def shingles(text: str, size: int = 3) -> frozenset[str]:
    words = normalize_text(text).split()
    if len(words) < size:
        return frozenset([" ".join(words)]) if words else frozenset()
    return frozenset(" ".join(words[i : i + size]) for i in range(len(words) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


# --- The checks ---------------------------------------------------------------------------


def _webmail_domains() -> frozenset[str]:
    return WEBMAIL_DOMAINS | frozenset(getattr(settings, "REVIEW_WEBMAIL_DOMAINS", []))


def check_webmail(application: Application) -> FlagResult | None:
    domain = email_domain(application.email or application.user.email)
    if domain in _webmail_domains():
        return FlagResult(FlagCode.WEBMAIL, f"{domain} is a free webmail provider.")
    return None


def check_domain_mismatch(application: Application) -> FlagResult | None:
    domain = email_domain(application.email or application.user.email)
    if not domain or domain in _webmail_domains():
        return None  # the webmail flag says it already
    mine = registrable_domain(domain)
    host = urlsplit(application.web_page or "").hostname or ""
    if host:
        if registrable_domain(host) == mine:
            return None
        return FlagResult(
            FlagCode.DOMAIN_MISMATCH,
            f"Email domain {domain} differs from the institutional web page's {host}.",
        )
    if application.affiliation and not domain_matches_affiliation(domain, application.affiliation):
        return FlagResult(
            FlagCode.DOMAIN_MISMATCH,
            f"Email domain {domain} does not look like “{application.affiliation}”.",
        )
    return None


def check_duplicate_use_case(application: Application) -> FlagResult | None:
    mine = shingles(application.use_case)
    if len(mine) < 5:
        return None
    threshold = float(getattr(settings, "REVIEW_DUPLICATE_THRESHOLD", 0.5))
    limit = int(getattr(settings, "REVIEW_DUPLICATE_CANDIDATES", 500))
    candidates = (
        Application.objects.filter(submitted_at__isnull=False)
        .exclude(user_id=application.user_id)
        .exclude(use_case="")
        .order_by("-submitted_at")
        .values_list("pk", "use_case")[:limit]
    )
    best: tuple[float, int] | None = None
    for pk, text in candidates:
        score = jaccard(mine, shingles(text))
        if score >= threshold and (best is None or score > best[0]):
            best = (score, pk)
    if best is None:
        return None
    return FlagResult(
        FlagCode.DUPLICATE_USE_CASE,
        f"The use case is {best[0]:.0%} similar to application #{best[1]} of another account.",
        best[1],
    )


def check_shared_ip(application: Application) -> FlagResult | None:
    ip = application.submitted_ip
    if not ip:
        return None
    since = timezone.now() - timedelta(days=365)
    by_application = dict(
        Application.objects.filter(submitted_ip=ip, last_submitted_at__gte=since)
        .exclude(user_id=application.user_id)
        .order_by("user_id", "-pk")
        .values_list("user_id", "pk")
    )
    users = set(by_application) | set(
        LicenseAcceptance.objects.filter(ip=ip, accepted_at__gte=since)
        .exclude(user_id=application.user_id)
        .values_list("user_id", flat=True)
        .distinct()
    )
    minimum = int(getattr(settings, "REVIEW_SHARED_IP_ACCOUNTS", 2))
    if len(users) + 1 < minimum:
        return None
    related = max(by_application.values()) if by_application else None
    return FlagResult(
        FlagCode.SHARED_IP,
        f"{len(users) + 1} accounts used {ip} in the last year.",
        related,
    )


def check_restricted_country(application: Application) -> FlagResult | None:
    code = str(application.country or "").upper()
    restricted = {c.upper() for c in getattr(settings, "REVIEW_RESTRICTED_COUNTRIES", [])}
    if code and code in restricted:
        return FlagResult(
            FlagCode.RESTRICTED_COUNTRY, f"{application.country.name} is on the restricted list."
        )
    return None


def check_orcid(application: Application) -> FlagResult | None:
    if application.orcid and orcid_error(application.orcid):
        return FlagResult(
            FlagCode.INVALID_ORCID, f"{application.orcid} is not a valid ORCID iD (checksum)."
        )
    return None


def check_recent_rejection(application: Application) -> FlagResult | None:
    days = int(getattr(settings, "REVIEW_RECENT_REJECTION_DAYS", 180))
    since = timezone.now() - timedelta(days=days)
    rejected = (
        SizeDecision.objects.filter(
            application__user_id=application.user_id,
            outcome=SizeOutcome.REJECTED,
            decided_at__gte=since,
        )
        .exclude(application_id=application.pk)
        .select_related("variant")
        .order_by("-decided_at")
        .first()
    )
    if rejected is None:
        return None
    return FlagResult(
        FlagCode.RECENT_REJECTION,
        f"{rejected.variant} was rejected on {rejected.decided_at:%Y-%m-%d} "
        f"(application #{rejected.application_id}).",
        rejected.application_id,
    )


def check_prior_refusal(application: Application) -> FlagResult | None:
    """A revoked grant at any time, or a rejection older than the recent window: a person
    decides again, whatever the size's policy."""
    revoked = (
        Grant.objects.filter(user_id=application.user_id, status=GrantStatus.REVOKED)
        .exclude(revoked_by_id=application.user_id)  # given up by withdrawing: not a refusal
        .select_related("variant")
        .order_by("-revoked_at")
        .first()
    )
    if revoked is not None:
        return FlagResult(
            FlagCode.PRIOR_REFUSAL,
            f"Access to {revoked.variant} was revoked on {revoked.revoked_at:%Y-%m-%d}: "
            f"{revoked.revoke_reason}",
            revoked.application_id,
        )
    days = int(getattr(settings, "REVIEW_RECENT_REJECTION_DAYS", 180))
    rejected = (
        SizeDecision.objects.filter(
            application__user_id=application.user_id,
            outcome=SizeOutcome.REJECTED,
            decided_at__lt=timezone.now() - timedelta(days=days),
        )
        .exclude(application_id=application.pk)
        .select_related("variant")
        .order_by("-decided_at")
        .first()
    )
    if rejected is not None:
        return FlagResult(
            FlagCode.PRIOR_REFUSAL,
            f"{rejected.variant} was rejected on {rejected.decided_at:%Y-%m-%d} "
            f"(application #{rejected.application_id}).",
            rejected.application_id,
        )
    return None


CHECKS = (
    check_webmail,
    check_domain_mismatch,
    check_duplicate_use_case,
    check_shared_ip,
    check_restricted_country,
    check_orcid,
    check_recent_rejection,
    check_prior_refusal,
)


def flags_compute(application: Application) -> list[FlagResult]:
    """Every flag this application raises now."""
    return [result for check in CHECKS if (result := check(application)) is not None]
