"""The dashboard's numbers: a handful of grouped queries, whatever the size of the tables."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.db.models.functions import TruncWeek
from django.utils import timezone

from accounts.models import (
    FINAL_STATES,
    Application,
    ApplicationEvent,
    ApplicationState,
    Grant,
    GrantStatus,
)
from catalog.models import ModelVariant
from weights.models import DownloadEvent

DOWNLOAD_DAYS = 30
_QUEUE = [ApplicationState.SUBMITTED, ApplicationState.RETURNED]


def week_start(moment: datetime) -> datetime:
    local = timezone.localtime(moment)
    monday = local - timedelta(days=local.weekday())
    return monday.replace(hour=0, minute=0, second=0, microsecond=0)


def percentile(values: list[float], fraction: float) -> float | None:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Dashboard:
    weeks: list[datetime]
    outcomes: dict[str, list[int]]  # state -> count per week of first submission
    median_days: list[float | None]
    p90_days: list[float | None]
    overall_median_days: float | None
    overall_p90_days: float | None
    queue_sizes: list[int]  # at the end of each week
    queue_now: int
    sizes: list[ModelVariant]
    active_grants: list[int]
    downloads: list[int]
    download_days: int


def _key(moment: datetime) -> datetime:
    return week_start(moment)


def dashboard_stats(*, weeks: int = 12, now: datetime | None = None) -> Dashboard:
    now = now or timezone.now()
    first = week_start(now) - timedelta(weeks=weeks - 1)
    starts = [first + timedelta(weeks=i) for i in range(weeks)]
    index = {start: i for i, start in enumerate(starts)}

    # Applications per week of first submission, by where they ended up.
    outcome_names = [
        ApplicationState.APPROVED,
        ApplicationState.REJECTED,
        ApplicationState.WITHDRAWN,
        "pending",
    ]
    outcomes = {str(name): [0] * weeks for name in outcome_names}
    rows = (
        Application.objects.filter(submitted_at__gte=first)
        .annotate(week=TruncWeek("submitted_at"))
        .values("week", "state")
        .annotate(n=Count("pk"))
    )
    for row in rows:
        i = index.get(_key(row["week"]))
        if i is None:
            continue
        name = row["state"] if row["state"] in FINAL_STATES else "pending"
        outcomes[str(name)][i] += row["n"]

    # Time from first submission to decision, per week of decision.
    durations: list[list[float]] = [[] for _ in range(weeks)]
    decided = Application.objects.filter(
        decided_at__gte=first, submitted_at__isnull=False
    ).values_list("submitted_at", "decided_at")
    for submitted, decided_at in decided:
        i = index.get(_key(decided_at))
        if i is not None:
            durations[i].append((decided_at - submitted).total_seconds() / 86400)
    every = [d for week in durations for d in week]

    # Queue size: applications that entered review (first submission) minus those that left
    # it (a final state), counted from the event rows up to the end of each week.
    entering = Q(from_state=ApplicationState.DRAFT, to_state=ApplicationState.SUBMITTED)
    leaving = Q(from_state__in=_QUEUE, to_state__in=list(FINAL_STATES))
    changes = [0] * weeks
    weekly = (
        ApplicationEvent.objects.filter(created_at__gte=first)
        .filter(entering | leaving)
        .annotate(week=TruncWeek("created_at"))
        .values("week")
        .annotate(entered=Count("pk", filter=entering), left=Count("pk", filter=leaving))
    )
    for row in weekly:
        i = index.get(_key(row["week"]))
        if i is not None:
            changes[i] += row["entered"] - row["left"]
    # Walk back from today's exact count instead of summing the whole history forward:
    # it reads only the window's events, and the last point always matches the queue.
    queue_now = Application.objects.filter(state__in=_QUEUE).count()
    level = queue_now - sum(changes)
    queue_sizes = []
    for change in changes:
        level += change
        queue_sizes.append(level)

    # Active grants and recent downloads per size.
    sizes = list(ModelVariant.objects.order_by("position", "slug"))
    grants = dict(
        Grant.objects.filter(status=GrantStatus.ACTIVE, starts_at__lte=now, ends_at__gt=now)
        .values("variant_id")
        .annotate(n=Count("pk"))
        .values_list("variant_id", "n")
    )
    downloads = dict(
        DownloadEvent.objects.filter(created_at__gte=now - timedelta(days=DOWNLOAD_DAYS))
        .values("file__variant_id")
        .annotate(n=Count("pk"))
        .values_list("file__variant_id", "n")
    )
    return Dashboard(
        weeks=starts,
        outcomes=outcomes,
        median_days=[percentile(d, 0.5) for d in durations],
        p90_days=[percentile(d, 0.9) for d in durations],
        overall_median_days=percentile(every, 0.5),
        overall_p90_days=percentile(every, 0.9),
        queue_sizes=queue_sizes,
        queue_now=queue_now,
        sizes=sizes,
        active_grants=[grants.get(v.pk, 0) for v in sizes],
        downloads=[downloads.get(v.pk, 0) for v in sizes],
        download_days=DOWNLOAD_DAYS,
    )
