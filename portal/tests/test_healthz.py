from __future__ import annotations

import pytest
from django.test import override_settings

from core import storage


def _dead_port() -> int:
    from devtools.services import free_port

    return free_port()


@pytest.mark.worker
def test_it_answers_200_with_every_dependency_ok(client, s3, celery_worker, transactional_db):
    celery_worker(queues=["default"], s3_server=s3)

    response = client.get("/healthz")

    body = response.json()
    assert response.status_code == 200, body
    assert body["down"] == []
    assert set(body["checks"]) == {"database", "redis", "s3", "worker"}
    for result in body["checks"].values():
        assert result["status"] == "ok"
        assert result["latency_ms"] >= 0


def test_it_names_s3_when_the_s3_server_is_down(client, db):
    with override_settings(S3_ENDPOINT_URL=f"http://127.0.0.1:{_dead_port()}"):
        storage.reset_client()
        try:
            response = client.get("/healthz")
        finally:
            storage.reset_client()

    body = response.json()
    assert response.status_code == 503
    assert "s3" in body["down"]
    assert body["checks"]["s3"]["status"] == "down"
    assert body["checks"]["database"]["status"] == "ok"


def test_it_names_redis_and_the_workers_when_redis_is_down(client, db, s3):
    with override_settings(
        REDIS_URL=f"redis://127.0.0.1:{_dead_port()}/0",
    ):
        response = client.get("/healthz")

    body = response.json()
    assert response.status_code == 503
    assert "redis" in body["down"]
    assert "worker" in body["down"]
    assert body["checks"]["s3"]["status"] == "ok"


def test_pages_still_render_when_s3_and_redis_are_down(client, db):
    dead = _dead_port()
    with override_settings(
        S3_ENDPOINT_URL=f"http://127.0.0.1:{dead}", REDIS_URL=f"redis://127.0.0.1:{dead}/0"
    ):
        storage.reset_client()
        try:
            home = client.get("/")
            catalog = client.get("/models/")
            card = client.get("/models/7b/")
        finally:
            storage.reset_client()

    assert home.status_code == 200
    assert catalog.status_code == 200
    assert card.status_code == 200
    assert b"LLaMA 7B" in card.content
