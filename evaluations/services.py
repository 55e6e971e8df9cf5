"""Every write of the evaluations app: uploading a task, starting, advancing, cancelling and
resuming an evaluation, and scoring items in-process for the command line.

An evaluation runs as scoring jobs through the jobs service (`inference.services.job_submit`:
token-id prompts, `max_new_tokens` 0, echo with log-probabilities), the same path as the
OpenAI-compatible API's evaluation requests: prefill only, batched on the workers, counted
against the owner's limits. `evaluation_advance` is the one loop: collect the chunks whose
jobs ended (each item's scores written once, see `models`), submit more chunks of items not
scored yet, finish when every item is scored. The sweep runs it every EVAL_SWEEP_SECONDS;
a worker that dies mid-chunk costs nothing here (the jobs service runs the job again), and
a resume submits only the items still unscored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tomllib
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.selectors import access_check, access_require, variants_accessible
from catalog.models import ModelVariant
from catalog.selectors import variant_manifest
from core.errors import (
    Conflict,
    InvalidInput,
    PermissionDenied,
    PortalError,
    RateLimited,
    ServiceUnavailable,
)
from evaluations import scoring
from evaluations.formats import task_file_parse
from evaluations.models import (
    Evaluation,
    EvaluationChunk,
    EvaluationItem,
    EvaluationState,
    EvaluationTask,
    ScoredBy,
    can_move,
)
from inference.models import TERMINAL_STATES, GenerationJob, JobSource, JobState
from inference.selectors import precision_for
from inference.services import job_cancel, job_submit
from inference.tokens import tokenizer_get

logger = logging.getLogger(__name__)

SCORING_PARAMS = {
    "max_new_tokens": 0,
    "echo": True,
    "logprobs": True,
    "temperature": 0.0,
    "seed": 0,
}
MAX_CHUNK_PROMPTS = 256


class InvalidTransition(Conflict):
    code = "invalid_transition"


# --- Tasks ---------------------------------------------------------------------------------


def task_upload(
    *,
    user,
    name: str,
    kind: str,
    data: bytes | str,
    description: str = "",
    shared: bool = False,
) -> EvaluationTask:
    """Check the uploader, their quota and every line of the file; store the task."""
    if not user.is_staff:
        if not variants_accessible(user=user, purpose="generate"):
            raise PermissionDenied(
                "Uploading evaluation tasks needs a grant to run at least one size (or a "
                "staff account). Apply for access on /access/apply/.",
                code="no_grant",
            )
        if shared:
            raise PermissionDenied("Only staff may share a task with everyone.", code="not_staff")
        used = EvaluationTask.objects.filter(owner=user).count()
        if used >= settings.EVAL_TASKS_PER_USER:
            raise Conflict(
                f"You have {used} tasks, the most allowed per researcher "
                f"({settings.EVAL_TASKS_PER_USER}). Delete one to upload another.",
                code="task_quota",
                extra={"limit": settings.EVAL_TASKS_PER_USER},
            )
    name = (name or "").strip()
    if not 1 <= len(name) <= 100:
        raise InvalidInput("Give the task a name of 1 to 100 characters.", extra={"param": "name"})
    items = task_file_parse(
        data,
        kind=kind,
        max_items=settings.EVAL_TASK_MAX_ITEMS,
        max_bytes=settings.EVAL_TASK_MAX_BYTES,
    )
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    return EvaluationTask.objects.create(
        name=name,
        kind=kind,
        description=(description or "").strip()[:2000],
        owner=user,
        shared=bool(shared),
        content=raw.decode("utf-8"),
        sha256=hashlib.sha256(raw).hexdigest(),
        items=items,
        item_count=len(items),
    )


def task_delete(*, task: EvaluationTask, user) -> None:
    """Delete a task and its evaluations (their outstanding jobs are cancelled first)."""
    if task.owner_id != user.pk and not user.is_staff:
        raise PermissionDenied("Only the task's owner or staff may delete it.", code="not_owner")
    for evaluation in task.evaluations.filter(state=EvaluationState.RUNNING):
        evaluation_cancel(evaluation=evaluation, reason="Its task was deleted.")
    task.delete()  # its evaluations, their items and chunks go with it (CASCADE)


# --- Starting ------------------------------------------------------------------------------


def engine_version(variant: ModelVariant) -> str:
    """The portal release and the engine settings the workers run `variant` with."""
    try:
        with open(Path(settings.BASE_DIR) / "pyproject.toml", "rb") as handle:
            version = tomllib.load(handle)["project"]["version"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        version = "unknown"
    dtype, quantize = precision_for(variant.slug)
    weights = f", {quantize} weights" if quantize else ""
    return (
        f"llama-research-portal {version}, inference.llama; dtype {dtype}{weights}, "
        f"device {settings.JOBS_DEVICE}"
    )


def _encoder(variant: ModelVariant):
    processor = tokenizer_get(variant)
    if processor is None:
        raise ServiceUnavailable(
            f"The tokenizer of {variant} cannot be read now (its files are not published, or "
            "storage does not answer). Try again in a minute.",
            code="tokenizer_unavailable",
            retry_after=30,
        )
    return (lambda text: list(processor.encode(text))), processor.bos_id()


def _requests(task: EvaluationTask, variant: ModelVariant, indexes) -> dict[int, list]:
    encode, bos = _encoder(variant)
    return {
        i: scoring.item_requests(task.kind, task.items[i], encode=encode, bos=bos) for i in indexes
    }


def evaluation_start(
    *,
    user,
    task: EvaluationTask,
    variant: ModelVariant,
    scored_by: str = ScoredBy.WORKER,
    check_access: bool = True,
) -> Evaluation:
    """Check access, the owner's limit and that every item fits the size's context; record
    the evaluation with its provenance and send its first chunks once it commits.

    `check_access=False` only for the operator's command line scoring in-process (it reads
    the published files itself; no job runs on anyone's account)."""
    if check_access or scored_by == ScoredBy.WORKER:
        access_require(user=user, variant=variant, purpose="generate")
    active = Evaluation.objects.filter(owner=user, state=EvaluationState.RUNNING).count()
    if scored_by == ScoredBy.WORKER and active >= settings.EVAL_ACTIVE_PER_USER:
        raise RateLimited(
            f"You have {active} evaluations running, the most at once. Wait for one to "
            "finish, or cancel one.",
            code="too_many_evaluations",
            retry_after=30,
            extra={"limit": settings.EVAL_ACTIVE_PER_USER},
        )
    requests = _requests(task, variant, range(task.item_count))
    limit = variant.context_length
    for i, parts in requests.items():
        longest = max(len(ids) for ids, _ in parts)
        if longest > limit:
            raise InvalidInput(
                f"Line {task.items[i]['line']} of the task has {longest} tokens, more than the "
                f"{limit}-token context of {variant}. Shorten or remove it.",
                code="context_length_exceeded",
                extra={"line": task.items[i]["line"], "limit": limit},
            )
    manifest = variant_manifest(variant)
    if not manifest["files"]:
        raise ServiceUnavailable(
            f"{variant} has no published files yet, so it cannot be evaluated.",
            code="model_not_published",
            retry_after=60,
        )
    now = timezone.now()
    evaluation = Evaluation.objects.create(
        task=task,
        variant=variant,
        owner=user,
        state=EvaluationState.RUNNING,
        scored_by=scored_by,
        params={
            "scoring": "echoed prompt log-probabilities (max_new_tokens 0), BOS first",
            "multiple_choice_delimiter": " ",
            "acc_norm": "log-likelihood / characters of the continuation",
            "chunk_prompts": MAX_CHUNK_PROMPTS,
        },
        items_total=task.item_count,
        task_sha256=task.sha256,
        checkpoint_manifest=manifest,
        engine_version=engine_version(variant),
        created_at=now,
        started_at=now,
    )
    if scored_by == ScoredBy.WORKER:
        _advance_on_commit(evaluation)
    return evaluation


def _advance_on_commit(evaluation: Evaluation) -> None:
    evaluation_id = str(evaluation.pk)

    def send() -> None:
        from evaluations.tasks import evaluation_advance_task  # tasks import this module

        try:
            evaluation_advance_task.apply_async(args=[evaluation_id], queue="default")
        except Exception as exc:  # kombu's errors vary; the sweep advances it anyway
            logger.warning(
                "evaluation %s: advance not sent (%s); the sweep will", evaluation_id, exc
            )

    transaction.on_commit(send)


# --- Advancing -----------------------------------------------------------------------------


def _collect(evaluation: Evaluation, chunk: EvaluationChunk, job: GenerationJob) -> int:
    """Write the scores of a finished chunk's items; how many were new."""
    added = 0
    if job.state == JobState.SUCCEEDED:
        by_prompt = {o.get("prompt_index", o.get("index")): o for o in job.outputs}
        parts: dict[int, list] = {}
        for prompt_index, (item_index, _part, context_len) in enumerate(chunk.layout):
            output = by_prompt.get(prompt_index) or {}
            logprobs = output.get("prompt_logprobs")
            if logprobs is None:
                raise ValueError(f"job {job.pk}: prompt {prompt_index} has no log-probabilities")
            parts.setdefault(item_index, []).append((logprobs, context_len))
        task = evaluation.task
        rows = [
            EvaluationItem(
                evaluation=evaluation,
                index=i,
                scores=scoring.item_scores(task.kind, task.items[i], parts[i]),
                job_id=job.pk,
            )
            for i in sorted(parts)
        ]
        before = EvaluationItem.objects.filter(evaluation=evaluation).count()
        # The unique (evaluation, index) constraint is what makes a second result for an
        # item a no-op: whichever job's result landed first stays.
        EvaluationItem.objects.bulk_create(rows, ignore_conflicts=True)
        added = EvaluationItem.objects.filter(evaluation=evaluation).count() - before
        if job.worker:
            workers = set(evaluation.params.get("workers", []))
            workers.add(job.worker)
            evaluation.params["workers"] = sorted(workers)
    elif job.state == JobState.FAILED:
        failures = evaluation.params.get("failed_jobs", 0) + 1
        evaluation.params["failed_jobs"] = failures
        evaluation.params["last_job_error"] = job.error[:500]
    chunk.collected = True
    chunk.save(update_fields=["collected"])
    return added


def _refresh_counts(evaluation: Evaluation) -> None:
    """Progress, and the summary when items were added (it reads every item's scores)."""
    done = EvaluationItem.objects.filter(evaluation=evaluation).count()
    if done == evaluation.items_done and evaluation.results:
        return
    scores = list(
        EvaluationItem.objects.filter(evaluation=evaluation)
        .order_by("index")
        .values_list("scores", flat=True)
    )
    evaluation.items_done = len(scores)
    evaluation.results = scoring.summarize(evaluation.task.kind, scores)


def _finish(evaluation: Evaluation, state: str, *, error: str = "") -> None:
    if not can_move(evaluation.state, state):
        raise InvalidTransition(f"An evaluation that is {evaluation.state} cannot become {state}.")
    evaluation.state = state
    evaluation.error = error[:5000]
    evaluation.note = ""
    evaluation.finished_at = timezone.now()


def _chunks_to_submit(evaluation: Evaluation, pending: list[int]) -> list[list[int]]:
    """Unscored items cut into chunks that one scoring job takes: at most MAX_CHUNK_PROMPTS
    sequences and EVAL_CHUNK_CONTEXTS full contexts of tokens."""
    budget = settings.EVAL_CHUNK_CONTEXTS * evaluation.variant.context_length
    chunks, current, prompts, tokens = [], [], 0, 0
    requests = _requests(evaluation.task, evaluation.variant, pending)
    for i in pending:
        n = len(requests[i])
        t = sum(len(ids) for ids, _ in requests[i])
        if current and (prompts + n > MAX_CHUNK_PROMPTS or tokens + t > budget):
            chunks.append(current)
            current, prompts, tokens = [], 0, 0
        current.append(i)
        prompts += n
        tokens += t
    if current:
        chunks.append(current)
    return chunks


def _submit(evaluation: Evaluation, indexes: list[int]) -> EvaluationChunk:
    requests = _requests(evaluation.task, evaluation.variant, indexes)
    prompts, layout = [], []
    for i in indexes:
        for part, (ids, context_len) in enumerate(requests[i]):
            prompts.append(ids)
            layout.append([i, part, context_len])
    job = job_submit(
        user=evaluation.owner,
        variant=evaluation.variant,
        prompts=prompts,
        params=dict(SCORING_PARAMS),
        source=JobSource.API,
        external_user=f"evaluation:{evaluation.pk}",
    )
    return EvaluationChunk.objects.create(
        evaluation=evaluation, job=job, item_indexes=indexes, layout=layout
    )


def evaluation_advance(*, evaluation_id) -> Evaluation | None:
    """Collect finished chunks, send more, finish when all items are scored. Idempotent;
    safe to run from several processes at once (the evaluation row is locked)."""
    with transaction.atomic():
        evaluation = (
            Evaluation.objects.select_for_update(of=("self",))
            .select_related("task", "variant", "owner")
            .filter(pk=evaluation_id)
            .first()
        )
        if evaluation is None:
            return None
        outstanding = list(
            EvaluationChunk.objects.filter(evaluation=evaluation, collected=False).select_related(
                "job"
            )
        )
        for chunk in outstanding:
            if chunk.job.state in TERMINAL_STATES:
                _collect(evaluation, chunk, chunk.job)
        _refresh_counts(evaluation)
        fields = ["items_done", "results", "params", "state", "error", "note", "finished_at"]
        if evaluation.state != EvaluationState.RUNNING:
            evaluation.save(update_fields=fields)
            return evaluation
        if evaluation.items_done >= evaluation.items_total:
            _finish(evaluation, EvaluationState.SUCCEEDED)
            evaluation.save(update_fields=fields)
            return evaluation
        if evaluation.params.get("failed_jobs", 0) >= settings.EVAL_MAX_FAILED_JOBS:
            _finish(
                evaluation,
                EvaluationState.FAILED,
                error=(
                    f"{evaluation.params['failed_jobs']} scoring jobs failed; the last said: "
                    f"{evaluation.params.get('last_job_error', '')} Resume it to try again."
                ),
            )
            evaluation.save(update_fields=fields)
            return evaluation
        if evaluation.scored_by == ScoredBy.WORKER:
            decision = access_check(
                user=evaluation.owner, variant=evaluation.variant, purpose="generate"
            )
            if not decision.allowed:  # revoked or expired meanwhile: stop, saying why
                _finish(evaluation, EvaluationState.FAILED, error=f"Stopped: {decision.message}")
                _cancel_jobs(evaluation, decision.message)
            else:
                _send_more(evaluation)
        evaluation.save(update_fields=fields)
        return evaluation


def _send_more(evaluation: Evaluation) -> None:
    # Every chunk not collected yet covers its items, whatever its job's state now: a job
    # that ended after this advance collected the others is collected by the next one, and
    # its items must not be sent again meanwhile.
    active = list(EvaluationChunk.objects.filter(evaluation=evaluation, collected=False))
    room = settings.EVAL_MAX_OUTSTANDING_JOBS - len(active)
    if room <= 0:
        return
    covered = {i for chunk in active for i in chunk.item_indexes}
    scored = set(
        EvaluationItem.objects.filter(evaluation=evaluation).values_list("index", flat=True)
    )
    pending = [i for i in range(evaluation.items_total) if i not in scored and i not in covered]
    evaluation.note = ""
    for indexes in _chunks_to_submit(evaluation, pending)[:room]:
        try:
            with transaction.atomic():
                _submit(evaluation, indexes)
        except RateLimited as exc:
            evaluation.note = f"Waiting: {exc.message}"
            return
        except PortalError as exc:  # no access any more, quota too small, bad size
            _finish(evaluation, EvaluationState.FAILED, error=exc.message)
            return


def evaluations_sweep() -> int:
    """Advance every running evaluation, and collect late results of stopped ones."""
    ids = set(
        Evaluation.objects.filter(
            state=EvaluationState.RUNNING, scored_by=ScoredBy.WORKER
        ).values_list("pk", flat=True)
    ) | set(
        EvaluationChunk.objects.filter(collected=False, job__state__in=TERMINAL_STATES).values_list(
            "evaluation_id", flat=True
        )
    )
    for pk in ids:
        try:
            evaluation_advance(evaluation_id=pk)
        except Exception:  # one broken evaluation must not stop the others
            logger.exception("evaluation %s could not be advanced", pk)
    return len(ids)


# --- Cancel and resume -----------------------------------------------------------------------


def evaluation_cancel(
    *, evaluation: Evaluation, reason: str = "Cancelled by its owner."
) -> Evaluation:
    """Stop sending chunks and cancel the outstanding jobs; items already scored stay."""
    with transaction.atomic():
        evaluation = Evaluation.objects.select_for_update().get(pk=evaluation.pk)
        if evaluation.state != EvaluationState.RUNNING:
            raise InvalidTransition(
                f"This evaluation has already {evaluation.get_state_display().lower()}; "
                "nothing to cancel.",
                code="evaluation_finished",
            )
        _finish(evaluation, EvaluationState.CANCELLED, error=reason)
        evaluation.save(update_fields=["state", "error", "note", "finished_at"])
        _cancel_jobs(evaluation, reason)
    return evaluation


def _cancel_jobs(evaluation: Evaluation, reason: str) -> None:
    jobs = GenerationJob.objects.filter(
        evaluation_chunk__evaluation=evaluation,
        evaluation_chunk__collected=False,
        state__in=(JobState.QUEUED, JobState.RUNNING),
    )
    for job in jobs:
        # One that ended meanwhile is collected as usual.
        with contextlib.suppress(Conflict):
            job_cancel(job=job, reason=f"Its evaluation stopped: {reason}")


def evaluation_resume(*, evaluation: Evaluation, user) -> Evaluation:
    """Run a cancelled or failed evaluation on: only the items not scored yet are sent."""
    access_require(user=evaluation.owner, variant=evaluation.variant, purpose="generate")
    with transaction.atomic():
        evaluation = Evaluation.objects.select_for_update().get(pk=evaluation.pk)
        if not can_move(evaluation.state, EvaluationState.RUNNING):
            raise InvalidTransition(
                f"This evaluation is {evaluation.get_state_display().lower()}; only a "
                "cancelled or failed one can be resumed.",
                code="not_resumable",
            )
        manifest = variant_manifest(evaluation.variant)
        if manifest["files"] != evaluation.checkpoint_manifest.get("files"):
            raise Conflict(
                f"The published files of {evaluation.variant} changed since this evaluation "
                "started; start a new one so its items are scored on one checkpoint.",
                code="checkpoint_changed",
            )
        evaluation.state = EvaluationState.RUNNING
        evaluation.error = ""
        evaluation.finished_at = None
        evaluation.params.pop("failed_jobs", None)
        evaluation.params.setdefault("resumed", []).append(timezone.now().isoformat())
        evaluation.save(update_fields=["state", "error", "finished_at", "params"])
        if evaluation.scored_by == ScoredBy.WORKER:
            _advance_on_commit(evaluation)
    return evaluation


# --- In-process scoring (the command line, the demo seed) ---------------------------------


def evaluation_score_in_process(
    *, evaluation: Evaluation, llama, batch_items: int = 8, on_progress=None
) -> Evaluation:
    """Score the unscored items with an `inference.llama.Llama` loaded in this process, through
    the engine's same echo-with-log-probabilities pass the workers run; then finish."""
    from inference.llama import SamplingParams  # torch: the command's process only

    task = evaluation.task
    params = SamplingParams(max_new_tokens=0, echo=True, logprobs=True, temperature=0.0)
    tokenizer = llama.tokenizer

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, bos=False)

    scored = set(evaluation.items.values_list("index", flat=True))
    pending = [i for i in range(task.item_count) if i not in scored]
    for start in range(0, len(pending), batch_items):
        indexes = pending[start : start + batch_items]
        prompts, layout = [], []
        for i in indexes:
            for part, (ids, context_len) in enumerate(
                scoring.item_requests(task.kind, task.items[i], encode=encode, bos=tokenizer.bos_id)
            ):
                prompts.append(ids)
                layout.append((i, part, context_len))
        completions = llama.generate(prompts, params)
        parts: dict[int, list] = {}
        for (i, _part, context_len), completion in zip(layout, completions, strict=True):
            parts.setdefault(i, []).append((completion.prompt_logprobs, context_len))
        EvaluationItem.objects.bulk_create(
            [
                EvaluationItem(
                    evaluation=evaluation,
                    index=i,
                    scores=scoring.item_scores(task.kind, task.items[i], parts[i]),
                )
                for i in indexes
            ],
            ignore_conflicts=True,
        )
        evaluation = evaluation_advance(evaluation_id=evaluation.pk)
        if on_progress is not None:
            on_progress(evaluation)
        if evaluation.state != EvaluationState.RUNNING:
            break
    return evaluation_advance(evaluation_id=evaluation.pk)


def evaluation_summary_rows(evaluation: Evaluation) -> list[dict[str, Any]]:
    """The per-item download: the item as uploaded (its line) and its scores."""
    task_items = evaluation.task.items
    return [
        {"index": item.index, **task_items[item.index], "scores": item.scores}
        for item in evaluation.items.order_by("index")
    ]
