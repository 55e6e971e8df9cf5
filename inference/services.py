"""Every write of the jobs app: submission, cancellation, the worker's claims and results,
taking jobs back from dead workers, and the periodic sweep.

State changes follow `inference.models.TRANSITIONS`. A worker's claim is a conditional
UPDATE (`state=queued` -> `running`) whose row count is checked, and its result is written
by another conditional UPDATE that must match the claim id: a job delivered twice, or taken
back from a worker presumed dead that then wakes up, still ends with exactly one result.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from accounts.selectors import access_require
from catalog.models import ModelVariant
from catalog.selectors import variant_availability
from core import rows, workers
from core.errors import Conflict, InvalidInput, RateLimited, ServiceUnavailable
from inference import events
from inference.models import (
    ACTIVE_STATES,
    GenerationJob,
    JobEvent,
    JobSource,
    JobState,
    can_move,
)
from inference.tokens import TokenCount, prompt_token_counts, tokenizer_get

logger = logging.getLogger(__name__)

DAY = timedelta(hours=24)
MAX_STOP_SEQUENCES = 4
SEED_LIMIT = 2**63 - 1
MAX_TOP_LOGPROBS = 20  # as vLLM (OpenAI: 5)
# Scoring jobs (at most one new token per prompt, n 1) need no cache rows on the worker: they
# are forward passes of at most SCORE_TOKEN_BUDGET tokens each, batched across jobs. So they
# are bounded by tokens, not by sequences or jobs: one job holds at most this many prompts
# and this many full contexts of tokens, and a user's scoring jobs in flight at most
# SCORING_ACTIVE_CONTEXTS full contexts (256: what a harness sending 8 concurrent requests of
# 32 prompts needs, whatever their length).
MAX_SCORING_PROMPTS = 1024
SCORING_JOB_CONTEXTS = 64
SCORING_ACTIVE_CONTEXTS = 256


class InvalidTransition(Conflict):
    code = "invalid_transition"


# --- Parameters ---------------------------------------------------------------------------

PARAM_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 64,
    "temperature": 0.0,
    "top_p": 1.0,
    "top_k": 0,
    "seed": None,
    "stop": [],
    "logprobs": False,
    "top_logprobs": 0,
    "echo": False,
    "n": 1,
}

Prompt = str | list[int]


def is_scoring(params: dict[str, Any]) -> bool:
    """At most one new token per prompt, one choice: a cache-less forward pass on the worker,
    limited by its tokens rather than by sequences or jobs."""
    return params["max_new_tokens"] <= 1 and params["n"] == 1


def _bad(message: str, param: str) -> InvalidInput:
    return InvalidInput(message, code="invalid_parameter", extra={"param": param})


def params_normalize(params: dict[str, Any], *, prompts: list[Prompt]) -> dict[str, Any]:
    """Defaults filled in, every value checked against the portal's limits.

    A job always gets a concrete seed (a random one when none was given): a job that is
    run again after its worker died then produces the same text, so a stream that already
    showed part of it stays true.
    """
    unknown = set(params) - set(PARAM_DEFAULTS)
    if unknown:
        raise _bad(f"Unknown parameter(s): {', '.join(sorted(unknown))}.", sorted(unknown)[0])
    p = {**PARAM_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}
    p["logprobs"] = bool(p["logprobs"])
    p["echo"] = bool(p["echo"])
    max_new = p["max_new_tokens"]
    limit = settings.JOBS_MAX_NEW_TOKENS
    # 0 new tokens is "score the prompt": it only makes sense with the prompt echoed.
    least = 0 if p["echo"] else 1
    if not isinstance(max_new, int) or isinstance(max_new, bool) or not least <= max_new <= limit:
        extra = " (0, to score the prompt only, needs echo)" if max_new == 0 else ""
        raise _bad(
            f"max_new_tokens must be a whole number from 1 to {limit}{extra}.", "max_new_tokens"
        )
    top = p["top_logprobs"]
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise _bad(
            f"top_logprobs must be a whole number from 0 to {MAX_TOP_LOGPROBS}.", "top_logprobs"
        )
    if top and not p["logprobs"]:
        raise _bad("top_logprobs needs logprobs.", "top_logprobs")
    try:
        p["temperature"] = float(p["temperature"])
        p["top_p"] = float(p["top_p"])
    except (TypeError, ValueError):
        raise _bad("temperature and top_p must be numbers.", "temperature") from None
    if not 0 <= p["temperature"] <= 2:
        raise _bad("temperature must be between 0 and 2 (0: always the likeliest).", "temperature")
    if not 0 < p["top_p"] <= 1:
        raise _bad("top_p must be above 0 and at most 1.", "top_p")
    if not isinstance(p["top_k"], int) or p["top_k"] < 0:
        raise _bad("top_k must be a whole number, 0 for no limit.", "top_k")
    if p["seed"] is None:
        p["seed"] = secrets.randbelow(2**31)
    elif not isinstance(p["seed"], int) or isinstance(p["seed"], bool):
        raise _bad("seed must be a whole number.", "seed")
    elif not 0 <= p["seed"] <= SEED_LIMIT:
        raise _bad(f"seed must be between 0 and {SEED_LIMIT}.", "seed")
    stop = p["stop"]
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise _bad("stop must be a string or a list of non-empty strings.", "stop")
    if len(stop) > MAX_STOP_SEQUENCES or any(len(s) > 200 for s in stop):
        raise _bad(f"At most {MAX_STOP_SEQUENCES} stop sequences of 200 characters.", "stop")
    p["stop"] = stop
    n = p["n"]
    most = settings.JOBS_MAX_SEQUENCES
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise _bad("n must be a whole number, at least 1.", "n")
    if not prompts:
        raise _bad("Give at least one prompt.", "prompt")
    if is_scoring(p):
        if len(prompts) > MAX_SCORING_PROMPTS:
            raise _bad(
                f"{len(prompts)} prompts; one scoring job takes at most {MAX_SCORING_PROMPTS}.",
                "prompt",
            )
    elif len(prompts) * n > most:
        raise _bad(
            f"{len(prompts)} prompt(s) x n={n} is {len(prompts) * n} sequences; "
            f"one job runs at most {most}.",
            "n" if n > 1 else "prompt",
        )
    longest = settings.JOBS_MAX_PROMPT_CHARS
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, list):
            if not prompt or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt
            ):
                raise _bad(
                    "A token-id prompt must be a non-empty list of token ids (whole numbers "
                    "from 0).",
                    "prompt",
                )
            continue
        if not isinstance(prompt, str):
            raise _bad("Every prompt must be a string or a list of token ids.", "prompt")
        if len(prompt) > longest:
            raise _bad(
                f"Prompt {i + 1} has {len(prompt)} characters; the most is {longest}.", "prompt"
            )
    return p


def _check_context(variant: ModelVariant, prompts: list[Prompt], params: dict[str, Any]) -> int:
    """Prompt tokens of the whole job; 400 with the limit when one prompt cannot fit, or
    when a scoring job holds more tokens than JOBS_MAX_SEQUENCES full contexts."""
    limit = variant.context_length
    max_new = params["max_new_tokens"]
    texts = [p for p in prompts if isinstance(p, str)]
    text_counts = iter(prompt_token_counts(variant, texts) if texts else [])
    counts = [
        TokenCount(len(p), exact=True) if isinstance(p, list) else next(text_counts)
        for p in prompts
    ]
    id_prompts = [p for p in prompts if isinstance(p, list)]
    processor = tokenizer_get(variant) if id_prompts else None
    if processor is not None and max(max(p) for p in id_prompts) >= processor.vocab_size():
        raise _bad(
            f"Token ids must be below the vocabulary size, {processor.vocab_size()}.", "prompt"
        )
    for i, tc in enumerate(counts):
        total = tc.count + max_new
        if tc.exact and total > limit:
            room = limit - tc.count
            hint = (
                f"lower max_new_tokens to {room} or shorten the prompt"
                if room > 0
                else "shorten the prompt"
            )
            which = f"Prompt {i + 1}" if len(prompts) > 1 else "The prompt"
            raise InvalidInput(
                f"{which} has {tc.count} tokens; with max_new_tokens {max_new} that is "
                f"{total}, more than the {limit}-token context of {variant}: {hint}.",
                code="context_length_exceeded",
                extra={"param": "prompt", "limit": limit, "prompt_tokens": tc.count},
            )
    total = sum(tc.count for tc in counts)
    most = SCORING_JOB_CONTEXTS * limit
    if is_scoring(params) and total > most:
        raise InvalidInput(
            f"These prompts have {total} tokens; one scoring job takes at most {most} "
            f"({SCORING_JOB_CONTEXTS} contexts of {limit}). Send fewer prompts per request.",
            code="context_length_exceeded",
            extra={"param": "prompt", "limit": most, "prompt_tokens": total},
        )
    return total


# --- Quotas ---------------------------------------------------------------------------------


def _limit_totals(*, user_id, now: datetime) -> dict[str, int]:
    """The three counts the limits need, in one plain query over the user's active and recent
    jobs: `in_flight` (tokens held by active scoring jobs), `active` (other active jobs) and
    `used` (tokens charged in the last 24 hours). Every submission runs it: the same
    aggregate through the ORM took 2 ms to compile. `test_limit_totals.py` holds it to the
    ORM's answer."""
    if connection.vendor == "postgresql":
        new, n = "(j.params -> 'max_new_tokens')", "(j.params -> 'n')"
        scoring = f"{new} <= '1'::jsonb AND {n} = '1'::jsonb"
    else:
        new, n = "json_extract(j.params, '$.max_new_tokens')", "json_extract(j.params, '$.n')"
        scoring = f"{new} <= 1 AND {n} = 1"
    active = "j.state IN (%s, %s)"
    day = "(j.created_at > %s AND j.token_charge > 0)"
    sql = f"""
        SELECT
          SUM(CASE WHEN {active} AND {scoring} THEN j.token_charge END),
          COUNT(CASE WHEN {active} AND NOT ({scoring}) THEN 1 END),
          SUM(CASE WHEN {day} THEN j.token_charge END)
        FROM {GenerationJob._meta.db_table} j
        WHERE j.owner_id = %s AND ({active} OR {day})
    """  # noqa: S608 - the table name from the model; every value is a parameter
    states = [str(state) for state in ACTIVE_STATES]
    since = connection.ops.adapt_datetimefield_value(now - DAY)
    in_flight, count, used = rows.fetch(sql, [*states, *states, since, user_id, *states, since])[0]
    return {"in_flight": int(in_flight or 0), "active": int(count or 0), "used": int(used or 0)}


def _check_limits(
    *, user, need: int, now: datetime, scoring: bool = False, variant: ModelVariant | None = None
) -> None:
    most = settings.JOBS_MAX_ACTIVE_PER_USER
    totals = _limit_totals(user_id=user.pk, now=now)
    if scoring and variant is not None:
        # Scoring jobs are one forward pass each, batched with the others: what bounds them
        # is the tokens in flight, as many as the user's generation jobs could hold at once.
        in_flight = totals["in_flight"] or 0
        room = SCORING_ACTIVE_CONTEXTS * variant.context_length
        if in_flight + need > room:
            raise RateLimited(
                f"Your scoring requests in progress hold {in_flight} tokens; with this one's "
                f"{need} that is more than the {room} allowed at once. Wait for some to "
                "finish.",
                code="too_many_jobs",
                retry_after=1,
                extra={"limit": room},
            )
        active = 0
    else:
        active = totals["active"]
    if active >= most:
        raise RateLimited(
            f"You have {active} jobs queued or running, the most allowed at once. Wait for "
            "one to finish, or cancel one.",
            code="too_many_jobs",
            retry_after=5,
            extra={"limit": most},
        )
    quota = settings.JOBS_TOKENS_PER_DAY
    if need > quota:
        raise InvalidInput(
            f"This job may use up to {need} tokens (prompt plus every max_new_tokens), more "
            f"than your quota of {quota} tokens per 24 hours. Ask for fewer tokens.",
            code="quota_too_small",
            extra={"param": "max_new_tokens", "limit": quota},
        )
    used = totals["used"] or 0
    if used + need <= quota:
        return
    # The day's rows are read only to tell a refused job when.
    day_q = Q(created_at__gt=now - DAY, token_charge__gt=0)
    day = GenerationJob.objects.filter(owner=user).filter(day_q)
    rows = list(day.order_by("created_at").values_list("created_at", "token_charge"))
    freed, retry_after = 0, int(DAY.total_seconds())
    for created, charge in rows:
        freed += charge
        if used - freed + need <= quota:
            retry_after = max(1, math.ceil((created + DAY - now).total_seconds()))
            break
    raise RateLimited(
        f"This job may use up to {need} tokens; you have used {used} of your {quota} tokens "
        f"in the last 24 hours. Try again in {_human_seconds(retry_after)}, or ask for fewer "
        "tokens.",
        code="token_quota",
        retry_after=retry_after,
        extra={"limit": quota, "used": used},
    )


def quota_used(*, user, now: datetime | None = None) -> int:
    now = now or timezone.now()
    total = GenerationJob.objects.filter(owner=user, created_at__gt=now - DAY).aggregate(
        total=Sum("token_charge")
    )["total"]
    return int(total or 0)


def _human_seconds(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    if seconds < 7200:
        return f"{round(seconds / 60)} minutes"
    return f"{round(seconds / 3600)} hours"


# --- Submission and cancellation ------------------------------------------------------------


def _event(job: GenerationJob, from_state: str, to_state: str, message: str = "", worker=""):
    JobEvent.objects.create(
        job=job, from_state=from_state, to_state=to_state, message=message[:2000], worker=worker
    )


def _enqueue(job: GenerationJob) -> None:
    """Send the job's queue message once the transaction commits.

    The row says `message_sent` already (the caller writes it with the job, so a sent
    message costs no second write and commit); when the broker cannot be reached the send
    marks it unsent, the job stays queued and the sweep sends the message seconds after
    the broker answers again: submission does not fail because Redis is down. (A process
    killed between the commit and the send leaves a job marked sent without a message: the
    sweep resends those after JOBS_RESEND_SECONDS.)
    """
    job_id, queue = str(job.id), job.variant.queue_name

    def send() -> None:
        # The task module imports this one (its tasks call services): importing it here, at
        # send time, is what keeps the two from importing each other at load.
        from inference.tasks import run_generation

        try:
            run_generation.apply_async(
                args=[job_id],
                queue=queue,
                soft_time_limit=settings.JOBS_SOFT_TIME_LIMIT,
                time_limit=settings.JOBS_TIME_LIMIT,
                retry=True,
                retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5},
            )
        except Exception as exc:  # kombu's errors vary by transport; the sweep re-sends
            logger.warning("job %s stays queued; its message could not be sent: %s", job_id, exc)
            GenerationJob.objects.filter(pk=job_id).update(message_sent=False)
            job.message_sent = False  # the caller's copy answers the request that queued it

    transaction.on_commit(send)


def _lock_user(user_id) -> None:
    """Hold the user's row until the transaction ends (PostgreSQL; SQLite's IMMEDIATE
    transactions already serialize writers)."""
    if connection.features.has_select_for_update:
        table = get_user_model()._meta.db_table
        rows.fetch(f"SELECT 1 FROM {table} WHERE id = %s FOR UPDATE", [user_id])  # noqa: S608


def job_submit(
    *,
    user,
    variant: ModelVariant,
    prompts: list[Prompt],
    params: dict[str, Any],
    token=None,
    source: str = JobSource.API,
    external_user: str = "",
    require_worker: bool = False,
) -> GenerationJob:
    """Check access, parameters and the owner's limits; record the job; queue it on commit.

    `require_worker`: refuse (503) when no live worker serves the size or it has no files,
    instead of queueing a job that would wait (the synchronous OpenAI route). Queued jobs of
    a size nobody serves fail after JOBS_WORKER_WAIT_SECONDS (`jobs_sweep_stuck`)."""
    access_require(user=user, variant=variant, purpose="generate")
    p = params_normalize(params, prompts=prompts)
    prompt_tokens = _check_context(variant, prompts, p)
    if require_worker:
        availability = variant_availability(variant)
        if not availability.runnable:
            raise ServiceUnavailable(availability.run_note, code="model_not_served", retry_after=30)
    need = prompt_tokens + p["max_new_tokens"] * p["n"] * len(prompts)
    now = timezone.now()
    with transaction.atomic():
        # One submission per user at a time, so two parallel requests cannot both pass the
        # limits on the same count.
        _lock_user(user.pk)
        _check_limits(user=user, need=need, now=now, scoring=is_scoring(p), variant=variant)
        job = GenerationJob.objects.create(
            owner=user,
            variant=variant,
            token=token,
            source=source,
            external_user=(external_user or "")[:256],
            prompts=prompts,
            params=p,
            prompt_tokens=prompt_tokens,
            token_charge=need,
            created_at=now,
            queued_at=now,
            message_sent=True,  # unless the send after the commit fails (_enqueue)
        )
        _event(job, "", JobState.QUEUED, f"submitted via {source}")
        _enqueue(job)
    return job


def job_cancel(*, job: GenerationJob, reason: str = "Cancelled by its owner.") -> GenerationJob:
    """Cancel a queued job at once; ask the worker to stop a running one (it then ends as
    cancelled within a token or two, keeping the text generated so far)."""
    with transaction.atomic():
        job = GenerationJob.objects.select_for_update().get(pk=job.pk)
        if job.state == JobState.QUEUED:
            now = timezone.now()
            job.state = JobState.CANCELLED
            job.error = reason
            job.finished_at = now
            job.token_charge = 0
            job.save(update_fields=["state", "error", "finished_at", "token_charge"])
            _event(job, JobState.QUEUED, JobState.CANCELLED, reason)
            job_id = job.id
            transaction.on_commit(lambda: events.end_publish(job_id, JobState.CANCELLED, reason))
        elif job.state == JobState.RUNNING:
            if not job.cancel_requested:
                job.cancel_requested = True
                job.error = reason
                job.save(update_fields=["cancel_requested", "error"])
                job_id = job.id
                transaction.on_commit(lambda: events.cancel_publish(job_id))
        else:
            raise Conflict(
                f"This job has already {job.get_state_display().lower()}; nothing to cancel.",
                code="job_finished",
            )
    return job


def jobs_cancel_for_grant(*, grant) -> int:
    """The grant was revoked: cancel its owner's queued and running jobs for that size."""
    ids = list(
        GenerationJob.objects.filter(
            owner_id=grant.user_id, variant_id=grant.variant_id, state__in=ACTIVE_STATES
        ).values_list("pk", flat=True)
    )
    reason = "Cancelled: your access to this model size was revoked."
    for pk in ids:
        job = GenerationJob.objects.get(pk=pk)
        if job.is_active:
            job_cancel(job=job, reason=reason)
    return len(ids)


# --- Why a queued job waits ------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """Why a queued job is not running yet, when it is not simply its turn."""

    reason: str  # broker_unreachable | no_worker | no_files
    message: str


_AVAILABILITY_SECONDS = 2.0  # how long a status poll may reuse a size's availability
_availability_seen: dict[int, tuple[float, Any]] = {}


def _availability_recent(variant: ModelVariant):
    """The size's availability as seen at most _AVAILABILITY_SECONDS ago in this process:
    clients polling a queued job's status cost one Redis SCAN per size every 2 s, not one
    per request."""
    now = time.monotonic()
    seen = _availability_seen.get(variant.pk)
    if seen is None or now - seen[0] > _AVAILABILITY_SECONDS:
        seen = (now, variant_availability(variant))
        _availability_seen[variant.pk] = seen
    return seen[1]


def job_waiting(job: GenerationJob, *, availability=None) -> Waiting | None:
    """What the job status API and the clients say while a job is queued: the broker has
    not taken its message (Redis down: the sweep sends it seconds after Redis answers), or
    no live worker serves its size. None when it only waits its turn (or is not queued).
    `availability`: the size's `catalog.selectors.Availability`, when the caller has it."""
    if job.state != JobState.QUEUED:
        return None
    broker = (
        "queued: the job broker is unreachable; the portal sends the job as soon as it "
        "answers again."
    )
    if not job.message_sent:
        return Waiting("broker_unreachable", broker)
    availability = availability or _availability_recent(job.variant)
    size = availability.size
    if not availability.files:
        return Waiting(
            "no_files", f"queued: LLaMA {size} has no published files yet, so no worker can run it."
        )
    if availability.workers is None:
        return Waiting("broker_unreachable", broker)
    if availability.workers == 0:
        return Waiting(
            "no_worker",
            f"queued: waiting for a {size} worker; none serves queue {availability.queue} now. "
            f"The job fails if none starts within "
            f"{_human_seconds(settings.JOBS_WORKER_WAIT_SECONDS)} of its submission.",
        )
    return None


# --- The worker's side ----------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerIdentity:
    node: str  # the Celery node name
    host: str  # the machine (socket.gethostname())
    pid: int


def job_claim(*, job_id, worker: WorkerIdentity) -> GenerationJob | None:
    """Take a queued job for this worker process; None when another took it first, or when
    it is no longer queued. The conditional UPDATE is the claim."""
    now = timezone.now()
    claim_id = uuid.uuid4()
    with transaction.atomic():
        claimed = GenerationJob.objects.filter(
            pk=job_id, state=JobState.QUEUED, cancel_requested=False
        ).update(
            state=JobState.RUNNING,
            attempts=F("attempts") + 1,
            claim_id=claim_id,
            worker=worker.node,
            worker_host=worker.host,
            worker_pid=worker.pid,
            started_at=now,
            heartbeat_at=now,
            first_token_at=None,
        )
        if not claimed:
            return None
        job = GenerationJob.objects.select_related("variant", "owner").get(pk=job_id)
        _event(job, JobState.QUEUED, JobState.RUNNING, f"attempt {job.attempts}", worker.node)
    return job


def jobs_claim_queued(
    *, variant: ModelVariant, worker: WorkerIdentity, limit: int
) -> list[GenerationJob]:
    """Claim up to `limit` of the oldest queued jobs of this size (the batch joining)."""
    if limit <= 0:
        return []
    candidates = list(
        GenerationJob.objects.filter(variant=variant, state=JobState.QUEUED, cancel_requested=False)
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    claimed = []
    for pk in candidates:
        job = job_claim(job_id=pk, worker=worker)
        if job is not None:
            claimed.append(job)
    return claimed


def jobs_heartbeat(*, claims: dict[Any, uuid.UUID]) -> set:
    """Refresh the heartbeat of the jobs this worker runs; returns the ids whose owner asked
    to cancel (the database fallback of the Redis broadcast)."""
    if not claims:
        return set()
    now = timezone.now()
    rows = GenerationJob.objects.filter(pk__in=list(claims), state=JobState.RUNNING)
    rows.update(heartbeat_at=now)
    return {
        pk
        for pk, claim_id, cancel in rows.values_list("pk", "claim_id", "cancel_requested")
        if cancel and claims.get(pk) == claim_id
    }


def job_finish(
    *,
    job: GenerationJob,
    state: str,
    outputs: list[dict] | None = None,
    completion_tokens: int = 0,
    prompt_tokens: int | None = None,
    error: str = "",
    first_token_at: datetime | None = None,
    decode_seconds: float | None = None,
    worker: str = "",
) -> bool:
    """Record a running job's end. Only the claim that ran it may: a worker whose job was
    taken back (it was presumed dead) finds its result refused and drops it (False)."""
    if not can_move(JobState.RUNNING, state) or state == JobState.QUEUED:
        raise InvalidTransition(f"A running job cannot end as {state}.")
    now = timezone.now()
    prompt_tokens = job.prompt_tokens if prompt_tokens is None else prompt_tokens
    started = job.started_at or now
    rate = None
    if decode_seconds and completion_tokens:
        rate = completion_tokens / decode_seconds
    with transaction.atomic():
        updated = GenerationJob.objects.filter(
            pk=job.pk, state=JobState.RUNNING, claim_id=job.claim_id
        ).update(
            state=state,
            outputs=outputs or [],
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            token_charge=prompt_tokens + completion_tokens,
            error=error[:5000],
            finished_at=now,
            first_token_at=first_token_at,
            queue_wait=(started - job.created_at).total_seconds(),
            time_to_first_token=(
                (first_token_at - job.created_at).total_seconds() if first_token_at else None
            ),
            decode_tokens_per_second=rate,
        )
        if updated:
            _event(job, JobState.RUNNING, state, error, worker)
    return bool(updated)


def job_take_back(
    *, job_id, claim_id, reason: str, requeue: bool = True, max_attempts: int | None = None
) -> str | None:
    """A running job whose worker died: queue it again, or fail it after too many attempts.

    Returns the new state, or None when the job was not held by `claim_id` any more.
    With `requeue=False` no new message is sent (the caller claims it right away).
    """
    max_attempts = max_attempts or settings.JOBS_MAX_ATTEMPTS
    now = timezone.now()
    with transaction.atomic():
        job = (
            GenerationJob.objects.select_for_update()
            .select_related("variant")
            .filter(pk=job_id, state=JobState.RUNNING, claim_id=claim_id)
            .first()
        )
        if job is None:
            return None
        if job.cancel_requested:
            to_state, message = JobState.CANCELLED, job.error or "Cancelled by its owner."
        elif job.attempts >= max_attempts:
            to_state = JobState.FAILED
            message = (
                f"The worker running this job stopped {job.attempts} time(s) ({reason}), so "
                "it was not tried again. A job that runs the worker out of memory does this: "
                "try a shorter prompt, fewer new tokens or a smaller n."
            )
        else:
            to_state, message = JobState.QUEUED, f"taken back: {reason}"
        job.state = to_state
        job.claim_id = None
        job.heartbeat_at = None
        fields = ["state", "claim_id", "heartbeat_at"]
        if to_state == JobState.QUEUED:
            job.queued_at = now
            job.outputs = []
            # Without a new message, the sweep sends one if no worker claims it meanwhile.
            job.message_sent = requeue
            fields += ["queued_at", "outputs", "message_sent"]
        else:
            job.error = message
            job.finished_at = now
            job.token_charge = job.prompt_tokens
            fields += ["error", "finished_at", "token_charge"]
        job.save(update_fields=fields)
        _event(job, JobState.RUNNING, to_state, message)
        if to_state == JobState.QUEUED:
            job_pk = job.pk
            transaction.on_commit(lambda: events.reset_publish(job_pk))
            if requeue:
                _enqueue(job)
        else:
            job_pk, final = job.pk, to_state
            transaction.on_commit(lambda: events.end_publish(job_pk, final, message))
    return to_state


def jobs_take_back_batch(*, job: GenerationJob, reason: str, requeue: bool = False) -> dict:
    """Every job the process that ran `job` still holds (its whole batch: same host and
    pid) goes back to the queue in one transaction, so the next worker claims them together
    into one batch instead of one at a time as their messages come. Returns {job id: new
    state} of the jobs taken back (a job over JOBS_MAX_ATTEMPTS fails instead).

    `requeue=False`: no new messages (the calling worker claims them at once; the sweep
    sends any it leaves queued)."""
    held = GenerationJob.objects.filter(state=JobState.RUNNING)
    if job.worker_pid:
        held = held.filter(worker_host=job.worker_host, worker_pid=job.worker_pid)
    else:
        held = held.filter(pk=job.pk)
    states = {}
    with transaction.atomic():
        for pk, claim_id in held.order_by("created_at").values_list("pk", "claim_id"):
            state = job_take_back(job_id=pk, claim_id=claim_id, reason=reason, requeue=requeue)
            if state is not None:
                states[pk] = state
    return states


def holder_gone(job: GenerationJob) -> bool:
    """Is the process that claimed this running job known to be gone: it ran on this host
    and its pid no longer exists? (Elsewhere only a stale heartbeat can tell.)"""
    if not job.worker_pid or job.worker_host != socket.gethostname():
        return False
    try:
        os.kill(job.worker_pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    return False


def _dead_holders(now: datetime) -> list[GenerationJob]:
    """One running job per process presumed dead: its heartbeat stopped for
    JOBS_STALE_SECONDS; or for a few heartbeats when its process is known gone (same host,
    no such pid) or no live worker consumes its size's queue any more (core.workers)."""
    quiet = now - timedelta(seconds=max(3 * settings.JOBS_HEARTBEAT_SECONDS, 3))
    stale = now - timedelta(seconds=settings.JOBS_STALE_SECONDS)
    found: dict[tuple, GenerationJob] = {}
    consumers: dict[str, int | None] = {}
    running = (
        GenerationJob.objects.filter(state=JobState.RUNNING, heartbeat_at__lt=quiet)
        .select_related("variant")
        .order_by("created_at")
    )
    for job in running:
        holder = (job.worker_host, job.worker_pid) if job.worker_pid else ("", job.pk)
        if holder in found:
            continue
        queue = job.variant.queue_name
        if queue not in consumers:
            consumers[queue] = workers.consumers(queue)
        if (job.heartbeat_at < stale) or holder_gone(job) or consumers[queue] == 0:
            found[holder] = job
    return list(found.values())


@dataclass
class SweepResult:
    requeued: int = 0
    failed: int = 0
    resent: int = 0
    expired: int = 0


def jobs_sweep_stuck(*, now: datetime | None = None) -> SweepResult:
    """The periodic sweep: running jobs whose heartbeat stopped go back to the queue (or
    fail after too many attempts); queued jobs waiting long get their message sent again
    (Redis may have lost it; a duplicate is harmless); jobs nobody ran for hours fail."""
    now = now or timezone.now()
    result = SweepResult()
    for job in _dead_holders(now):
        # The whole batch at once: its jobs are queued together, so one worker claims them
        # together (its first message's job, then the others from the database).
        states = jobs_take_back_batch(job=job, reason="its worker stopped answering", requeue=True)
        for state in states.values():
            if state == JobState.QUEUED:
                result.requeued += 1
            else:
                result.failed += 1
    expire_before = now - timedelta(seconds=settings.JOBS_QUEUED_EXPIRE_SECONDS)
    for job in GenerationJob.objects.filter(
        state=JobState.QUEUED, created_at__lt=expire_before
    ).select_related("variant"):
        message = (
            f"No worker serving {job.variant} took this job in "
            f"{_human_seconds(int((now - job.created_at).total_seconds()))}. Submit it again "
            "later; the portal's operators have been told by their monitoring."
        )
        with transaction.atomic():
            if GenerationJob.objects.filter(pk=job.pk, state=JobState.QUEUED).update(
                state=JobState.FAILED, error=message, finished_at=now, token_charge=0
            ):
                _event(job, JobState.QUEUED, JobState.FAILED, message)
                result.expired += 1
    # A size no live worker serves: its queued jobs fail with that reason after a while,
    # instead of waiting hours (unknown, when the broker does not answer, is not "none").
    waited_before = now - timedelta(seconds=settings.JOBS_WORKER_WAIT_SECONDS)
    waiting = GenerationJob.objects.filter(state=JobState.QUEUED, created_at__lt=waited_before)
    for variant_id in set(waiting.values_list("variant_id", flat=True)):
        variant = ModelVariant.objects.get(pk=variant_id)
        availability = variant_availability(variant)
        if availability.runnable or availability.workers is None:
            continue
        message = (
            f"{availability.run_note} This job waited "
            f"{_human_seconds(settings.JOBS_WORKER_WAIT_SECONDS)} and was not run; submit it "
            "again once the size is served (the model page says when)."
        )
        for job in waiting.filter(variant_id=variant_id):
            with transaction.atomic():
                if GenerationJob.objects.filter(pk=job.pk, state=JobState.QUEUED).update(
                    state=JobState.FAILED, error=message, finished_at=now, token_charge=0
                ):
                    _event(job, JobState.QUEUED, JobState.FAILED, message)
                    result.expired += 1
    # Messages the broker never took (it was down) go out at the next sweep, seconds after
    # it answers again; messages it took but may have lost, after JOBS_RESEND_SECONDS.
    resend_before = now - timedelta(seconds=settings.JOBS_RESEND_SECONDS)
    unsent_before = now - timedelta(seconds=2)  # past the on-commit send of a new job
    for job in GenerationJob.objects.filter(
        Q(message_sent=False, queued_at__lt=unsent_before) | Q(queued_at__lt=resend_before),
        state=JobState.QUEUED,
    ).select_related("variant"):
        with transaction.atomic():
            if GenerationJob.objects.filter(
                pk=job.pk, state=JobState.QUEUED, queued_at=job.queued_at
            ).update(queued_at=now, message_sent=True):
                _enqueue(job)
                result.resent += 1
    if result.requeued or result.failed or result.resent or result.expired:
        logger.info("job sweep: %s", result)
    return result
