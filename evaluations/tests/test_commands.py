"""`manage.py evaluate` and the demo seed of `make run`."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from evaluations.models import Evaluation, EvaluationState, EvaluationTask, ScoredBy

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def model_cache(settings, tmp_path):
    settings.JOBS_MODEL_CACHE_DIR = tmp_path / "models"


def test_evaluate_scores_in_process_when_no_worker_serves_the_size(
    published_demo, reviewer, model_cache
):
    reviewer.is_superuser = True
    reviewer.save()
    out = io.StringIO()
    call_command(
        "evaluate", "--size", "demo", "--task", str(DATA / "demo_stories_mc.jsonl"), stdout=out
    )
    text = out.getvalue()
    assert "scoring in this process with the engine" in text
    assert "20/20 items (100%)" in text and "acc: " in text and "95% Wilson" in text
    evaluation = Evaluation.objects.get()
    assert evaluation.state == EvaluationState.SUCCEEDED
    assert evaluation.scored_by == ScoredBy.IN_PROCESS
    assert f"{evaluation.results['acc']['k']}/20" in text
    # the same file again reuses the task
    call_command("evaluate", "--size", "demo", "--task", str(DATA / "demo_stories_mc.jsonl"),
                 "--in-process", stdout=io.StringIO())  # fmt: skip
    assert EvaluationTask.objects.count() == 1 and Evaluation.objects.count() == 2


def test_evaluate_says_what_is_wrong(published_demo, reviewer, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 5}\n')
    with pytest.raises(CommandError, match="line 2, field `text`"):
        call_command("evaluate", "--size", "demo", "--task", str(bad), "--user", reviewer.email)
    with pytest.raises(CommandError, match="No such user"):
        call_command("evaluate", "--size", "demo", "--task", str(bad), "--user", "x@y.z")


def test_the_demo_seed_leaves_two_finished_evaluations_once(published_demo, model_cache):
    from accounts.demo import seed_demo_accounts
    from evaluations.demo import seed_demo_evaluations

    seed_demo_accounts()
    first = seed_demo_evaluations()
    second = seed_demo_evaluations()
    assert first == second and len(first) == 2
    assert EvaluationTask.objects.filter(shared=True).count() == 2
    evaluations = Evaluation.objects.all()
    assert len(evaluations) == 2
    assert all(e.state == EvaluationState.SUCCEEDED and e.items_done == e.items_total
               for e in evaluations)  # fmt: skip
