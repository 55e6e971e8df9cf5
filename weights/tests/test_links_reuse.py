"""Which link a links request hands out, per file: the user's newest link that stays usable for
another minute, else a new one. Read in plain SQL (`_files_with_live_link` by size, and by
name joined to the size and its access decision in `download_links_for_slug`); these tests
hold both to the rule written with the ORM, over an enumerated matrix of link states."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from django.db.models import F
from django.test import RequestFactory
from django.utils import timezone

from accounts.tests.factories import UserFactory
from catalog.models import WeightFile
from weights.models import DownloadLink
from weights.services import _new_link_id, download_links_for_slug, download_links_issue

pytestmark = pytest.mark.django_db

# A link's state relative to the moment links are asked for.
STATES = {
    "live": {},
    "revoked": {"revoked_at": -60},
    "expired": {"expires_at": -1},
    "expires_within_a_minute": {"expires_at": 30},
    "used_up": {"use_count": 20},
}


def _make(user, file, state: str, *, age: int) -> DownloadLink:
    now = timezone.now()
    values = {"expires_at": now + timedelta(hours=1), "use_count": 0, "revoked_at": None}
    for name, value in STATES[state].items():
        values[name] = value if name == "use_count" else now + timedelta(seconds=value)
    return DownloadLink.objects.create(
        id=_new_link_id(),
        user=user,
        file=file,
        created_at=now - timedelta(seconds=age),
        max_uses=20,
        **values,
    )


def _expected(user, file, now) -> DownloadLink | None:
    """The rule, in the ORM: the newest usable link (one more minute at least)."""
    return (
        DownloadLink.objects.filter(
            user=user,
            file=file,
            revoked_at__isnull=True,
            expires_at__gt=now + timedelta(minutes=1),
            use_count__lt=F("max_uses"),
        )
        .order_by("-created_at", "-id")
        .first()
    )


def _by_size(user, variant):
    return download_links_issue(user=user, variant=variant)


def _by_name(user, variant):
    found, links = download_links_for_slug(user=user, slug=variant.size)  # "7B"
    assert found.pk == variant.pk
    return links


@pytest.mark.parametrize("issue", [_by_size, _by_name])
@pytest.mark.parametrize(
    ("older", "newer"), list(itertools.product([None, *STATES], [None, *STATES]))
)
def test_the_newest_usable_link_is_reused_and_only_it(
    researcher, published_7b, older, newer, issue
):
    files = list(WeightFile.objects.filter(variant=published_7b).order_by("path"))
    shard = next(f for f in files if f.path.endswith(".pth"))
    stranger = UserFactory()
    _make(stranger, shard, "live", age=1)  # never anyone else's link
    if older:
        _make(researcher, shard, older, age=600)
    if newer:
        _make(researcher, shard, newer, age=60)
    expected = _expected(researcher, shard, timezone.now())

    links = issue(researcher, published_7b)

    assert [link.file.path for link in links] == [f.path for f in files]
    got = next(link for link in links if link.file_id == shard.pk)
    assert got.user_id == researcher.pk
    if expected is not None:
        assert got.pk == expected.pk
    else:
        assert got.created_at > timezone.now() - timedelta(seconds=5)  # a new one
        assert got.use_count == 0 and got.revoked_at is None
    # Asked again, every file gets the same link back, and the rows are what was handed out.
    again = issue(researcher, published_7b)
    assert [link.pk for link in again] == [link.pk for link in links]
    for link in again:
        stored = DownloadLink.objects.get(pk=link.pk)
        assert (stored.user_id, stored.file_id, stored.expires_at, stored.use_count) == (
            link.user_id, link.file_id, link.expires_at, link.use_count,
        )  # fmt: skip


def test_the_answer_is_what_the_documented_serializer_renders(
    client, researcher, published_7b, download_token
):
    from weights.api import VariantLinksOutput

    response = client.get("/api/v1/models/7b/links", HTTP_AUTHORIZATION=f"Bearer {download_token}")

    assert response.status_code == 200
    links = download_links_issue(user=researcher, variant=published_7b)  # the same, reused
    request = RequestFactory().get("/api/v1/models/7b/links")
    documented = VariantLinksOutput(
        {
            "model": str(published_7b),
            "size": published_7b.size,
            "slug": published_7b.slug,
            "shard_count": published_7b.shard_count,
            "files": links,
            "checklist_url": "http://testserver/models/7b/checklist.chk",
            "manifest_url": "http://testserver/models/7b/manifest.json",
        },
        context={"request": request},
    ).data
    assert response.json() == documented
