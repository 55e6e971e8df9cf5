"""Whether a size can be used now: published files, and a live worker on its queue."""

from __future__ import annotations

import time
import uuid

import pytest

from catalog.models import ModelVariant, WeightFile
from catalog.selectors import Availability, variant_availability
from catalog.tests.factories import file_row
from core import workers

pytestmark = pytest.mark.django_db


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_a_worker_announces_its_queues_and_withdraws_them(settings):
    settings.WORKER_PRESENCE_SECONDS = 3600  # the keys outlive a slow run
    queue = f"gpu.test-{uuid.uuid4().hex[:8]}"
    assert workers.consumers(queue) == 0
    workers.announce(node="a@host", queues=[queue, "default"])
    workers.announce(node="b@host", queues=[queue])
    assert workers.consumers(queue) == 2
    workers.withdraw(node="a@host", queues=[queue, "default"])
    assert workers.consumers(queue) == 1
    workers.withdraw(node="b@host", queues=[queue])
    assert workers.consumers(queue) == 0


def test_a_silent_worker_lapses(settings):
    settings.WORKER_PRESENCE_SECONDS = 0.1  # keys live three periods
    queue = f"gpu.test-{uuid.uuid4().hex[:8]}"
    workers.announce(node="gone@host", queues=[queue])
    assert workers.consumers(queue) == 1
    assert wait_for(lambda: workers.consumers(queue) == 0, timeout=5)


def test_each_reason_a_size_cannot_run_is_told(settings):
    variant = ModelVariant.objects.get(slug="13b")
    WeightFile.objects.filter(variant=variant).delete()
    none = variant_availability(variant)
    assert (none.files, none.runnable) == (False, False)
    assert none.download_note == "LLaMA 13B has no published files yet."
    assert "no published files yet" in none.run_note

    file_row(variant.slug)
    idle = variant_availability(variant)
    assert idle.files and idle.workers == 0 and not idle.runnable
    assert idle.download_note == ""
    assert "No worker serves LLaMA 13B now (queue gpu.13b)" in idle.run_note

    settings.WORKER_PRESENCE_SECONDS = 3600  # the key outlives a slow run
    workers.announce(node="w@host", queues=["gpu.13b"])
    try:
        served = variant_availability(variant)
        assert served.runnable and served.workers == 1 and served.run_note == ""
    finally:
        workers.withdraw(node="w@host", queues=["gpu.13b"])


def test_an_unreachable_broker_is_unknown_not_absent(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    variant = ModelVariant.objects.get(slug="13b")
    file_row(variant.slug)
    unknown = variant_availability(variant)
    assert unknown == Availability(size="13B", queue="gpu.13b", files=True, workers=None)
    assert not unknown.runnable
    assert "cannot be told now" in unknown.run_note


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_is_seen_while_it_runs_and_not_after(celery_worker):
    queue = f"gpu.test-{uuid.uuid4().hex[:8]}"
    worker = celery_worker(queues=["default", queue])
    assert wait_for(lambda: workers.consumers(queue) == 1)
    worker.stop()  # SIGTERM: a warm shutdown withdraws at once, without waiting for expiry
    assert workers.consumers(queue) == 0
