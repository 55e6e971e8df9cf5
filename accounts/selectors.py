"""Reads more than one caller needs. `access_check` is THE access decision of the portal:
the download links, the API, job submission and the worker at job start all call it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import Q, QuerySet
from django.utils import timezone

from accounts.audit import chain_check_database
from accounts.models import (
    OPEN_STATES,
    AccessToken,
    Application,
    ApplicationEvent,
    ApplicationState,
    AuditEntry,
    Grant,
    GrantStatus,
    LicenseAcceptance,
    SizeDecision,
    SizeOutcome,
    User,
)
from catalog.models import (
    DEFAULT_LICENSE_SLUG,
    AccessPolicy,
    License,
    LicenseVersion,
    ModelVariant,
)
from catalog.selectors import variant_get_published
from core import rows
from core.errors import NotFound, PermissionDenied

REVIEWER_GROUP = "reviewers"
PURPOSES = ("download", "generate")


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    code: str  # "ok" | "anonymous" | "inactive" | "unverified" | "no_grant" | "grant_expired"
    # | "grant_revoked" | "license_pending" | "not_published"
    message: str  # for a person: why, and what to do about it
    grant: Grant | None = None


# --- Users -----------------------------------------------------------------------------


def user_is_verified(user) -> bool:
    from allauth.account.models import EmailAddress

    return EmailAddress.objects.filter(user=user, email__iexact=user.email, verified=True).exists()


def user_is_reviewer(user) -> bool:
    """THE answer to "is this user a reviewer?": an active superuser, or active staff in the
    "reviewers" group. The console's access check, its nav link and every reviewer-facing
    service ask here and nowhere else.

    The group lookup is memoised on the user object, as Django's ModelBackend memoises
    permissions: `request.user` is loaded once per request, so a page asks the database at
    most once however many places check. A user object kept across a change of membership
    (a shell, a test) must be fetched again to see it; the flags (`is_active`, `is_staff`,
    `is_superuser`) are read fresh on every call.
    """
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    if not user.is_staff:
        return False
    try:
        return user._reviewer_group_member
    except AttributeError:
        member = user.groups.filter(name=REVIEWER_GROUP).exists()
        user._reviewer_group_member = member
        return member


def user_list_reviewers() -> QuerySet:
    """Everyone `user_is_reviewer` says yes to, by email (the same rule, as a query)."""
    return (
        User.objects.filter(is_active=True)
        .filter(Q(is_superuser=True) | Q(is_staff=True, groups__name=REVIEWER_GROUP))
        .distinct()
        .order_by("email")
    )


# --- Licenses --------------------------------------------------------------------------


def license_for_variant(variant: ModelVariant) -> License | None:
    """The license that governs a size: the catalog's, else the portal's default license."""
    if variant.license_id:
        return variant.license
    return License.objects.filter(slug=DEFAULT_LICENSE_SLUG).first()


def license_current_version(
    license: License, *, at: datetime | None = None
) -> LicenseVersion | None:
    at = at or timezone.now()
    return license.versions.filter(effective_at__lte=at).order_by("-version").first()


def license_is_accepted(*, user, version: LicenseVersion) -> bool:
    return LicenseAcceptance.objects.filter(user=user, version=version).exists()


def _current_versions_for(
    variants: list[ModelVariant], *, at: datetime
) -> dict[int, LicenseVersion]:
    """variant id -> the current version of its governing license (absent: none applies).

    A constant number of queries however many variants: list pages and the status page
    call this instead of `license_for_variant` in a loop.
    """
    if not variants:
        return {}
    default = None
    license_of: dict[int, int] = {}
    for variant in variants:
        license_id = variant.license_id
        if license_id is None:
            if default is None:
                default = License.objects.filter(slug=DEFAULT_LICENSE_SLUG).first() or False
            if default:
                license_of[variant.pk] = default.pk
        else:
            license_of[variant.pk] = license_id
    current: dict[int, LicenseVersion] = {}
    versions = (
        LicenseVersion.objects.filter(license_id__in=set(license_of.values()), effective_at__lte=at)
        .select_related("license")
        .order_by("license_id", "-version")
    )
    for version in versions:
        current.setdefault(version.license_id, version)
    return {
        variant_id: current[license_id]
        for variant_id, license_id in license_of.items()
        if license_id in current
    }


def _live_grants(user, now: datetime) -> QuerySet[Grant]:
    return Grant.objects.filter(
        user=user, status=GrantStatus.ACTIVE, starts_at__lte=now, ends_at__gt=now
    ).select_related("variant")


def license_versions_pending(*, user) -> list[LicenseVersion]:
    """Current versions of the licenses governing the user's live grants, not yet accepted."""
    now = timezone.now()
    variants = [grant.variant for grant in _live_grants(user, now)]
    current = _current_versions_for(variants, at=now)
    if not current:
        return []
    accepted = set(
        LicenseAcceptance.objects.filter(
            user=user, version_id__in={v.pk for v in current.values()}
        ).values_list("version_id", flat=True)
    )
    pending = {v.pk: v for v in current.values() if v.pk not in accepted}
    return sorted(pending.values(), key=lambda v: v.pk)


def variants_governed_by(license: License) -> QuerySet[ModelVariant]:
    condition = Q(license=license)
    if license.slug == DEFAULT_LICENSE_SLUG:
        condition |= Q(license__isnull=True)
    return ModelVariant.objects.filter(condition)


# --- The access decision -------------------------------------------------------------


def _account_decision(user) -> AccessDecision | None:
    if user is None or not user.is_authenticated:
        return AccessDecision(
            False, "anonymous", "Sign in with an approved account, or send a personal access token."
        )
    if not user.is_active:
        return AccessDecision(
            False, "inactive", "This account is deactivated. Contact the portal's reviewers."
        )
    if not user_is_verified(user):
        return AccessDecision(
            False,
            "unverified",
            "Verify your email address first: follow the link in the email we sent you, "
            "or ask for a new one on your account page.",
        )
    return None


def _grant_decision(user, variant: ModelVariant, now: datetime) -> AccessDecision:
    grants = list(Grant.objects.filter(user=user, variant=variant).order_by("-ends_at", "-id"))
    for grant in grants:
        if grant.is_live(now):
            return AccessDecision(True, "ok", "Access granted.", grant)
    if not grants:
        return AccessDecision(
            False,
            "no_grant",
            f"You have no access to {variant}. Apply for it on the access page (/access/).",
        )
    latest = max(grants, key=lambda g: g.revoked_at or g.ends_at)
    if latest.status == GrantStatus.REVOKED:
        return AccessDecision(
            False,
            "grant_revoked",
            f"Your access to {variant} was revoked: "
            f"{(latest.revoke_reason or 'no reason given').rstrip('.')}. "
            "You may apply again from the access page (/access/).",
            latest,
        )
    if latest.starts_at > now:
        return AccessDecision(
            False,
            "no_grant",
            f"Your access to {variant} starts on {latest.starts_at:%Y-%m-%d %H:%M} UTC.",
            latest,
        )
    return AccessDecision(
        False,
        "grant_expired",
        f"Your access to {variant} expired on {latest.ends_at:%Y-%m-%d}. "
        "Apply again from the access page (/access/) to renew it.",
        latest,
    )


def _allowed_grant(user, variant: ModelVariant, now: datetime) -> Grant | None:
    """The live grant that `_grant_decision` would pick, found only when every other rule
    the database holds allows too (see `_size_and_allowed_grant`); None says "not allowed
    this way", never why."""
    found = _size_and_allowed_grant(user, "m.id = %s", [variant.pk], now)
    return found[1] if found else None


def _size_and_allowed_grant(
    user, where: str, params: list, now: datetime
) -> tuple[ModelVariant, Grant | None] | None:
    """The size matching `where` (SQL over alias `m`) and, in the same query, the grant that
    `allowed_grant_sql` finds for it. None when no size matches; a None grant says "not
    allowed this way", never why: `access_check` then takes the rules one by one for the
    reason. Allowed requests, nearly all of them, cost one query instead of four or five."""
    grant_sql, grant_params = allowed_grant_sql(user=user, now=now)
    sql = f"""
        SELECT {rows.columns(ModelVariant, "m")}, {rows.columns(Grant, "g")}
        FROM {ModelVariant._meta.db_table} m
        LEFT JOIN {Grant._meta.db_table} g ON g.id = {grant_sql}
        WHERE {where}
    """  # noqa: S608 - table names from the models; every value is a parameter
    found = rows.fetch(sql, [*grant_params, *params])
    if not found:
        return None
    width = len(ModelVariant._meta.concrete_fields)
    return rows.build(ModelVariant, found[0]), rows.build(Grant, found[0], width)


def allowed_grant_sql(*, user, now: datetime) -> tuple[str, list]:
    """The access rules the database holds, as ONE correlated subquery over a size row
    aliased `m`, and its parameters: the id of the live grant that `_grant_decision` would
    pick (latest end first), found only when the account's address is verified and the
    current version of the size's governing license (its own, else the default license) is
    accepted, or none is in effect; NULL otherwise. The single place these rules are
    written as SQL: `access_check` and `access_require_published` read it joined to the
    size, the links path joined to the size and its files.

    Written as SQL: the same query through the ORM (Exists, OuterRef, a sliced subquery)
    took longer to compile in Python than the four simple queries took to run. Its inner
    aliases (g2, e, v, cur, a) differ from the size's `m`, which it reads.
    `test_access_check.py` holds it to the step-by-step rules over generated states."""
    from allauth.account.models import EmailAddress

    at = connection.ops.adapt_datetimefield_value(now)
    sql = f"""(
          SELECT g2.id FROM {Grant._meta.db_table} g2
          WHERE g2.user_id = %s AND g2.variant_id = m.id AND g2.status = %s
            AND g2.starts_at <= %s AND g2.ends_at > %s
            AND EXISTS (
              SELECT 1 FROM {EmailAddress._meta.db_table} e
              WHERE e.user_id = %s AND UPPER(e.email) = UPPER(%s) AND e.verified = %s
            )
            AND NOT EXISTS (
              SELECT 1 FROM (
                SELECT v.id FROM {LicenseVersion._meta.db_table} v
                WHERE v.license_id = COALESCE(
                    m.license_id, (SELECT id FROM {License._meta.db_table} WHERE slug = %s)
                  )
                  AND v.effective_at <= %s
                ORDER BY v.version DESC LIMIT 1
              ) cur
              WHERE NOT EXISTS (
                SELECT 1 FROM {LicenseAcceptance._meta.db_table} a
                WHERE a.user_id = %s AND a.version_id = cur.id
              )
            )
          ORDER BY g2.ends_at DESC, g2.id DESC
          LIMIT 1
        )"""  # noqa: S608 - table names from the models; every value is a parameter
    params = [
        user.pk, GrantStatus.ACTIVE.value, at, at,
        user.pk, user.email, True,
        DEFAULT_LICENSE_SLUG, at,
        user.pk,
    ]  # fmt: skip
    return sql, params


def access_check(*, user, variant: ModelVariant, purpose: str) -> AccessDecision:
    """May this user download or run this size right now, and if not, why."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}; expected one of {PURPOSES}")
    now = timezone.now()
    if user is not None and user.is_authenticated and user.is_active and variant.is_published:
        grant = _allowed_grant(user, variant, now)
        if grant is not None:
            return AccessDecision(True, "ok", "Access granted.", grant)
    # Denied (or the one query found nothing): the same rules step by step, for the reason.
    return _access_by_steps(user, variant, now)


def _access_by_steps(user, variant: ModelVariant, now: datetime) -> AccessDecision:
    """The access rules one at a time, so a refusal says which one failed."""
    decision = _account_decision(user)
    if decision is not None:
        return decision
    if not variant.is_published:
        return AccessDecision(False, "not_published", f"{variant} is not published.")
    decision = _grant_decision(user, variant, now)
    if not decision.allowed:
        return decision
    license = license_for_variant(variant)
    version = license_current_version(license, at=now) if license else None
    if version is not None and not license_is_accepted(user=user, version=version):
        return AccessDecision(
            False,
            "license_pending",
            f"Version {version.version} of the {license.title} took effect on "
            f"{version.effective_at:%Y-%m-%d}. Read and accept it on the license page "
            "(/access/license/) to continue.",
            decision.grant,
        )
    return decision


def access_require(*, user, variant: ModelVariant, purpose: str) -> Grant:
    return _granted(access_check(user=user, variant=variant, purpose=purpose))


def _granted(decision: AccessDecision) -> Grant:
    """The decision's grant, or PermissionDenied with its reason."""
    if not decision.allowed:
        raise PermissionDenied(decision.message, code=decision.code)
    assert decision.grant is not None
    return decision.grant


def access_require_published(*, user, slug: str, purpose: str) -> tuple[ModelVariant, Grant]:
    """The published size `slug` and the user's grant for it, as `variant_get_published` and
    `access_require` give them (404, then the refusal's reason), in one query when allowed:
    every download-links request starts here."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}; expected one of {PURPOSES}")
    now, found = timezone.now(), None
    if user is not None and user.is_authenticated and user.is_active:
        found = _size_and_allowed_grant(
            user, "m.slug = %s AND m.is_published = %s", [slug.lower(), True], now
        )
    if found is None:  # anonymous, inactive, unknown, unpublished (or published just now)
        variant = variant_get_published(slug=slug)  # its 404
        return variant, access_require(user=user, variant=variant, purpose=purpose)
    variant, grant = found
    return variant, grant if grant is not None else _granted(_access_by_steps(user, variant, now))


def variants_accessible(*, user, purpose: str) -> list[ModelVariant]:
    """The published sizes this user may use right now (same rules as `access_check`)."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}; expected one of {PURPOSES}")
    if _account_decision(user) is not None:
        return []
    now = timezone.now()
    variants = [g.variant for g in _live_grants(user, now) if g.variant.is_published]
    current = _current_versions_for(variants, at=now)
    accepted = set(
        LicenseAcceptance.objects.filter(
            user=user, version_id__in={v.pk for v in current.values()}
        ).values_list("version_id", flat=True)
    )
    result = [v for v in variants if v.pk not in current or current[v.pk].pk in accepted]
    result.sort(key=lambda v: (v.position, v.slug))
    return result


# --- Applications --------------------------------------------------------------------


def application_latest_for_user(*, user) -> Application | None:
    return Application.objects.filter(user=user).order_by("-created_at", "-id").first()


def application_get_for_user(*, user, application_id: int) -> Application:
    application = Application.objects.filter(pk=application_id, user=user).first()
    if application is None:
        raise NotFound("There is no such application on your account.")
    return application


def application_public_events(*, application: Application) -> QuerySet[ApplicationEvent]:
    return application.events.select_related("variant").order_by("created_at", "id")


def application_queue_position(*, application: Application) -> int | None:
    """1 for the oldest submitted application; None when it is not waiting for review."""
    if application.state != ApplicationState.SUBMITTED or application.submitted_at is None:
        return None
    ahead = Application.objects.filter(state=ApplicationState.SUBMITTED).filter(
        Q(submitted_at__lt=application.submitted_at)
        | Q(submitted_at=application.submitted_at, pk__lt=application.pk)
    )
    return ahead.count() + 1


def decision_median_time(*, days: int = 90) -> timedelta | None:
    """Median time from first submission to decision over the applications decided lately."""
    since = timezone.now() - timedelta(days=days)
    rows = Application.objects.filter(
        state__in=[ApplicationState.APPROVED, ApplicationState.REJECTED],
        decided_at__gte=since,
        submitted_at__isnull=False,
    ).values_list("submitted_at", "decided_at")
    durations = [(decided - submitted).total_seconds() for submitted, decided in rows]
    if not durations:
        return None
    return timedelta(seconds=statistics.median(durations))


def grants_for_user(*, user) -> QuerySet[Grant]:
    return (
        Grant.objects.filter(user=user)
        .select_related("variant")
        .order_by("variant__position", "-starts_at", "-id")
    )


# --- What justifies a grant -----------------------------------------------------------


def grant_problems(grant: Grant) -> list[str]:
    """Why an active grant is not justified; empty when it is. The one statement of the rule.

    A grant in force must come from an approved decision on its application, for a size
    that application still requests, while the application is neither withdrawn nor a
    draft; given by the size's policy (manual: a person; two reviewers: two different
    people; automatic: nobody, and then only for someone with no rejected size and no
    access revoked by a reviewer before); by people other than the applicant; both
    approvals on the same submitted text (a first approval before a resubmission does not
    count); to an active account. Whether the license in force was accepted before each
    use is checked where uses are recorded (`manage.py verify_access`).
    """
    if grant.status != GrantStatus.ACTIVE:
        return []
    problems: list[str] = []
    application = grant.application
    if application is None:
        return ["no application approved it"]
    applicant_id = application.user_id
    if grant.user_id != applicant_id:
        problems.append("it belongs to someone other than the applicant")
    if not grant.user.is_active:
        problems.append("the account is deactivated")
    if application.state not in (
        ApplicationState.SUBMITTED,
        ApplicationState.RETURNED,
        ApplicationState.APPROVED,
    ):
        problems.append(f"its application is {application.state}")
    if not application.requested_variants.filter(pk=grant.variant_id).exists():
        problems.append(f"its application does not request {grant.variant}")
    decision = application.decisions.filter(variant_id=grant.variant_id).first()
    if decision is None or decision.outcome != SizeOutcome.APPROVED:
        problems.append(f"no approved decision on {grant.variant} in its application")
        return problems
    deciders = [decision.decided_by_id, decision.first_approved_by_id]
    if applicant_id in deciders:
        problems.append("the applicant decided it")
    policy = grant.variant.access_policy
    if policy == AccessPolicy.MANUAL and decision.decided_by_id is None:
        problems.append("the size needs a reviewer's approval and has none")
    if policy == AccessPolicy.TWO_REVIEWERS and (
        None in deciders or decision.decided_by_id == decision.first_approved_by_id
    ):
        problems.append("the size needs two different reviewers' approvals")
    if policy == AccessPolicy.AUTOMATIC and decision.decided_by_id is None:
        refused_before = SizeDecision.objects.filter(
            application__user_id=applicant_id,
            outcome=SizeOutcome.REJECTED,
            decided_at__lt=decision.decided_at,
        ).exists() or (
            Grant.objects.filter(
                user_id=applicant_id,
                status=GrantStatus.REVOKED,
                revoked_at__lt=decision.decided_at,
            )
            .exclude(revoked_by_id=applicant_id)
            .exists()
        )
        if refused_before:
            problems.append("it was approved automatically after a rejection or revocation")
    # Both approvals must be given to one submitted text: the submission in force when the
    # size was decided (a later return and resubmission does not undo a decided size).
    submission = (
        application.events.filter(
            to_state=ApplicationState.SUBMITTED, created_at__lte=decision.decided_at
        )
        .exclude(from_state=ApplicationState.SUBMITTED)  # per-size events keep the state
        .order_by("-created_at", "-id")
        .values_list("created_at", flat=True)
        .first()
    )
    if submission is None:
        problems.append("it was decided before the application was submitted")
    elif decision.first_approved_at is not None and decision.first_approved_at < submission:
        problems.append("its first approval was given to an earlier text of the application")
    return problems


def grants_unjustified() -> list[tuple[Grant, list[str]]]:
    """Every active grant that `grant_problems` finds fault with (`manage.py verify_access`)."""
    found = []
    active = Grant.objects.filter(status=GrantStatus.ACTIVE).select_related(
        "user", "variant", "application"
    )
    for grant in active.iterator(chunk_size=500):
        problems = grant_problems(grant)
        if problems:
            found.append((grant, problems))
    return found


# --- Audit ---------------------------------------------------------------------------


def audit_first_broken() -> tuple[AuditEntry, str] | None:
    """The first entry whose hash, link, sequence or actor does not verify, with why; None
    if the chain holds. (`verify_audit` also compares the chain with its anchor.)"""
    report = chain_check_database()
    return None if report.broken is None else (report.broken, report.why)


# --- The applicant's status page -----------------------------------------------------


@dataclass(frozen=True)
class ApplicantStatus:
    application: Application | None
    timeline: list[ApplicationEvent]
    decisions: list
    queue_position: int | None
    median_time_to_decision: timedelta | None
    grants: list[Grant]
    blockers: list[str]
    pending_licenses: list[LicenseVersion]
    can_apply_again: bool

    @property
    def median_text(self) -> str:
        median = self.median_time_to_decision
        if median is None:
            return ""
        hours = median.total_seconds() / 3600
        if hours < 1:
            return "under an hour"
        if hours < 48:
            return f"about {round(hours)} hour{'s' if round(hours) != 1 else ''}"
        return f"about {round(hours / 24)} days"


def applicant_status(*, user) -> ApplicantStatus:
    """What the applicant's status page shows, with every reason that blocks use right now."""
    application = application_latest_for_user(user=user)
    timeline: list[ApplicationEvent] = []
    decisions: list = []
    if application is not None:
        timeline = [
            e
            for e in application_public_events(application=application)
            if e.public_message or e.from_state != e.to_state
        ]
        decisions = list(application.decisions.select_related("variant"))
    grants = list(grants_for_user(user=user))
    pending = license_versions_pending(user=user)
    blockers: list[str] = []
    account = _account_decision(user)
    if account is not None:
        blockers.append(account.message)
    if application is not None and application.state == ApplicationState.RETURNED:
        last = application.events.filter(to_state=ApplicationState.RETURNED).last()
        blockers.append(
            "Your application was returned for changes"
            + (f": {last.public_message}" if last and last.public_message else ".")
            + " Edit and resubmit it."
        )
    for version in pending:
        blockers.append(
            f"Version {version.version} of the {version.license.title} needs your acceptance "
            "before any download or generation job."
        )
    now = timezone.now()
    live_variants = {g.variant_id for g in grants if g.is_live(now)}
    for grant in grants:  # newest first per size: say the latest reason once per size
        if grant.variant_id in live_variants:
            continue
        if grant.status == GrantStatus.REVOKED:
            blockers.append(f"Your access to {grant.variant} was revoked: {grant.revoke_reason}")
        elif grant.ends_at <= now:
            blockers.append(f"Your access to {grant.variant} expired on {grant.ends_at:%Y-%m-%d}.")
        live_variants.add(grant.variant_id)
    return ApplicantStatus(
        application=application,
        timeline=timeline,
        decisions=decisions,
        queue_position=application_queue_position(application=application) if application else None,
        median_time_to_decision=decision_median_time(),
        grants=grants,
        blockers=blockers,
        pending_licenses=pending,
        can_apply_again=application is None or application.state not in OPEN_STATES,
    )


# --- Tokens --------------------------------------------------------------------------


def token_list_for_user(*, user):
    return AccessToken.objects.filter(user=user).order_by("revoked_at", "-created_at")


def token_get_for_user(*, user, token_id: int):
    token = AccessToken.objects.filter(pk=token_id, user=user).first()
    if token is None:
        raise NotFound("There is no such token on your account.")
    return token
