from __future__ import annotations

import logging
import urllib.error
import urllib.parse
import urllib.request
from datetime import timedelta

from django.test import override_settings
from django.utils import timezone

from catalog.models import WeightFile
from core import storage
from weights.models import DownloadEvent, DownloadLink
from weights.services import download_link_revoke, download_links_issue


def _fetch(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _link(user, variant, path="consolidated.00.pth") -> DownloadLink:
    links = download_links_issue(user=user, variant=variant)
    return next(link for link in links if link.file.path == path)


def _bearer(key: str) -> dict:
    return {"HTTP_AUTHORIZATION": f"Bearer {key}", "HTTP_ACCEPT": "application/json"}


def _assert_nothing_recorded(link: DownloadLink, uses_before: int = 0) -> None:
    assert DownloadEvent.objects.count() == 0
    link.refresh_from_db()
    assert link.use_count == uses_before


def test_a_link_redirects_to_a_fresh_presigned_url_that_downloads_the_file(
    client, researcher, published_7b
):
    link = _link(researcher, published_7b)
    client.force_login(researcher)

    response = client.get(f"/dl/{link.id}", HTTP_USER_AGENT="curl/8.0", REMOTE_ADDR="192.0.2.7")

    assert response.status_code == 302
    url = response["Location"]
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert int(query["X-Amz-Expires"][0]) <= 15 * 60
    assert query["response-content-disposition"] == ['attachment; filename="consolidated.00.pth"']
    status, headers, body = _fetch(url)
    assert status == 200
    assert headers["Content-Disposition"].startswith("attachment")
    assert len(body) == link.file.size
    event = DownloadEvent.objects.get()
    assert (event.user, event.file, event.link) == (researcher, link.file, link)
    assert (event.ip, event.user_agent) == ("192.0.2.7", "curl/8.0")
    link.refresh_from_db()
    assert link.use_count == 1


def test_each_use_signs_a_new_url(client, researcher, published_7b):
    link = _link(researcher, published_7b)
    client.force_login(researcher)

    first = client.get(f"/dl/{link.id}")["Location"]
    with override_settings(WEIGHTS_PRESIGN_SECONDS=61):
        second = client.get(f"/dl/{link.id}")["Location"]

    assert first != second
    assert DownloadEvent.objects.count() == 2


def test_a_tampered_presigned_url_is_refused_by_s3(client, researcher, published_7b):
    link = _link(researcher, published_7b)
    client.force_login(researcher)
    url = client.get(f"/dl/{link.id}")["Location"]
    signature = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-Signature"][0]
    edited = signature[:-1] + ("a" if signature[-1] != "a" else "b")

    status, _, body = _fetch(url.replace(signature, edited))

    assert status == 403
    assert len(body) < link.file.size


def test_an_expired_presigned_url_is_refused_by_s3(client, researcher, published_7b):
    link = _link(researcher, published_7b)
    client.force_login(researcher)
    with override_settings(WEIGHTS_PRESIGN_SECONDS=1):
        url = client.get(f"/dl/{link.id}")["Location"]
    import time

    time.sleep(2.1)
    status, _, _ = _fetch(url)

    assert status == 403


def test_an_expired_link_is_refused_and_records_nothing(client, researcher, published_7b):
    with override_settings(WEIGHTS_LINK_SECONDS=1):
        link = _link(researcher, published_7b)
    DownloadLink.objects.filter(id=link.id).update(expires_at=timezone.now() - timedelta(seconds=1))
    client.force_login(researcher)

    response = client.get(f"/dl/{link.id}", HTTP_ACCEPT="application/json")

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "link_expired"
    assert "Get fresh links" in error["message"]
    _assert_nothing_recorded(link)


def test_a_link_past_its_use_cap_is_refused_and_records_nothing_more(
    client, researcher, published_7b
):
    with override_settings(WEIGHTS_LINK_MAX_USES=2):
        link = _link(researcher, published_7b)
    client.force_login(researcher)
    assert client.get(f"/dl/{link.id}").status_code == 302
    assert client.get(f"/dl/{link.id}").status_code == 302

    response = client.get(f"/dl/{link.id}", HTTP_ACCEPT="application/json")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "link_used_up"
    assert DownloadEvent.objects.count() == 2
    link.refresh_from_db()
    assert link.use_count == 2


def test_a_revoked_link_is_refused(client, researcher, published_7b):
    link = _link(researcher, published_7b)
    download_link_revoke(link=link)
    client.force_login(researcher)

    response = client.get(f"/dl/{link.id}", HTTP_ACCEPT="application/json")

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "link_revoked"
    _assert_nothing_recorded(link)


def test_revoking_the_grant_kills_existing_links_at_once(
    client, researcher, reviewer, published_7b
):
    from accounts.models import Grant
    from accounts.services import grant_revoke

    link = _link(researcher, published_7b)
    client.force_login(researcher)
    assert client.get(f"/dl/{link.id}").status_code == 302
    grant = Grant.objects.get(user=researcher, variant=published_7b, status="active")
    grant_revoke(grant=grant, actor=reviewer, reason="Shared the weights.")

    response = client.get(f"/dl/{link.id}")

    assert response.status_code == 403
    assert "was revoked: Shared the weights." in response.content.decode()
    assert DownloadEvent.objects.count() == 1  # the use before the revocation only


def test_an_expired_grant_kills_links(client, researcher, published_7b):
    from accounts.models import Grant

    link = _link(researcher, published_7b)
    Grant.objects.filter(user=researcher, variant=published_7b).update(
        ends_at=timezone.now() - timedelta(minutes=1)
    )
    client.force_login(researcher)

    response = client.get(f"/dl/{link.id}", HTTP_ACCEPT="application/json")

    assert response.json()["error"]["code"] == "grant_expired"
    _assert_nothing_recorded(link)


def test_a_license_update_not_yet_accepted_kills_links(client, researcher, published_7b):
    from accounts.selectors import license_for_variant
    from accounts.services import license_publish_version

    link = _link(researcher, published_7b)
    license_publish_version(
        license=license_for_variant(published_7b), title="LLaMA license v2", text="New terms."
    )
    client.force_login(researcher)

    response = client.get(f"/dl/{link.id}", HTTP_ACCEPT="application/json")

    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "license_pending"
    assert "accept" in error["message"]
    _assert_nothing_recorded(link)


def test_a_deactivated_account_can_no_longer_use_its_links(
    client, researcher, reviewer, published_7b, download_token
):
    from accounts.services import user_deactivate

    link = _link(researcher, published_7b)
    client.force_login(researcher)
    user_deactivate(user=researcher, actor=reviewer, reason="Left the lab.")

    by_session = client.get(f"/dl/{link.id}", HTTP_ACCEPT="application/json")
    client.logout()
    by_token = client.get(f"/dl/{link.id}", **_bearer(download_token))

    assert by_session.status_code == 403
    assert by_token.status_code == 403
    assert by_token.json()["error"]["message"]
    _assert_nothing_recorded(link)


def test_an_unknown_or_someone_elses_link_is_not_found(client, researcher, outsider, published_7b):
    link = _link(researcher, published_7b)
    client.force_login(outsider)

    someone_elses = client.get(f"/dl/{link.id}", HTTP_ACCEPT="application/json")
    unknown = client.get("/dl/nope-not-a-link", HTTP_ACCEPT="application/json")

    assert someone_elses.status_code == unknown.status_code == 404
    assert someone_elses.json() == unknown.json()
    _assert_nothing_recorded(link)


def test_an_anonymous_browser_is_sent_to_sign_in(client, researcher, published_7b):
    link = _link(researcher, published_7b)

    page = client.get(f"/dl/{link.id}")
    api = client.get(f"/dl/{link.id}", HTTP_ACCEPT="application/json")

    assert page.status_code == 302
    assert page["Location"].startswith("/accounts/login/?next=/dl/")
    assert api.status_code == 403
    assert api.json()["error"]["code"] == "anonymous"
    _assert_nothing_recorded(link)


def test_a_token_with_the_download_scope_works_and_one_without_is_refused(
    client, researcher, published_7b, download_token
):
    from accounts.services import token_create

    _, generate_only = token_create(user=researcher, name="jobs", scopes=["generate"])
    link = _link(researcher, published_7b)

    refused = client.get(f"/dl/{link.id}", HTTP_AUTHORIZATION=f"Bearer {generate_only}")
    allowed = client.get(f"/dl/{link.id}", HTTP_AUTHORIZATION=f"Bearer {download_token}")

    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "token_scope"  # JSON without asking: a script
    assert allowed.status_code == 302
    assert DownloadEvent.objects.count() == 1


def test_s3_unreachable_answers_503_and_records_nothing(client, researcher, published_7b):
    from devtools.services import free_port

    link = _link(researcher, published_7b)
    client.force_login(researcher)
    with override_settings(S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"):
        storage.reset_client()
        try:
            response = client.get(f"/dl/{link.id}", HTTP_ACCEPT="application/json")
        finally:
            storage.reset_client()

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_unavailable"
    assert "Nothing was recorded" in response.json()["error"]["message"]
    _assert_nothing_recorded(link)


def test_a_file_missing_from_s3_answers_503_not_500(client, researcher, published_7b):
    link = _link(researcher, published_7b)
    WeightFile.objects.filter(pk=link.file.pk).update(s3_key="checkpoints/7b/gone")
    client.force_login(researcher)

    response = client.get(f"/dl/{link.id}", HTTP_ACCEPT="application/json")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "file_missing"
    _assert_nothing_recorded(link)


def test_signed_urls_and_tokens_never_reach_the_logs(
    client, researcher, published_7b, download_token, caplog
):
    link = _link(researcher, published_7b)
    caplog.set_level(logging.DEBUG)

    response = client.get(f"/dl/{link.id}", HTTP_AUTHORIZATION=f"Bearer {download_token}")
    client.get("/dl/unknown", HTTP_AUTHORIZATION=f"Bearer {download_token}")
    client.get("/dl/unknown", HTTP_AUTHORIZATION="Bearer llp_not-a-real-token-at-all")

    signature = urllib.parse.parse_qs(urllib.parse.urlsplit(response["Location"]).query)[
        "X-Amz-Signature"
    ][0]
    logged = "\n".join(
        f"{r.getMessage()} {r.args!r} {getattr(r, 'request', '')}" for r in caplog.records
    )
    assert caplog.records  # the 404s were logged
    for secret in (signature, "X-Amz-Signature", download_token, "llp_not-a-real-token"):
        assert secret not in logged
    event = DownloadEvent.objects.get()
    assert signature not in f"{event.user_agent} {event.ip}"


def test_a_store_that_answers_but_cannot_serve_reads_gets_503_and_records_nothing(
    client, researcher, published_7b, s3
):
    """A proxy in front of SeaweedFS answers HEAD (metadata) but fails every GET, as a store
    whose volume servers are down does: /dl/ must not send anyone there."""
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit

    upstream = urlsplit(s3.endpoint)

    class ReadsFail(BaseHTTPRequestHandler):
        def do_HEAD(self):  # forwarded as is: the signature covers the Host header we keep
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=10)
            conn.request("HEAD", self.path, headers=dict(self.headers))
            reply = conn.getresponse()
            self.send_response(reply.status)
            for name, value in reply.getheaders():
                self.send_header(name, value)
            self.end_headers()
            conn.close()

        def do_GET(self):
            body = b"<Error><Code>ServiceUnavailable</Code><Message>volume down</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), ReadsFail)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    link = _link(researcher, published_7b)
    client.force_login(researcher)
    try:
        with override_settings(S3_ENDPOINT_URL=f"http://127.0.0.1:{proxy.server_port}"):
            storage.reset_client()
            assert storage.object_head(link.file.s3_key)["ContentLength"] == link.file.size
            response = client.get(f"/dl/{link.id}", HTTP_ACCEPT="application/json")
    finally:
        storage.reset_client()
        proxy.shutdown()
        proxy.server_close()

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "storage_unavailable"
    _assert_nothing_recorded(link)


def test_a_revocation_reason_that_ends_with_a_period_is_not_doubled(
    client, researcher, published_7b, reviewer
):
    from accounts.models import Grant
    from accounts.services import grant_revoke

    link = _link(researcher, published_7b)
    grant = Grant.objects.get(user=researcher, variant=published_7b, status="active")
    grant_revoke(grant=grant, actor=reviewer, reason="Redistribution is what the license forbids.")
    client.force_login(researcher)
    body = client.get(f"/dl/{link.id}").content.decode()
    assert "was revoked: Redistribution is what the license forbids. You may apply" in body
    assert "forbids.." not in body
