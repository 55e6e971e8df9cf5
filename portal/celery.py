"""The Celery application.

Reliability settings are explicit rather than left to Celery's defaults (see FACTS.md in the
shared notes for what each one changes when a worker dies):
- `acks_late` + `reject_on_worker_lost`: a task whose worker process is killed is re-queued,
  so tasks must count their attempts and be idempotent.
- prefetch 1: a worker never sits on jobs another idle worker could run.
- the broker's visibility timeout stays above the hard time limit, so a long task is not
  handed to a second worker while the first still runs.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue="default",
    task_track_started=False,
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)


app.autodiscover_tasks()
