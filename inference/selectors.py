"""Reads of the jobs app. `job_get_for_user` is how every path loads a job: another
person's job is "not found", never "forbidden", so ids reveal nothing."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import connection
from django.db.models import QuerySet

from core.errors import InvalidInput, NotFound
from core.rows import one_with_related
from inference.models import GenerationJob, JobState


def job_get_for_user(*, user, job_id) -> GenerationJob:
    try:
        pk = uuid.UUID(str(job_id))
    except ValueError:
        raise NotFound("There is no such job on your account.", code="job_not_found") from None
    owner_id = getattr(user, "pk", None)
    job = None
    if owner_id is not None:
        # The job with its size in one plain query: every status poll reads it.
        job = one_with_related(
            GenerationJob,
            "variant",
            "m.id = %s AND m.owner_id = %s",
            [GenerationJob._meta.pk.get_db_prep_value(pk, connection), owner_id],
        )
    if job is None:
        raise NotFound("There is no such job on your account.", code="job_not_found")
    return job


def jobs_for_user(*, user, state: str | None = None, limit: int = 50) -> QuerySet[GenerationJob]:
    jobs = GenerationJob.objects.filter(owner=user).select_related("variant")
    if state:
        if state not in JobState.values:
            raise InvalidInput(
                f"Unknown state {state!r}; one of {', '.join(JobState.values)}.",
                extra={"param": "state"},
            )
        jobs = jobs.filter(state=state)
    return jobs.order_by("-created_at")[:limit]


def precision_for(slug: str) -> tuple[str, str]:
    """The dtype and the weight quantization ("" for none) the workers load size `slug`
    with: JOBS_DTYPE and JOBS_QUANTIZE, overridden per size by JOBS_DTYPE_SIZES and
    JOBS_QUANTIZE_SIZES. What a worker loads and what an evaluation records as its
    provenance both come from here."""
    return (
        settings.JOBS_DTYPE_SIZES.get(slug, settings.JOBS_DTYPE),
        settings.JOBS_QUANTIZE_SIZES.get(slug, settings.JOBS_QUANTIZE),
    )
