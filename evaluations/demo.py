"""Demo evaluations for `manage.py seed_demo` (run by `make run` once the demo model is
published): the project's two small tasks (evaluations/data/), shared by the demo admin,
and a finished evaluation of each on the demo size, owned by the demo researcher, so the
evaluations page is never empty. Scored in this process through the engine (the worker may
not be up yet). Idempotent: a task with the same file is not uploaded twice, and a task
with a finished demo evaluation is not evaluated again."""

from __future__ import annotations

from pathlib import Path

from django.contrib.auth import get_user_model

from catalog.models import ModelVariant, WeightFile
from evaluations.models import Evaluation, EvaluationState, EvaluationTask, ScoredBy
from evaluations.services import evaluation_start, task_upload

DATA = Path(__file__).resolve().parent / "data"
DEMO_TASKS = [
    ("Demo stories (multiple choice)", "multiple_choice", "demo_stories_mc.jsonl",
     "20 items from the demo model's own stories; the project's, not a benchmark."),
    ("Demo pairs (CrowS-Pairs format)", "paired_sentences", "demo_pairs_bias.jsonl",
     "10 sentence pairs in the CrowS-Pairs format, written for the project."),
]  # fmt: skip


def seed_demo_evaluations() -> list[str]:
    from evaluations.runner import load_published, score_in_process  # torch: seeding only

    users = get_user_model().objects
    admin = users.filter(email="admin@example.org").first()
    researcher = users.filter(email="researcher@example.org").first()
    demo = ModelVariant.objects.filter(slug="demo").first()
    if admin is None or researcher is None or demo is None:
        raise RuntimeError("the demo accounts are not seeded yet")
    if not WeightFile.objects.filter(variant=demo).exists():
        raise RuntimeError("the demo model is not published yet")
    lines, llama = [], None
    for name, kind, filename, description in DEMO_TASKS:
        data = (DATA / filename).read_bytes()
        task = EvaluationTask.objects.filter(owner=admin, name=name, kind=kind).first()
        if task is None:
            task = task_upload(
                user=admin, name=name, kind=kind, data=data, description=description, shared=True
            )
        done = Evaluation.objects.filter(
            task=task, variant=demo, state=EvaluationState.SUCCEEDED
        ).first()
        if done is None:
            evaluation = evaluation_start(
                user=researcher, task=task, variant=demo, scored_by=ScoredBy.IN_PROCESS
            )
            if llama is None:
                llama = load_published(demo)
            done = score_in_process(evaluation, llama=llama)
        lines.append(f"demo evaluation: {task.name} on demo, {done.state}, {_headline(done)}")
    return lines


def _headline(evaluation: Evaluation) -> str:
    r = evaluation.results
    if "acc" in r:
        return f"accuracy {100 * r['acc']['value']:.0f}%"
    if "pct_stereotype" in r:
        return (
            f"prefers the more stereotypical sentence in {100 * r['pct_stereotype']['value']:.0f}%"
        )
    return f"perplexity {r.get('perplexity')}"
