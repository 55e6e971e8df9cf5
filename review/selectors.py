"""Reads of the review console: the queue, one application's file, the CSV export.

The queue and the detail page issue a fixed number of queries whatever the page size and
however many events, flags or decisions each application has: rows are fetched with
`select_related` and the per-row lists with one `prefetch_related` query each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef, Prefetch, Q, QuerySet, Subquery
from django.utils import timezone

from accounts.models import (
    Application,
    ApplicationEvent,
    ApplicationState,
    Grant,
    LicenseAcceptance,
    SizeDecision,
    SizeOutcome,
)
from catalog.models import LicenseVersion
from review.access import application_get_for_review
from review.models import Claim, Flag, InternalNote, ReasonTemplate

QUEUE_STATES = (ApplicationState.SUBMITTED, ApplicationState.RETURNED)
AWAITING_SECOND = "awaiting_second"
SEARCH_MAX_WORDS = 6


def sla_days() -> int:
    return int(getattr(settings, "REVIEW_SLA_DAYS", 7))


def is_overdue(application: Application, now: datetime) -> bool:
    """Waiting on the reviewers (not on the applicant) for longer than the service level."""
    return (
        application.state == ApplicationState.SUBMITTED
        and application.submitted_at is not None
        and now - application.submitted_at >= timedelta(days=sla_days())
    )


# --- The queue --------------------------------------------------------------------------


def _search(qs: QuerySet[Application], text: str) -> QuerySet[Application]:
    # Every word must appear in one of the fields: "smith oxford" finds Ann Smith of Oxford.
    # icontains is ILIKE on PostgreSQL and LIKE (case-insensitive for ASCII) on SQLite.
    for word in text.split()[:SEARCH_MAX_WORDS]:
        qs = qs.filter(
            Q(full_name__icontains=word)
            | Q(email__icontains=word)
            | Q(affiliation__icontains=word)
            | Q(use_case__icontains=word)
        )
    return qs


def queue_applications(
    *,
    reviewer,
    state: str = "",
    organization_type: str = "",
    country: str = "",
    size: str = "",
    flag: str = "",
    assigned: str = "",
    age: str = "",
    q: str = "",
    order: str = "oldest",
    now: datetime | None = None,
) -> QuerySet[Application]:
    """The applications waiting in the queue (submitted or returned), filtered, oldest first."""
    now = now or timezone.now()
    # Matches the partial index review_queue_order_idx (review/migrations/0003): keep the
    # state condition exactly like this, or PostgreSQL sorts every waiting application.
    qs = Application.objects.filter(state__in=QUEUE_STATES)
    if state == AWAITING_SECOND:
        qs = qs.filter(
            state=ApplicationState.SUBMITTED,
            pk__in=SizeDecision.objects.filter(outcome=SizeOutcome.AWAITING_SECOND).values(
                "application_id"
            ),
        )
    elif state:
        qs = qs.filter(state=state)
    if organization_type:
        qs = qs.filter(organization_type=organization_type)
    if country:
        qs = qs.filter(country=country)
    if size:
        qs = qs.filter(
            Exists(SizeDecision.objects.filter(application_id=OuterRef("pk"), variant__slug=size))
        )
    if flag == "any":
        qs = qs.filter(Exists(Flag.objects.filter(application_id=OuterRef("pk"))))
    elif flag == "none":
        qs = qs.filter(~Exists(Flag.objects.filter(application_id=OuterRef("pk"))))
    elif flag:
        qs = qs.filter(Exists(Flag.objects.filter(application_id=OuterRef("pk"), code=flag)))
    if assigned == "none":
        qs = qs.filter(~Exists(Claim.objects.filter(application_id=OuterRef("pk"))))
    elif assigned == "me":
        qs = qs.filter(review_claim__reviewer=reviewer)
    elif assigned:
        qs = qs.filter(review_claim__reviewer_id=int(assigned))
    sla = timedelta(days=sla_days())
    if age == "lt1":
        qs = qs.filter(submitted_at__gt=now - timedelta(days=1))
    elif age == "1to3":
        qs = qs.filter(
            submitted_at__lte=now - timedelta(days=1), submitted_at__gt=now - timedelta(days=3)
        )
    elif age == "3tosla":
        qs = qs.filter(submitted_at__lte=now - timedelta(days=3), submitted_at__gt=now - sla)
    elif age == "overdue":
        qs = qs.filter(state=ApplicationState.SUBMITTED, submitted_at__lte=now - sla)
    if q.strip():
        qs = _search(qs, q)
    ordering = ("-submitted_at", "-pk") if order == "newest" else ("submitted_at", "pk")
    return qs.order_by(*ordering)


def queue_page(ids: list[int]) -> list[Application]:
    """One page of the queue, in the order of `ids`: three queries whatever the page size."""
    by_id = {a.pk: a for a in queue_rows(Application.objects.filter(pk__in=ids))} if ids else {}
    return [by_id[pk] for pk in ids if pk in by_id]


def queue_rows(applications: QuerySet[Application]) -> QuerySet[Application]:
    """The rows with what the queue shows of each, fetched in bulk."""
    return applications.select_related("user", "review_claim__reviewer").prefetch_related(
        Prefetch(
            "decisions",
            queryset=SizeDecision.objects.select_related("variant").order_by("variant__position"),
        ),
        Prefetch("review_flags", queryset=Flag.objects.order_by("code")),
    )


@dataclass
class QueueRow:
    application: Application
    age: timedelta
    overdue: bool
    decisions: list[SizeDecision]
    flags: list[Flag]
    claim: Claim | None


def queue_decorate(applications: list[Application], *, now: datetime) -> list[QueueRow]:
    rows = []
    for app in applications:
        try:
            claim = app.review_claim
        except Claim.DoesNotExist:
            claim = None
        rows.append(
            QueueRow(
                application=app,
                age=now - app.submitted_at,
                overdue=is_overdue(app, now),
                decisions=list(app.decisions.all()),
                flags=list(app.review_flags.all()),
                claim=claim,
            )
        )
    return rows


# --- One application ----------------------------------------------------------------------


@dataclass
class LicenseStatus:
    version: LicenseVersion
    acceptance: LicenseAcceptance | None
    earlier: LicenseAcceptance | None  # the latest acceptance of an older version


@dataclass
class ReviewFile:
    application: Application
    claim: Claim | None
    decisions: list[SizeDecision]
    events: list[ApplicationEvent]
    notes: list[InternalNote]
    flags: list[Flag]
    earlier: list[Application]
    grants: list[Grant]
    licenses: list[LicenseStatus]
    templates: dict[str, list[ReasonTemplate]] = field(default_factory=dict)


def _license_status(user, now: datetime) -> list[LicenseStatus]:
    # Two queries for every license the portal has: current versions, then the user's
    # acceptances (few rows: one per version accepted).
    versions = list(
        LicenseVersion.objects.filter(effective_at__lte=now)
        .select_related("license")
        .order_by("license_id", "-version")
    )
    current: dict[int, LicenseVersion] = {}
    for version in versions:
        current.setdefault(version.license_id, version)
    acceptances = list(
        LicenseAcceptance.objects.filter(user=user)
        .select_related("version")
        .order_by("-accepted_at")
    )
    result = []
    for license_id, version in sorted(current.items()):
        accepted = next((a for a in acceptances if a.version_id == version.pk), None)
        earlier = next(
            (a for a in acceptances if a.version.license_id == license_id and a is not accepted),
            None,
        )
        result.append(LicenseStatus(version=version, acceptance=accepted, earlier=earlier))
    return result


def application_review_file(*, application_id: int, now: datetime | None = None) -> ReviewFile:
    """Everything the detail page shows, in a fixed number of queries."""
    now = now or timezone.now()
    application = application_get_for_review(application_id)
    claim = Claim.objects.select_related("reviewer").filter(application_id=application.pk).first()
    decisions = list(
        SizeDecision.objects.filter(application=application)
        .select_related("variant", "first_approved_by", "decided_by")
        .order_by("variant__position")
    )
    events = list(
        ApplicationEvent.objects.filter(application=application)
        .select_related("actor", "variant")
        .order_by("created_at", "id")
    )
    notes = list(
        InternalNote.objects.filter(application=application)
        .select_related("author")
        .order_by("created_at", "id")
    )
    flags = list(
        Flag.objects.filter(application=application)
        .select_related("related_application__user")
        .order_by("code")
    )
    earlier = list(
        Application.objects.filter(user_id=application.user_id)
        .exclude(pk=application.pk)
        .prefetch_related(
            Prefetch(
                "decisions",
                queryset=SizeDecision.objects.select_related("variant").order_by(
                    "variant__position"
                ),
            )
        )
        .order_by("-created_at", "-pk")
    )
    grants = list(
        Grant.objects.filter(user_id=application.user_id)
        .select_related("variant", "revoked_by")
        .order_by("variant__position", "-ends_at")
    )
    templates: dict[str, list[ReasonTemplate]] = {}
    for template in ReasonTemplate.objects.filter(is_active=True):
        templates.setdefault(template.kind, []).append(template)
    return ReviewFile(
        application=application,
        claim=claim,
        decisions=decisions,
        events=events,
        notes=notes,
        flags=flags,
        earlier=earlier,
        grants=grants,
        licenses=_license_status(application.user, now),
        templates=templates,
    )


def reason_templates(kind: str) -> list[ReasonTemplate]:
    return list(ReasonTemplate.objects.filter(kind=kind, is_active=True))


# --- Export -----------------------------------------------------------------------------


def decisions_in_range(*, start: date, end: date) -> QuerySet[SizeDecision]:
    """Final per-size decisions (approved, rejected) taken between two dates, inclusive."""
    tz = timezone.get_current_timezone()
    since = datetime.combine(start, datetime.min.time(), tzinfo=tz)
    until = datetime.combine(end + timedelta(days=1), datetime.min.time(), tzinfo=tz)
    return (
        SizeDecision.objects.filter(
            outcome__in=[SizeOutcome.APPROVED, SizeOutcome.REJECTED],
            decided_at__gte=since,
            decided_at__lt=until,
        )
        .select_related("application", "variant", "decided_by", "first_approved_by")
        .annotate(
            grant_ends_at=Subquery(
                Grant.objects.filter(
                    application_id=OuterRef("application_id"), variant_id=OuterRef("variant_id")
                )
                .order_by("-ends_at")
                .values("ends_at")[:1]
            )
        )
        .order_by("decided_at", "pk")
    )
