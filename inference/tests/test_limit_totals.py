"""The three counts a submission's limits rest on, read with one plain query
(`_limit_totals`), equal the ORM's aggregate over generated sets of jobs."""

from __future__ import annotations

from datetime import timedelta

from django.db import transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from accounts.tests.factories import UserFactory
from catalog.models import ModelVariant
from inference.models import ACTIVE_STATES, GenerationJob, JobState
from inference.services import DAY, _limit_totals

_job = st.fixed_dictionaries(
    {
        "mine": st.booleans(),
        "state": st.sampled_from(list(JobState)),
        "max_new_tokens": st.sampled_from([0, 1, 2, 64]),
        "n": st.sampled_from([1, 2]),
        "token_charge": st.sampled_from([0, 1, 37, 5000]),
        "hours_ago": st.sampled_from([0, 23, 25, 72]),
    }
)


def _orm_totals(user, now) -> dict[str, int]:
    """The rule as the ORM states it (what `_check_limits` asked before the plain query)."""
    scoring_q = Q(params__max_new_tokens__lte=1, params__n=1)
    active_q = Q(state__in=ACTIVE_STATES)
    day_q = Q(created_at__gt=now - DAY, token_charge__gt=0)
    totals = (
        GenerationJob.objects.filter(owner=user)
        .filter(active_q | day_q)
        .aggregate(
            in_flight=Sum("token_charge", filter=active_q & scoring_q),
            active=Count("pk", filter=active_q & ~scoring_q),
            used=Sum("token_charge", filter=day_q),
        )
    )
    return {name: int(value or 0) for name, value in totals.items()}


@given(jobs=st.lists(_job, max_size=8))
@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_the_plain_query_counts_what_the_orm_counts(jobs, db):
    with transaction.atomic():  # each example starts from the same database
        now = timezone.now()
        user, other = UserFactory(), UserFactory()
        variant = ModelVariant.objects.get(slug="demo")
        for job in jobs:
            created = now - timedelta(hours=job["hours_ago"], seconds=1)
            GenerationJob.objects.create(
                owner=user if job["mine"] else other,
                variant=variant,
                prompts=["x"],
                params={"max_new_tokens": job["max_new_tokens"], "n": job["n"]},
                state=job["state"],
                token_charge=job["token_charge"],
                created_at=created,
                queued_at=created,
            )

        assert _limit_totals(user_id=user.pk, now=now) == _orm_totals(user, now)
        transaction.set_rollback(True)


def test_a_user_without_jobs_has_nothing_counted(db):
    assert _limit_totals(user_id=UserFactory().pk, now=timezone.now()) == {
        "in_flight": 0, "active": 0, "used": 0,
    }  # fmt: skip


def test_the_run_is_on_the_database_it_was_asked_for(db):
    """`portal/tests/test_plain_sql_on_sqlite.py` runs this file on SQLite: it says so."""
    import os

    from django.db import connection

    assert connection.vendor == os.environ.get("PORTAL_EXPECT_DB_VENDOR", connection.vendor)
