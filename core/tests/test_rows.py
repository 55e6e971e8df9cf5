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
