from __future__ import annotations

import pytest


@pytest.mark.django_db
def test_unknown_pages_get_a_readable_404(client):
    response = client.get("/no/such/page/")

    assert response.status_code == 404
    assert b"There is nothing at this address." in response.content
    assert b"Traceback" not in response.content


@pytest.mark.django_db
def test_unknown_api_paths_answer_json(client):
    response = client.get("/api/v1/no-such-thing", HTTP_ACCEPT="application/json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "404"


@pytest.mark.django_db
def test_an_unpublished_model_is_not_found(client):
    from catalog.models import ModelVariant

    ModelVariant.objects.filter(slug="65b").update(is_published=False)

    assert client.get("/models/65b/").status_code == 404
    assert b"LLaMA 65B" not in client.get("/models/").content
