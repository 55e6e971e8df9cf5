"""Celery entry points of the jobs app. They take ids and call the worker or a service.

`run_generation` is sent by `services._enqueue` to the size's queue (`gpu.<slug>`), with the
JOBS_* soft and hard time limits, read when the job is queued. Reliability is explicit:
`acks_late` + `reject_on_worker_lost` re-queue the message when the worker process is
killed mid-job; the job's attempt counter (`JOBS_MAX_ATTEMPTS`) stops a job that kills
its worker every time, and the claim (a conditional UPDATE) makes a second delivery a
no-op. No Celery retries: a failure is recorded on the job with its reason.
"""

from __future__ import annotations

from dataclasses import asdict

from celery import shared_task

from inference import services


@shared_task(
    name="inference.run_generation",
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=0,
)
def run_generation(self, job_id: str) -> str:
    # Imported here: the web process, which sends this task, never loads the worker side.
    from inference.worker import job_run

    # The limits this message was sent with (the web's settings when it was queued).
    _hard, soft = self.request.timelimit or (None, None)
    return job_run(job_id, node=self.request.hostname or "", soft_time_limit=soft)


@shared_task(name="inference.jobs_sweep_stuck", acks_late=True, ignore_result=True, max_retries=0)
def jobs_sweep_stuck() -> dict:
    return asdict(services.jobs_sweep_stuck())
