"""Generation jobs from Python: `Client.generate`, `.stream`, `.submit`, `.jobs`, `.job`, `.cancel`.

    from portal_client import Client, QuotaExceeded
    client = Client("https://portal.example.org", "llp_...")   # token with the 'generate' scope
    print(client.generate("7B", "The capital of France is", max_new_tokens=16).text)
    for piece in client.stream("7B", "Once upon a time", max_new_tokens=64):
        print(piece, end="", flush=True)

Every refusal raises a `PortalClientError` subclass whose message says why and what to do.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from portal_client.client import PortalClientError
from portal_client.text import body_problem


class NoAccess(PortalClientError):
    """No live grant for this size (never approved, expired, revoked) or the account is
    not usable; the message says which and where to apply."""


class LicensePending(NoAccess):
    """A new version of the license took effect: accept it on the portal to continue."""


class AuthenticationFailed(PortalClientError):
    """The token is missing, mistyped, expired, revoked or lacks the 'generate' scope."""


class QuotaExceeded(PortalClientError):
    """Too many jobs at once, or the daily token quota is used up. `retry_after`: seconds."""

    def __init__(self, message: str, *, retry_after: int | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class BadParameters(PortalClientError):
    """A parameter is out of range, or the prompt does not fit the model's context.
    `param` names the parameter, `limit` the bound where there is one."""

    def __init__(self, message: str, *, param=None, limit=None, **kwargs):
        super().__init__(message, **kwargs)
        self.param = param
        self.limit = limit


class JobNotFound(PortalClientError):
    """No such job or model size on your account."""


class JobFailed(PortalClientError):
    """The job ran and failed; `job` holds its record."""

    def __init__(self, message: str, *, job: dict | None = None, **kwargs):
        super().__init__(message, **kwargs)
        self.job = job


class JobCancelled(JobFailed):
    """The job was cancelled (by you, or because access ended); `job` has any partial text."""


# What a job takes (the portal's POST /api/v1/jobs); anything else is a TypeError here, so a
# misspelt option (max_tokens for max_new_tokens) is not silently dropped.
JOB_PARAMETERS = frozenset(
    {"max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop", "logprobs", "top_logprobs",
     "echo", "n"}
)  # fmt: skip

logger = logging.getLogger("portal_client")

_TOKEN_CODES = {"token_invalid", "token_revoked", "token_expired", "token_scope", "anonymous"}


def _error_for(response: requests.Response) -> PortalClientError:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        error = {}
    message = error.get("message") or f"The portal answered HTTP {response.status_code}."
    code = error.get("code") or "error"
    status = response.status_code
    kwargs = {"code": code, "status": status}
    if status == 401 or code in _TOKEN_CODES:
        return AuthenticationFailed(message, **kwargs)
    if status == 403 and code == "license_pending":
        return LicensePending(message, **kwargs)
    if status == 403:
        return NoAccess(message, **kwargs)
    if status == 429:
        retry = response.headers.get("Retry-After", "")
        return QuotaExceeded(message, retry_after=int(retry) if retry.isdigit() else None, **kwargs)
    if status == 404:
        return JobNotFound(message, **kwargs)
    if status == 400:
        fields = error.get("fields")
        if fields and not error.get("param"):
            message = f"{message} {json.dumps(fields)}"
        return BadParameters(message, param=error.get("param"), limit=error.get("limit"), **kwargs)
    return PortalClientError(message, **kwargs)


class Piece(str):
    """Streamed text; `index` is the choice it belongs to (0 with one prompt and n=1)."""

    index: int

    def __new__(cls, text: str, index: int = 0) -> Piece:
        piece = super().__new__(cls, text)
        piece.index = index
        return piece


@dataclass
class Generation:
    """A finished job: `text` is the first choice's text, `texts` every choice's."""

    job: dict
    choices: list[dict] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.choices[0]["text"] if self.choices else ""

    @property
    def texts(self) -> list[str]:
        return [c["text"] for c in self.choices]

    @property
    def id(self) -> str:
        return self.job["id"]

    @property
    def usage(self) -> dict[str, int]:
        p, c = self.job["prompt_tokens"], self.job["completion_tokens"]
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _say_waiting(job_id: str, message: str | None) -> None:
    """Where a job that waits says why: a warning on the `portal_client` logger (shown on
    stderr, in a terminal or a notebook, unless logging is configured otherwise)."""
    if message:
        logger.warning("job %s %s", job_id, message)
    else:
        logger.warning("job %s: no longer waiting; it runs when its turn comes.", job_id)


def _lines_as_they_come(response: requests.Response) -> Iterator[str]:
    """The body's lines as soon as each arrives. `iter_lines` waits for a whole chunk (512
    bytes), which holds back a lone small event (a `waiting` notice, the last tokens)."""
    read1 = getattr(response.raw, "read1", None)  # urllib3 2
    if read1 is None:
        yield from response.iter_lines(chunk_size=1, decode_unicode=True)
        return
    buffer = b""
    while True:
        chunk = read1(65536)
        if not chunk:
            break
        *lines, buffer = (buffer + chunk).split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
    if buffer:
        yield buffer.decode("utf-8", errors="replace")


class JobsMixin:
    """Mixed into `portal_client.Client` (which provides url, token, timeout, _session).

    While `generate` or `stream` waits for a queued job that cannot start (the portal's job
    broker is unreachable, no worker serves the size), it says so through `on_waiting`
    (message, or None when the wait clears): by default a warning on the `portal_client`
    logger, e.g. "job ... queued: the job broker is unreachable; ...".
    """

    on_waiting: Callable[[str, str | None], None] = staticmethod(_say_waiting)

    def _waiting_teller(self, job: dict) -> Callable[[dict], None]:
        """Tells `on_waiting` why the job waits, now (from its record) and as that changes
        (from the stream's `waiting` events), once per change."""
        told: list[str | None] = [None]

        def tell(waiting: dict) -> None:
            reason = waiting.get("reason", waiting.get("waiting_reason"))
            if reason != told[0]:
                told[0] = reason
                self.on_waiting(job["id"], waiting.get("message", waiting.get("waiting_message")))

        tell(job)
        return tell

    def _jobs_request(self, method: str, path: str, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        headers.update(kwargs.pop("headers", {}))
        try:
            response = self._session().request(
                method,
                f"{self.url}/api/v1/{path}",
                headers=headers,
                timeout=kwargs.pop("timeout", self.timeout),
                **kwargs,
            )
        except requests.RequestException as exc:
            raise PortalClientError(
                f"Cannot reach the portal at {self.url}: {type(exc).__name__}.", code="unreachable"
            ) from None
        if response.status_code >= 400:
            raise _error_for(response)
        return response

    def models(self) -> list[dict]:
        """The sizes you may run now (slug, size, context_length)."""
        return self._jobs_request("GET", "models").json()

    def submit(self, model: str, prompt: str | list[str], **params: Any) -> dict:
        """Queue a job and return its record at once (state "queued").

        Parameters: max_new_tokens, temperature (0: greedy), top_p, top_k, seed, stop (a
        list of strings), logprobs (bool), top_logprobs (alternatives per token, with
        logprobs), echo (bool), n (choices per prompt). Any other raises TypeError.
        """
        unknown = sorted(set(params) - JOB_PARAMETERS)
        if unknown:
            raise TypeError(
                f"unexpected keyword argument(s) {', '.join(unknown)}; a job takes "
                f"{', '.join(sorted(JOB_PARAMETERS))}"
            )
        body: dict[str, Any] = {"model": model}
        if isinstance(prompt, str):
            body["prompt"] = prompt
        else:
            body["prompts"] = list(prompt)
        if isinstance(params.get("stop"), str):
            params["stop"] = [params["stop"]]
        body.update({k: v for k, v in params.items() if v is not None})
        problem = body_problem(body)
        if problem is not None:
            where, why = problem
            raise BadParameters(f"`{where}` {why}.", code="invalid_text", param=where)
        return self._jobs_request("POST", "jobs", json=body).json()

    def job(self, job_id: str) -> dict:
        return self._jobs_request("GET", f"jobs/{job_id}").json()

    def jobs(self, state: str | None = None, limit: int = 50) -> list[dict]:
        """Your jobs, newest first; `state` filters (queued, running, succeeded ...)."""
        query: dict[str, Any] = {"limit": limit}
        if state:
            query["state"] = state
        return self._jobs_request("GET", "jobs", params=query).json()

    def cancel(self, job_id: str) -> dict:
        """Cancel a queued job, or stop a running one within a token or two."""
        return self._jobs_request("POST", f"jobs/{job_id}/cancel").json()

    def events(self, job_id: str) -> Iterator[tuple]:
        """(event, data) pairs of a job's server-sent event stream, up to its `end`."""
        response = self._jobs_request(
            "GET",
            f"jobs/{job_id}/stream",
            headers={"Accept": "text/event-stream"},
            stream=True,
            timeout=(self.timeout, 120),
        )
        event, data = "message", []
        with response:
            for line in _lines_as_they_come(response):
                if line is None:
                    continue
                if line == "":
                    if data:
                        payload = json.loads("\n".join(data))
                        yield event, payload
                        if event in ("end", "error"):
                            return
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())

    def stream(self, model: str, prompt: str | list[str], **params: Any) -> Iterator[Piece]:
        """Submit a job and yield its text as it is generated: one prompt and n=1 give the
        text in order; with several prompts or choices the pieces of all of them come
        interleaved, each a `Piece` (a str) whose `.index` says which choice it extends
        (prompt i, choice k: index i * n + k). Raises JobFailed / JobCancelled at the end
        if the job did not succeed."""
        job = self.submit(model, prompt, **params)
        tell = self._waiting_teller(job)
        shown: dict[int, str] = {}
        for event, data in self.events(job["id"]):
            if event == "waiting":
                tell(data)
            elif event == "token" and data["text"]:
                index = data.get("index", 0)
                shown[index] = shown.get(index, "") + data["text"]
                yield Piece(data["text"], index)
            elif event == "reset":
                shown = {}  # rerun after a worker died: same seed, so the same text follows
            elif event == "end":
                self._raise_unless_succeeded(data)
                for output in data.get("outputs") or []:
                    index, text = output["index"], output["text"]
                    have = shown.get(index, "")
                    if text.startswith(have) and len(text) > len(have):
                        yield Piece(text[len(have) :], index)

    def generate(self, model: str, prompt: str | list[str], **params: Any) -> Generation:
        """Submit a job, wait for it, return its result (`.text`, `.texts`, `.usage`)."""
        job = self.submit(model, prompt, **params)
        tell = self._waiting_teller(job)
        final = None
        for event, data in self.events(job["id"]):
            if event == "waiting":
                tell(data)
            elif event == "end":
                final = data
        if final is None or "state" not in final:
            final = self.job(job["id"])
        self._raise_unless_succeeded(final)
        return Generation(job=final, choices=final["outputs"])

    @staticmethod
    def _raise_unless_succeeded(job: dict) -> None:
        state = job.get("state")
        if state == "succeeded":
            return
        message = job.get("error") or f"The job ended {state}."
        if state == "cancelled":
            raise JobCancelled(message, job=job, code="job_cancelled")
        raise JobFailed(message, job=job, code="job_failed")
