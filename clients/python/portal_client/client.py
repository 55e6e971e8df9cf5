"""`Client(url, token)`: talks to the portal's API and downloads model files."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import requests

from portal_client import transfer

USER_AGENT = "portal-client/0.1"
# Refusals of a link (not of the person): fresh links fix them.
STALE_LINK_CODES = {"link_expired", "link_used_up", "link_revoked", "unknown_link"}


def default_workers() -> int:
    """Parallel ranged requests per file: one per core, between 2 and 4 (on 2 cores, 4 streams
    measured no faster than 2: the network threads and the SHA-256 already fill them)."""
    return max(2, min(4, os.cpu_count() or 2))


class PortalClientError(Exception):
    """Something the person must act on; the message says what."""

    def __init__(self, message: str, *, code: str = "error", status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status


@dataclass
class DownloadReport:
    directory: Path
    downloaded: list = field(default_factory=list)  # paths fetched (wholly or resumed)
    already_present: list = field(default_factory=list)  # verified and kept
    bytes_fetched: int = 0  # bytes received from S3 in this run


# Generation jobs (generate, stream, jobs, cancel) live in jobs.py; imported here, after
# PortalClientError exists, because jobs.py builds its exceptions on it.
from portal_client.jobs import JobsMixin  # noqa: E402
from portal_client.scoring import ScoringMixin  # noqa: E402


class Client(JobsMixin, ScoringMixin):
    def __init__(
        self,
        url: str,
        token: str,
        *,
        workers: int | None = None,
        chunk_size: int = transfer.CHUNK,
        retries: int | None = None,
        retry_seconds: float = 300.0,
        timeout: float = 30.0,
        progress: bool = True,
    ):
        if not token:
            raise PortalClientError(
                "An access token is required: create one with the 'download' scope on the "
                "portal's token page and pass it (or set PORTAL_TOKEN).",
                code="no_token",
            )
        self.url = url.rstrip("/")
        for suffix in ("/api/v1", "/v1"):
            if self.url.endswith(suffix):
                raise PortalClientError(
                    f"Give the portal's own address, without {suffix}: "
                    f"Client({self.url.removesuffix(suffix)!r}, ...). The client adds the API "
                    f"paths itself ({suffix} is where the OpenAI client's base_url points).",
                    code="bad_url",
                )
        self.token = token
        self.workers = max(1, workers or default_workers())
        self.chunk_size = chunk_size
        # While the portal or the file store is unreachable, keep trying with backoff for
        # `retry_seconds` (and at most `retries` times, when given); never sleep after the
        # last try.
        self.retries = retries
        self.retry_seconds = retry_seconds
        self.timeout = timeout
        self.progress = progress
        self._local = threading.local()

    # --- HTTP ------------------------------------------------------------------------------

    def _session(self) -> requests.Session:
        # One session per thread: requests sessions are not thread-safe.
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            self._local.session = session
        return session

    def _portal_get(self, url: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        budget = transfer.RetryBudget(seconds=self.retry_seconds, tries=self.retries)
        while True:
            try:
                response = self._session().get(url, headers=headers, timeout=self.timeout, **kwargs)
            except requests.RequestException as exc:
                if not budget.wait():
                    raise PortalClientError(
                        f"Cannot reach the portal at {self.url} ({type(exc).__name__}); gave up "
                        f"after retrying for {budget.elapsed:.0f} s.",
                        code="unreachable",
                    ) from None
                continue
            if response.status_code not in (429, 502, 503, 504):
                return response
            retry_after = response.headers.get("Retry-After", "")
            if not budget.wait(at_least=float(retry_after) if retry_after.isdigit() else 0):
                return response

    @staticmethod
    def _refusal(response: requests.Response) -> PortalClientError:
        try:
            error = response.json()["error"]
            message, code = error.get("message") or "", error.get("code") or "error"
        except (ValueError, KeyError, TypeError):
            message, code = "", "error"
        return PortalClientError(
            message or f"The portal answered HTTP {response.status_code}.",
            code=code,
            status=response.status_code,
        )

    # --- API ---------------------------------------------------------------------------------

    def links(self, size: str) -> dict:
        """The files of a model size with their sizes, checksums and personal links."""
        response = self._portal_get(f"{self.url}/api/v1/models/{size.lower()}/links")
        if response.status_code != 200:
            raise self._refusal(response)
        return response.json()

    def resolve(self, link: str) -> str:
        """Use a `/dl/` link: the portal checks access and answers with a signed S3 URL."""
        response = self._portal_get(link, allow_redirects=False)
        if response.status_code in (301, 302, 303, 307, 308) and response.headers.get("Location"):
            return response.headers["Location"]
        raise self._refusal(response)

    # --- Downloads ---------------------------------------------------------------------------

    def download(
        self,
        size: str,
        directory,
        *,
        on_receive: Callable[[int], None] | None = None,
    ) -> DownloadReport:
        """Download every file of `size` into `directory`, verified; resumes a previous try."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        listing = self.links(size)
        files = listing["files"]
        report = DownloadReport(directory=directory)

        todo = []
        for item in files:
            dest = directory / item["path"]
            if transfer.is_complete(dest, size=item["size"], sha256=item["sha256"]):
                report.already_present.append(item["path"])
            else:
                todo.append(item)
        self._check_free_space(directory, todo)

        links = {item["path"]: item["url"] for item in files}
        lock = threading.Lock()

        def fresh_url(path: str) -> str:
            with lock:
                try:
                    return self.resolve(links[path])
                except PortalClientError as exc:
                    if exc.code not in STALE_LINK_CODES:
                        raise
                # The link expired or is used up: ask for fresh links, once.
                links.update({i["path"]: i["url"] for i in self.links(size)["files"]})
                return self.resolve(links[path])

        for item in todo:
            fetched = transfer.download_file(
                dest=directory / item["path"],
                size=item["size"],
                sha256=item["sha256"],
                fresh_url=lambda path=item["path"]: fresh_url(path),
                session_factory=self._session,
                workers=self.workers,
                chunk_size=self.chunk_size,
                retries=self.retries,
                retry_seconds=self.retry_seconds,
                timeout=self.timeout,
                progress=self.progress,
                on_receive=on_receive,
                error_class=PortalClientError,
            )
            report.downloaded.append(item["path"])
            report.bytes_fetched += fetched
        (directory / "checklist.chk").write_text(
            "".join(f"{item['md5']}  {item['path']}\n" for item in files)
        )
        return report

    @staticmethod
    def _check_free_space(directory: Path, todo: list) -> None:
        needed = sum(
            item["size"] - transfer.bytes_present(directory / item["path"], item["size"])
            for item in todo
        )
        free = shutil.disk_usage(directory).free
        if needed > free:
            raise PortalClientError(
                f"Not enough free space in {directory}: the download needs "
                f"{transfer.human(needed)} more, {transfer.human(free)} is free.",
                code="no_space",
            )
