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

import logging
import os
import threading

from celery import Celery, signals
from django.conf import settings

from core import workers

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

logger = logging.getLogger(__name__)
_presence_stop = threading.Event()
_announced: dict[str, list[str]] = {}  # node -> queues, for the withdrawal at shutdown


def _consumed_queues(consumer) -> list[str]:
    return sorted(queue.name for queue in consumer.task_consumer.queues)


@signals.worker_ready.connect
def _announce_presence(sender, **kwargs) -> None:
    """Keep saying which queues this worker consumes (core/workers.py), so the catalog, the
    APIs and job submission know which sizes can run now."""
    node, queues = sender.hostname, _consumed_queues(sender)
    _announced[node] = queues

    def loop() -> None:
        ranks = None
        while not _presence_stop.is_set():
            if ranks is None:
                try:
                    ranks = _planned_ranks(queues)
                except Exception:  # the database away: say 1 rank until it answers
                    logger.warning("could not tell the ranks of %s", queues, exc_info=True)
            try:
                workers.announce(node=node, queues=queues, ranks=ranks)
            except Exception:  # Redis away: the keys lapse, which is the truth
                logger.warning("could not announce queues %s", queues, exc_info=True)
            _presence_stop.wait(settings.WORKER_PRESENCE_SECONDS)

    _presence_stop.clear()
    threading.Thread(target=loop, name="queue-presence", daemon=True).start()


def _planned_ranks(queues: list[str]) -> dict[str, int]:
    """The tensor-parallel ranks this worker will run each size's queue on (JOBS_TP_SIZES,
    or the shards and visible GPUs), told without loading torch in the parent process."""
    # Imported here: this module is loaded with the settings, before the app registry.
    from django.db import connection

    from catalog.models import ModelVariant
    from inference.worker import ranks_for

    slugs = {q.removeprefix("gpu."): q for q in queues if q.startswith("gpu.")}
    try:
        rows = ModelVariant.objects.filter(slug__in=slugs).values_list("slug", "shard_count")
        shards = dict(rows)
    finally:
        connection.close()  # this thread asks once; keep no connection open in the parent
    return {queue: ranks_for(slug, shards.get(slug, 1)) for slug, queue in slugs.items()}


@signals.worker_shutting_down.connect
def _withdraw_presence(**kwargs) -> None:
    """A worker going away says so at once (its running jobs finish or are handed back)."""
    _presence_stop.set()
    for node, queues in list(_announced.items()):
        try:
            workers.withdraw(node=node, queues=queues)
        except Exception:
            logger.warning("could not withdraw queues %s", queues, exc_info=True)
