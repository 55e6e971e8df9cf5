"""Scores against the engine itself: the same items scored directly through
`inference.llama` (one plain forward pass per sequence, log-softmax, sums) on the demo
checkpoint give the per-item scores of an evaluation scored in-process (the command line's
path) and of one run end to end as scoring jobs on a real Celery worker."""

from __future__ import annotations

import time

import pytest

from evaluations import scoring
from evaluations.models import EvaluationChunk, EvaluationItem, EvaluationState, ScoredBy
from evaluations.services import evaluation_start, evaluations_sweep, task_upload


@pytest.fixture(scope="module")
def demo_llama(demo_checkpoint):
    from inference.llama import Llama

    return Llama.load(demo_checkpoint, device="cpu", dtype="float32")


def direct_scores(llama, task) -> list[dict]:
    import torch

    tok = llama.tokenizer
    out = []
    for item in task.items:
        parts = []
        for ids, start in scoring.item_requests(
            task.kind, item, encode=lambda t: tok.encode(t, bos=False), bos=tok.bos_id
        ):
            with torch.no_grad():
                logits = llama.model.forward(torch.tensor([ids]))[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            parts.append(
                ([None] + [logprobs[i - 1, ids[i]].item() for i in range(1, len(ids))], start)
            )
        out.append(scoring.item_scores(task.kind, item, parts))
    return out


def assert_same_scores(stored: list[dict], direct: list[dict]) -> None:
    assert len(stored) == len(direct)
    for a, b in zip(stored, direct, strict=True):
        assert a.keys() == b.keys()
        for key, value in b.items():
            numbers = isinstance(value, list) and value and isinstance(value[0], float)
            if isinstance(value, float) or numbers:
                assert a[key] == pytest.approx(value, abs=2e-4), key
            else:
                assert a[key] == value, key


def test_in_process_scores_equal_the_engines_forward_pass(
    researcher, published_demo, mc_file, demo_llama
):
    from evaluations.runner import score_in_process

    task = task_upload(user=researcher, name="stories", kind="multiple_choice", data=mc_file)
    evaluation = evaluation_start(
        user=researcher, task=task, variant=published_demo, scored_by=ScoredBy.IN_PROCESS
    )
    evaluation = score_in_process(evaluation, llama=demo_llama)
    assert evaluation.state == EvaluationState.SUCCEEDED
    stored = [
        i.scores for i in EvaluationItem.objects.filter(evaluation=evaluation).order_by("index")
    ]
    assert_same_scores(stored, direct_scores(demo_llama, task))


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_an_evaluation_end_to_end_on_a_real_worker(
    celery_worker, s3, published_demo, researcher, pairs_file, mc_file, demo_llama, settings,
    tmp_path,
):  # fmt: skip
    # A worker of this test's own (stopped at its end), serving the demo size's queue.
    celery_worker(
        queues=["gpu.demo"],
        s3_server=s3,
        env={"JOBS_MODEL_CACHE_DIR": str(tmp_path / "models"), "JOBS_MAX_ATTEMPTS": "2"},
    )
    settings.EVAL_CHUNK_CONTEXTS = 1  # several chunks, batched on the worker
    results = {}
    for kind, data in (("paired_sentences", pairs_file), ("multiple_choice", mc_file)):
        task = task_upload(user=researcher, name=kind, kind=kind, data=data)
        evaluation = evaluation_start(user=researcher, task=task, variant=published_demo)
        deadline = time.monotonic() + 180
        seen = []
        while time.monotonic() < deadline:
            evaluations_sweep()  # what beat runs every EVAL_SWEEP_SECONDS
            evaluation.refresh_from_db()
            seen.append(evaluation.items_done)
            if evaluation.state != EvaluationState.RUNNING:
                break
            time.sleep(0.3)
        assert evaluation.state == EvaluationState.SUCCEEDED, evaluation.error
        assert seen == sorted(seen) and seen[-1] == task.item_count  # progress only grows
        chunks = EvaluationChunk.objects.filter(evaluation=evaluation).select_related("job")
        states = [(c.job.state, c.job.error) for c in chunks]
        assert len(chunks) > 1 and all(state == "succeeded" for state, _ in states), states
        assert {c.job.worker for c in chunks} and evaluation.params["workers"]
        stored = [
            i.scores for i in EvaluationItem.objects.filter(evaluation=evaluation).order_by("index")
        ]
        assert_same_scores(stored, direct_scores(demo_llama, task))
        results[kind] = evaluation.results
    assert results["multiple_choice"]["acc"]["n"] == 20
    assert results["paired_sentences"]["pct_stereotype"]["n"] == 10
