"""Evaluations through their services, with a stand-in worker (`conftest.fake_run`) that
finishes scoring jobs through the jobs service: every item is scored exactly once whatever
happens to the jobs (reruns, duplicates, cancels, resumes), and only unscored items are sent
again."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import PermissionDenied
from evaluations import scoring
from evaluations.models import EvaluationChunk, EvaluationItem, EvaluationState
from evaluations.services import (
    evaluation_advance,
    evaluation_cancel,
    evaluation_resume,
    evaluation_start,
    task_upload,
)
from evaluations.tests.conftest import fake_logprobs, fake_run
from inference.models import GenerationJob, JobState
from inference.services import job_take_back
from inference.tokens import tokenizer_get


def expected_scores(task, variant) -> list[dict]:
    """What each item must score with the stand-in's log-probabilities, computed here from
    the task alone."""
    sp = tokenizer_get(variant)
    out = []
    for item in task.items:
        requests = scoring.item_requests(
            task.kind, item, encode=lambda t: list(sp.encode(t)), bos=sp.bos_id()
        )
        parts = [(fake_logprobs(ids), start) for ids, start in requests]
        out.append(scoring.item_scores(task.kind, item, parts))
    return out


def outstanding_jobs(evaluation) -> list[GenerationJob]:
    return list(
        GenerationJob.objects.filter(
            evaluation_chunk__evaluation=evaluation, state__in=(JobState.QUEUED, JobState.RUNNING)
        ).order_by("created_at")
    )


def finish_all(evaluation, limit: int = 50):
    for _ in range(limit):
        evaluation = evaluation_advance(evaluation_id=evaluation.pk)
        jobs = outstanding_jobs(evaluation)
        if evaluation.state != EvaluationState.RUNNING and not jobs:
            return evaluation
        for job in jobs:
            if job.state == JobState.RUNNING:
                job_take_back(job_id=job.pk, claim_id=job.claim_id, reason="test", requeue=False)
            fake_run(job)
    raise AssertionError("the evaluation did not finish")


@pytest.fixture
def small_chunks(settings):
    settings.EVAL_ACTIVE_PER_USER = 1000
    settings.EVAL_MAX_OUTSTANDING_JOBS = 3
    settings.EVAL_CHUNK_CONTEXTS = 1  # a few items per job: many chunks from 20 items


def test_it_scores_every_item_once_and_finishes(researcher, published_demo, mc_file, small_chunks):
    task = task_upload(user=researcher, name="stories", kind="multiple_choice", data=mc_file)
    evaluation = evaluation_start(user=researcher, task=task, variant=published_demo)
    evaluation = finish_all(evaluation)
    assert evaluation.state == EvaluationState.SUCCEEDED
    assert evaluation.items_done == evaluation.items_total == 20
    assert EvaluationChunk.objects.filter(evaluation=evaluation).count() > 1
    rows = list(EvaluationItem.objects.filter(evaluation=evaluation).order_by("index"))
    assert [r.index for r in rows] == list(range(20))
    assert [r.scores for r in rows] == expected_scores(task, published_demo)
    acc = evaluation.results["acc"]
    assert acc["k"] == sum(r.scores["correct"] for r in rows) and acc["n"] == 20
    assert acc["ci95"] == list(scoring.wilson(acc["k"], 20))
    # provenance: the task file and the published files it ran on
    assert evaluation.task_sha256 == task.sha256
    paths = {f["path"] for f in evaluation.checkpoint_manifest["files"]}
    assert "tokenizer.model" in paths and any(p.endswith(".pth") for p in paths)
    assert all(job.params["max_new_tokens"] == 0 and job.params["echo"] for job in
               GenerationJob.objects.filter(evaluation_chunk__evaluation=evaluation))  # fmt: skip


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["run", "rerun", "claim_only", "advance", "cancel_resume", "fail"]),
        st.integers(0, 5),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actions=ACTIONS)
def test_each_item_is_scored_exactly_once_over_any_sequence_of_job_reruns(
    researcher, published_demo, pairs_file, small_chunks, actions
):
    task = task_upload(user=researcher, name="pairs", kind="paired_sentences", data=pairs_file)
    evaluation = evaluation_start(user=researcher, task=task, variant=published_demo)
    evaluation = evaluation_advance(evaluation_id=evaluation.pk)
    for action, pick in actions:
        evaluation.refresh_from_db()
        jobs = list(
            GenerationJob.objects.filter(evaluation_chunk__evaluation=evaluation).order_by(
                "created_at"
            )
        )
        job = jobs[pick % len(jobs)] if jobs else None
        if action == "run" and job is not None and job.state == JobState.QUEUED:
            fake_run(job)
        elif action == "rerun" and job is not None and job.state == JobState.QUEUED:
            # a worker takes it, dies, the sweep hands it back, another worker runs it
            fake_run(job, finish=False)
            job.refresh_from_db()
            job_take_back(job_id=job.pk, claim_id=job.claim_id, reason="died", requeue=False)
            fake_run(job)
        elif action == "claim_only" and job is not None and job.state == JobState.QUEUED:
            fake_run(job, finish=False)
        elif action == "advance":
            evaluation_advance(evaluation_id=evaluation.pk)
        elif action == "fail" and job is not None and job.state == JobState.RUNNING:
            job_take_back(job_id=job.pk, claim_id=job.claim_id, reason="died", max_attempts=1)
        elif action == "cancel_resume" and evaluation.state == EvaluationState.RUNNING:
            evaluation_cancel(evaluation=evaluation)
            evaluation_advance(evaluation_id=evaluation.pk)
            evaluation_resume(evaluation=evaluation, user=researcher)
        elif action == "cancel_resume" and evaluation.state != EvaluationState.SUCCEEDED:
            evaluation_resume(evaluation=evaluation, user=researcher)
        # the invariant at every step: no item twice, progress is what is stored
        evaluation = evaluation_advance(evaluation_id=evaluation.pk)
        indexes = list(
            EvaluationItem.objects.filter(evaluation=evaluation).values_list("index", flat=True)
        )
        assert len(indexes) == len(set(indexes)) == evaluation.items_done
    if evaluation.state in (EvaluationState.CANCELLED, EvaluationState.FAILED):
        evaluation_resume(evaluation=evaluation, user=researcher)
    evaluation = finish_all(evaluation)
    assert evaluation.state == EvaluationState.SUCCEEDED
    rows = list(EvaluationItem.objects.filter(evaluation=evaluation).order_by("index"))
    assert [r.index for r in rows] == list(range(task.item_count))
    assert [r.scores for r in rows] == expected_scores(task, published_demo)


def test_cancel_stops_the_jobs_and_resume_sends_only_unscored_items(
    researcher, published_demo, mc_file, small_chunks
):
    task = task_upload(user=researcher, name="stories", kind="multiple_choice", data=mc_file)
    evaluation = evaluation_start(user=researcher, task=task, variant=published_demo)
    evaluation = evaluation_advance(evaluation_id=evaluation.pk)
    first, *others = outstanding_jobs(evaluation)
    assert others, "more than one chunk in flight"
    fake_run(first)
    fake_run(others[0], finish=False)  # running when the cancel comes
    evaluation = evaluation_cancel(evaluation=evaluation)
    assert evaluation.state == EvaluationState.CANCELLED
    states = {j.pk: j for j in GenerationJob.objects.filter(pk__in=[o.pk for o in others])}
    assert states[others[0].pk].cancel_requested  # the worker is told to stop
    assert all(states[o.pk].state == JobState.CANCELLED for o in others[1:])
    evaluation = evaluation_advance(evaluation_id=evaluation.pk)  # collects the finished one
    scored = set(evaluation.items.values_list("index", flat=True))
    assert scored == set(EvaluationChunk.objects.get(job=first).item_indexes)
    assert evaluation.state == EvaluationState.CANCELLED and evaluation.items_done == len(scored)

    evaluation_resume(evaluation=evaluation, user=researcher)
    evaluation = evaluation_advance(evaluation_id=evaluation.pk)
    new_chunks = EvaluationChunk.objects.filter(evaluation=evaluation, collected=False).exclude(
        job__state=JobState.RUNNING
    )
    sent_again = {i for chunk in new_chunks for i in chunk.item_indexes}
    assert sent_again and not sent_again & scored
    evaluation = finish_all(evaluation)
    assert evaluation.state == EvaluationState.SUCCEEDED
    assert sorted(evaluation.items.values_list("index", flat=True)) == list(range(20))


def test_a_revoked_grant_fails_the_evaluation_with_the_reason(
    researcher, published_demo, mc_file, small_chunks
):
    from accounts.models import Grant
    from accounts.services import grant_revoke
    from accounts.tests.factories import ReviewerFactory

    task = task_upload(user=researcher, name="stories", kind="multiple_choice", data=mc_file)
    evaluation = evaluation_start(user=researcher, task=task, variant=published_demo)
    evaluation = evaluation_advance(evaluation_id=evaluation.pk)
    grant = Grant.objects.get(user=researcher, variant=published_demo)
    grant_revoke(grant=grant, actor=ReviewerFactory(), reason="Shared the weights.")
    jobs = outstanding_jobs(evaluation)
    evaluation = evaluation_advance(evaluation_id=evaluation.pk)
    assert evaluation.state == EvaluationState.FAILED
    assert "revoked" in evaluation.error.lower()
    assert all(j.state == JobState.CANCELLED for j in GenerationJob.objects.filter(
        pk__in=[j.pk for j in jobs]))  # fmt: skip
    with pytest.raises(PermissionDenied):
        evaluation_resume(evaluation=evaluation, user=researcher)


def test_wilson_interval_matches_the_textbook_values():
    lo, hi = scoring.wilson(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    lo, hi = scoring.wilson(0, 20)
    assert lo == 0 and round(hi, 4) == 0.1611


def test_deleting_a_researcher_deletes_their_tasks_and_evaluations(
    researcher, published_demo, mc_file, small_chunks
):
    task = task_upload(user=researcher, name="stories", kind="multiple_choice", data=mc_file)
    evaluation = finish_all(evaluation_start(user=researcher, task=task, variant=published_demo))
    assert evaluation.items_done == 20
    researcher.delete()
    assert not EvaluationItem.objects.exists() and not EvaluationChunk.objects.exists()


def test_a_chunk_whose_job_ends_mid_advance_is_not_sent_again(
    researcher, published_demo, mc_file, small_chunks
):
    """The window inside one advance: the chunks were collected, then a job ended before
    more were sent. Its items are still covered (found by the end-to-end test: a chunk
    sent twice, scored once)."""
    from evaluations import services

    task = task_upload(user=researcher, name="stories", kind="multiple_choice", data=mc_file)
    evaluation = evaluation_start(user=researcher, task=task, variant=published_demo)
    evaluation = evaluation_advance(evaluation_id=evaluation.pk)
    first = EvaluationChunk.objects.filter(evaluation=evaluation).order_by("created_at")[0]
    fake_run(first.job)  # ends now, after "collection", before "send"
    evaluation.params = {**evaluation.params}
    services._send_more(evaluation)  # the rest of the same advance
    items = [
        i for c in EvaluationChunk.objects.filter(evaluation=evaluation) for i in c.item_indexes
    ]
    assert len(items) == len(set(items))


def test_the_provenance_names_the_precision_the_workers_load_this_size_with(
    researcher, published_demo, mc_file, settings
):
    settings.JOBS_DTYPE = "float32"
    task = task_upload(user=researcher, name="stories", kind="multiple_choice", data=mc_file)
    plain = evaluation_start(user=researcher, task=task, variant=published_demo)
    assert "dtype float32, device" in plain.engine_version
    evaluation_cancel(evaluation=plain, reason="the next one")

    settings.JOBS_DTYPE_SIZES = {published_demo.slug: "bfloat16"}
    settings.JOBS_QUANTIZE_SIZES = {published_demo.slug: "int8"}
    overridden = evaluation_start(user=researcher, task=task, variant=published_demo)

    assert "dtype bfloat16, int8 weights, device" in overridden.engine_version
