"""The job answer built as plain data (`job_output`, every submission and poll) is what the
documented serializer (`JobOutput`, the schema's) renders, for jobs in every state."""

from __future__ import annotations

import itertools
import json
from datetime import timedelta

import pytest
from django.test import RequestFactory
from django.utils import timezone

from catalog.models import ModelVariant
from core import workers
from inference.api import JobOutput, job_output
from inference.models import GenerationJob, JobState

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_availability(monkeypatch):
    monkeypatch.setattr("inference.services._AVAILABILITY_SECONDS", 0.0)
    monkeypatch.setattr("inference.services._availability_seen", {})


def _job(owner, state: str, *, served: bool, sent: bool, finished: bool) -> GenerationJob:
    now = timezone.now()
    values = {}
    if state != JobState.QUEUED:
        values |= {"started_at": now, "worker": "w1@host", "attempts": 1, "queue_wait": 0.25}
    if finished:
        values |= {
            "first_token_at": now + timedelta(milliseconds=40),
            "finished_at": now + timedelta(seconds=1),
            "time_to_first_token": 0.04,
            "decode_tokens_per_second": 123.4,
            "completion_tokens": 3,
            "outputs": [{"text": "é\u2028 ok", "tokens": [5, 6, 7], "finish_reason": "length"}],
        }
    if state == JobState.FAILED:
        values["error"] = "The worker ran out of memory."
    if served:
        workers.announce(node="w1@host", queues=["gpu.demo"])
    return GenerationJob.objects.create(
        owner=owner,
        variant=ModelVariant.objects.get(slug="demo"),
        prompts=["Hello", "world"],
        params={"max_new_tokens": 3, "temperature": 0.5, "n": 1, "stop": ["\n"]},
        prompt_tokens=4,
        token_charge=10,
        created_at=now,
        queued_at=now,
        state=state,
        message_sent=sent,
        cancel_requested=state == JobState.RUNNING,
        **values,
    )


@pytest.mark.parametrize(
    ("state", "served", "sent"),
    list(itertools.product(list(JobState), [True, False], [True, False])),
)
def test_the_plain_answer_is_what_the_serializer_renders(researcher, state, served, sent):
    finished = state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
    job = _job(researcher, state, served=served, sent=sent, finished=finished)
    request = RequestFactory().get(f"/api/v1/jobs/{job.pk}")
    for seen in (job, GenerationJob.objects.select_related("variant").get(pk=job.pk)):
        documented = JobOutput(seen, context={"request": request}).data
        plain = job_output(seen, request)

        assert plain == documented
        assert json.dumps(plain) == json.dumps(documented)  # the same JSON, types included
    if state == JobState.QUEUED and not sent:
        assert plain["waiting_reason"] == "broker_unreachable"
