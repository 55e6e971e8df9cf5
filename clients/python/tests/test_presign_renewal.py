"""portal-client never holds a presigned URL longer than the portal signed it for."""

from __future__ import annotations

from django.conf import settings
from portal_client.transfer import _SignedUrl, signed_lifetime


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Portal:
    """Stands for /dl/: signs a URL for `lifetime` seconds, and remembers when."""

    def __init__(self, clock: Clock, lifetime: int = 120):
        self.clock, self.lifetime = clock, lifetime
        self.signed_at: dict[str, float] = {}

    def __call__(self) -> str:
        url = (
            f"http://s3.example/b/k?X-Amz-Expires={self.lifetime}"
            f"&X-Amz-Signature=sig{len(self.signed_at)}"
        )
        self.signed_at[url] = self.clock.now
        return url


def test_the_url_is_renewed_before_it_nears_its_end_not_on_every_request():
    clock = Clock()
    portal = Portal(clock)
    url = _SignedUrl(portal, clock=clock)

    first, generation = url.get()
    clock.now += 60
    assert url.get() == (first, generation)  # half its life left: reused
    clock.now += 31  # under a quarter of its life left
    second, later = url.get()
    assert second != first and later == generation + 1

    # Over an hour of requests every 7 s, each starts with a quarter of its URL's life left.
    while clock.now < 1000 + 3600:
        clock.now += 7
        current, _ = url.get()
        assert clock.now - portal.signed_at[current] <= 120 * 0.75
    assert len(portal.signed_at) < 3600 / 60  # renewed about every 90 s, not per request


def test_a_refused_url_is_renewed_at_once():
    clock = Clock()
    portal = Portal(clock)
    url = _SignedUrl(portal, clock=clock)

    _, generation = url.get()
    url.renew(generation)
    url.get()

    assert len(portal.signed_at) == 2


def test_a_url_without_a_lifetime_is_kept_until_refused():
    url = _SignedUrl(lambda: "http://s3.example/b/k?token=x", clock=Clock())

    assert url.get() == url.get()
    assert signed_lifetime("http://s3.example/b/k?X-Amz-Expires=120") == 120


def test_the_portal_signs_for_two_minutes_at_most_by_default():
    assert settings.WEIGHTS_PRESIGN_SECONDS <= 120
