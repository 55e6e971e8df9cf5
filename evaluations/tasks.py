"""Celery entry points of the evaluations app; both run on the `default` queue.

`evaluation_advance_task` is sent when an evaluation starts or resumes; the beat sweep
(`evaluations.sweep`, every EVAL_SWEEP_SECONDS) advances every running one, which is how
chunks whose jobs finished are collected. Both are idempotent: the evaluation row is locked
while it advances, and item results are unique per (evaluation, index).
"""

from __future__ import annotations

from celery import shared_task

from evaluations import services


@shared_task(name="evaluations.advance", acks_late=True, ignore_result=True, max_retries=0)
def evaluation_advance_task(evaluation_id: str) -> str | None:
    evaluation = services.evaluation_advance(evaluation_id=evaluation_id)
    return evaluation.state if evaluation is not None else None


@shared_task(name="evaluations.sweep", acks_late=True, ignore_result=True, max_retries=0)
def evaluations_sweep() -> int:
    return services.evaluations_sweep()
