"""`core.rows.one_with_related`: the plain-SQL read builds what the ORM builds."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from core.errors import NotFound

pytestmark = pytest.mark.django_db


def _same(found, expected) -> None:
    for field in type(expected)._meta.concrete_fields:
        got, want = getattr(found, field.attname), getattr(expected, field.attname)
        assert got == want, field.name
        assert type(got) is type(want), field.name
    assert not found._state.adding and found._state.db == "default"


def test_a_job_and_its_size_read_as_the_orm_reads_them(researcher):
    from accounts.tests.factories import UserFactory
    from catalog.models import ModelVariant
    from inference.models import GenerationJob, JobState
    from inference.selectors import job_get_for_user

    now = timezone.now()
    job = GenerationJob.objects.create(
        owner=researcher,
        variant=ModelVariant.objects.get(slug="demo"),
        prompts=["Hello", [1, 2, 3]],
        params={"max_new_tokens": 4, "temperature": 0.5, "n": 1},
        prompt_tokens=7,
        token_charge=11,
        created_at=now,
        queued_at=now,
        state=JobState.RUNNING,
        outputs=[{"text": "é\u2028 ok", "tokens": [5, 6]}],
    )

    found = job_get_for_user(user=researcher, job_id=str(job.pk))
    expected = GenerationJob.objects.select_related("variant").get(pk=job.pk)

    _same(found, expected)
    _same(found.variant, expected.variant)
    assert found.variant.queue_name == "gpu.demo" and found.pk == job.pk
    for stranger in (UserFactory(), None):
        with pytest.raises(NotFound):
            job_get_for_user(user=stranger, job_id=str(job.pk))
    with pytest.raises(NotFound):
        job_get_for_user(user=researcher, job_id=str(uuid.uuid4()))


def test_plain_reads_are_logged_prepared_on_postgresql_and_their_errors_are_djangos(researcher):
    """The reads bind on the server so PostgreSQL can keep their plans: they still pass
    through Django's cursor (logged, errors translated), return what a client-bound cursor
    returns (aware datetimes in UTC on PostgreSQL), and are prepared from the connection's
    threshold on."""
    from django.conf import settings
    from django.db import DatabaseError, connection, transaction
    from django.test.utils import CaptureQueriesContext

    from core import rows

    sql = "SELECT id, date_joined, email FROM accounts_user WHERE id = %s"
    with CaptureQueriesContext(connection) as captured:
        found = rows.fetch(sql, [researcher.pk])
    [logged] = captured.captured_queries  # with its values on SQLite, $1 on PostgreSQL
    assert logged["sql"].startswith("SELECT id, date_joined, email FROM accounts_user WHERE id =")
    with connection.cursor() as cursor:  # Django's own, client-bound
        cursor.execute(sql, [researcher.pk])
        assert found == cursor.fetchall()
    with pytest.raises(DatabaseError), transaction.atomic():  # Django's class, not psycopg's
        rows.fetch("SELECT no_such_column FROM accounts_user WHERE id = %s", [researcher.pk])

    if connection.vendor != "postgresql":
        return  # SQLite hands back text for the converters of `build` to turn into values
    assert found[0][1] == researcher.date_joined and found[0][1].utcoffset().total_seconds() == 0
    threshold = settings.DATABASES["default"]["OPTIONS"]["prepare_threshold"]
    assert threshold is not None  # on by default
    marker = "SELECT id FROM accounts_user WHERE id = %s AND 'prepared-test' <> ''"
    for _ in range(threshold + 1):
        assert rows.fetch(marker, [researcher.pk]) == [(researcher.pk,)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any("'prepared-test'" in statement for statement in prepared), prepared
