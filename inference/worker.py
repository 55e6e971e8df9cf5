"""What a Celery worker process does with a generation job.

- The model is loaded once per process, lazily, on the first job of its size (never at
  import and never before Celery forks, so CUDA is first touched inside the child), from
  `JOBS_MODEL_CACHE_DIR/<slug>/`, which `weights.services.checkpoint_fetch` fills from S3
  with every file's SHA-256 checked against the WeightFile manifest. First the size is
  checked against the memory it would have (weights per rank plus the KV cache of
  JOBS_MAX_BATCH_SIZE rows of its context); a size that cannot fit is refused with the
  numbers instead of dying half-loaded.
- Tensor parallel (`ranks_for`, JOBS_TP_SIZES): this process is rank 0 of an
  `inference.llama.group.Group` whose follower processes (one GPU each, or gloo processes
  on the CPU) load only their shards and live as long as this process. Rank 0 runs the
  batch below exactly as a single process does; the followers mirror its decoder steps.
  A rank that dies or a collective that fails (JOBS_TP_TIMEOUT_SECONDS) ends the batch:
  its jobs are handed back (`job_take_back`: queued again, counted as an attempt) and the
  group is started again for the next job.
- Continuous batching: Celery (prefetch 1, acks_late) hands the process one message at a
  time. The task claims its own job and opens a `BatchRun`, whose loop also claims the
  oldest queued jobs of the same size from the database (conditional UPDATEs) into free
  decoder slots while it runs, so jobs join as others finish. Their own queue messages
  later find them running or finished and return as no-ops.
- Cancellation reaches the loop two ways: a Redis pub/sub broadcast, which a listener
  thread turns into `BatchDecoder.cancel` at once (the sequence stops before its next
  token), and the `cancel_requested` column, read with every heartbeat (JOBS_HEARTBEAT_SECONDS).
- Tokens go to each job's Redis stream at most every 10 ms (one pipelined round trip);
  the result goes to the database, then an `end` event.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.utils import timezone

from accounts.selectors import access_check
from catalog.models import ModelVariant
from inference import events
from inference.checkpoints import checkpoint_fetch
from inference.models import GenerationJob, JobState
from inference.selectors import precision_for
from inference.services import (
    WorkerIdentity,
    holder_gone,
    job_claim,
    job_finish,
    job_take_back,
    jobs_claim_queued,
    jobs_heartbeat,
    jobs_take_back_batch,
)

logger = logging.getLogger(__name__)

CLAIM_POLL_SECONDS = 0.05  # how often a batch with free slots looks for queued jobs

_models: dict[str, Any] = {}
# slug -> the tensor-parallel group (inference.llama.group.Group) behind _models[slug]; one
# of one rank (this process alone) for a size served without tensor parallelism.
_groups: dict[str, Any] = {}
# One decoder (and its KV cache: gigabytes for 7B) per size, kept between batches: allocating
# it for every batch would cost a scoring request, which uses no cache, more than its work.
_decoders: dict[tuple, Any] = {}
_models_lock = threading.Lock()
_active_run: BatchRun | None = None
_listener: threading.Thread | None = None


# --- The model --------------------------------------------------------------------------------


def _device() -> str:
    import torch  # the web process imports this module; only workers load torch

    device = settings.JOBS_DEVICE
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@contextmanager
def _cache_lock(directory: Path):
    """Worker processes on one host share the cache: one fills it, the others wait."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def visible_gpus() -> int:
    """GPUs this worker may use, told without touching CUDA (the parent of a prefork pool
    must not): CUDA_VISIBLE_DEVICES when set, else the /dev/nvidiaN device files."""
    if settings.JOBS_DEVICE == "cpu":
        return 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return len([d for d in listed.split(",") if d.strip() and d.strip() != "-1"])
    return sum(1 for p in Path("/dev").glob("nvidia[0-9]*") if p.name[6:].isdigit())


def ranks_for(slug: str, shard_count: int) -> int:
    """Tensor-parallel ranks of a size here: JOBS_TP_SIZES when it names the size; else, on
    GPUs, the most that both the visible GPUs and the shards allow (a rank holds one shard
    or a whole number of them); on the CPU one process."""
    configured = settings.JOBS_TP_SIZES.get(slug)
    if configured:
        return configured
    gpus = visible_gpus() if settings.JOBS_DEVICE != "cpu" else 0
    if gpus <= 1:
        return 1
    return max(n for n in range(1, min(gpus, shard_count) + 1) if shard_count % n == 0)


def model_for(variant: ModelVariant):
    """This process's loaded model of `variant` (an `inference.llama.Llama`): rank 0's
    slice when the size runs tensor parallel. A group that lost a rank while idle is
    started again here."""
    with _models_lock:
        llama = _models.get(variant.slug)
        group = _groups.get(variant.slug)
        if llama is not None:
            lost = group.lost() if group is not None else None
            if lost is None:
                return llama
            logger.error("%s: %s while idle; starting its group again", variant, lost)
            _group_drop(variant.slug, lost)
        # torch: imported on first use, after the fork
        from inference.llama.group import Group, GroupSpec

        directory = Path(settings.JOBS_MODEL_CACHE_DIR) / variant.slug
        started = time.monotonic()
        with _cache_lock(directory):
            checkpoint_fetch(variant=variant, directory=directory)
        ranks = ranks_for(variant.slug, variant.shard_count)
        dtype, quantize = precision_for(variant.slug)
        spec = GroupSpec(
            ckpt_dir=str(directory),
            world_size=ranks,
            device=_device(),
            dtype=dtype,
            quantize=quantize or None,
            max_seq_len=variant.context_length,
            max_batch_size=settings.JOBS_MAX_BATCH_SIZE,
            timeout_s=settings.JOBS_TP_TIMEOUT_SECONDS,
            threads=settings.JOBS_TORCH_THREADS,
            label=str(variant),
        )
        group = Group(spec)
        llama = group.start(params=_checkpoint_params(directory, variant))
        logger.info(
            "loaded %s from %s on %d rank(s) in %.1fs",
            variant,
            directory,
            ranks,
            time.monotonic() - started,
        )
        _models[variant.slug] = llama
        _groups[variant.slug] = group
        return llama


def _checkpoint_params(directory: Path, variant: ModelVariant) -> dict:
    from inference.llama.layout import read_params

    try:
        return read_params(directory)
    except Exception:
        return dict(variant.params)


def _group_drop(slug: str, reason: str) -> None:
    """Forget a size's model and tear its group down (a lost rank, a broken batch): the
    next job starts a new one."""
    _models.pop(slug, None)
    _decoders.clear()
    group = _groups.pop(slug, None)
    if group is not None:
        group.abort(reason)


# A group lost this many times within the window is not restarted again: the worker stops
# (its service manager starts a fresh one, with fresh CUDA state) and says why.
TP_MAX_LOSSES = 3
TP_LOSS_WINDOW_SECONDS = 600.0
_losses: dict[str, list[float]] = {}


def group_lost_too_often(slug: str, *, now: float | None = None) -> bool:
    """Count one lost group of `slug`; True when that makes TP_MAX_LOSSES within the
    window."""
    now = time.monotonic() if now is None else now
    recent = [t for t in _losses.get(slug, []) if now - t < TP_LOSS_WINDOW_SECONDS]
    recent.append(now)
    _losses[slug] = recent
    return len(recent) >= TP_MAX_LOSSES


def _stop_worker() -> None:
    """Ask the Celery worker to shut down warmly: its main process when this is a prefork
    pool process, else this process (solo and threads pools run tasks in the main one)."""
    from billiard import current_process  # Celery's multiprocessing fork

    pool_child = current_process().name.startswith("ForkPoolWorker")
    os.kill(os.getppid() if pool_child else os.getpid(), signal.SIGTERM)


def ranks_serving(slug: str) -> int:
    """Ranks of the group this process runs for `slug` now (0: none loaded)."""
    group = _groups.get(slug)
    return group.spec.world_size if group is not None else 0


@atexit.register
def _stop_groups() -> None:
    for group in list(_groups.values()):
        try:
            group.stop()
        except Exception:  # going away anyway; the followers die with this process
            logger.warning("could not stop a tensor-parallel group cleanly", exc_info=True)


def _decoder_for(llama, variant: ModelVariant, max_batch: int):
    key = (variant.slug, id(llama), max_batch, variant.context_length)
    decoder = _decoders.get(key)
    if decoder is None or decoder.has_work():
        _decoders.clear()  # one size per process in practice: free the old cache first
        decoder = llama.decoder(max_batch_size=max_batch, max_seq_len=variant.context_length)
        _decoders[key] = decoder
    return decoder


# --- Identity and liveness --------------------------------------------------------------------


def identity(node: str) -> WorkerIdentity:
    return WorkerIdentity(node=node or "", host=socket.gethostname(), pid=os.getpid())


def _holder_is_dead(job: GenerationJob) -> bool:
    """Is the process that claimed this running job gone? Certain on the same host (its pid
    no longer exists); elsewhere, only when its heartbeat went stale."""
    if job.worker_host == socket.gethostname() and job.worker_pid:
        if job.worker_pid == os.getpid():
            return True  # this process is free, so it is not running the job
        return holder_gone(job)
    if job.heartbeat_at is None:
        return True
    age = (timezone.now() - job.heartbeat_at).total_seconds()
    return age > settings.JOBS_STALE_SECONDS


# --- Cancellation broadcast -------------------------------------------------------------------


def _listen_for_cancels() -> None:
    delay = 1.0
    while True:
        try:
            pubsub = events.client(socket_timeout=None).pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(events.CANCEL_CHANNEL)
            delay = 1.0
            for message in pubsub.listen():
                run = _active_run
                if run is not None and message.get("type") == "message":
                    run.cancel(message["data"].decode())
        except Exception as exc:  # Redis down: the database poll still cancels
            logger.warning("cancel listener lost Redis (%s); retrying in %.0fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 30)


def _ensure_listener() -> None:
    global _listener
    if _listener is None or not _listener.is_alive():
        _listener = threading.Thread(target=_listen_for_cancels, name="job-cancels", daemon=True)
        _listener.start()


# --- The batch ---------------------------------------------------------------------------------


@dataclass
class _Running:
    job: GenerationJob
    expected: int
    completions: dict[int, Any] = field(default_factory=dict)
    first_token_at: datetime | None = None
    first_token_clock: float | None = None


class BatchRun:
    """One decoder, the jobs in it, and the loop that feeds it."""

    def __init__(self, llama, variant: ModelVariant, worker: WorkerIdentity, group=None):
        self.llama = llama
        self.variant = variant
        self.worker = worker
        self.group = group  # tensor parallel: the followers mirror this run's decoder
        self.max_batch = settings.JOBS_MAX_BATCH_SIZE
        self.decoder = _decoder_for(llama, variant, self.max_batch)
        self.running: dict[str, _Running] = {}
        self.buffer = events.EventBuffer()
        self.delay = settings.JOBS_STEP_DELAY_SECONDS

    # -- jobs in and out --------------------------------------------------------------------
    def add(self, job: GenerationJob) -> None:
        decision = access_check(user=job.owner, variant=job.variant, purpose="generate")
        if not decision.allowed:
            self._end(job, JobState.CANCELLED, error=f"Not run: {decision.message}")
            return
        from inference.llama import SamplingParams  # torch: workers only

        p = job.params
        tokenizer = self.llama.tokenizer
        limit = self.decoder.max_seq_len
        vocab = self.llama.model.args.vocab_size
        for i, prompt in enumerate(job.prompts):
            if isinstance(prompt, list) and not all(0 <= t < vocab for t in prompt):
                self._end(
                    job,
                    JobState.FAILED,
                    error=(
                        f"Prompt {i + 1} has token ids outside the vocabulary (0 to {vocab - 1})."
                    ),
                )
                return
            count = len(prompt) if isinstance(prompt, list) else len(tokenizer.encode(prompt))
            if count + p["max_new_tokens"] > limit:
                self._end(
                    job,
                    JobState.FAILED,
                    error=(
                        f"Prompt {i + 1} has {count} tokens; with max_new_tokens "
                        f"{p['max_new_tokens']} that is more than the {limit}-token context of "
                        f"{self.variant}. Shorten the prompt or lower max_new_tokens."
                    ),
                )
                return
        key = str(job.pk)
        n = int(p.get("n", 1))
        self.running[key] = _Running(job=job, expected=len(job.prompts) * n)
        for prompt_index, prompt in enumerate(job.prompts):
            for k in range(n):
                index = prompt_index * n + k
                params = SamplingParams(
                    max_new_tokens=p["max_new_tokens"],
                    temperature=p["temperature"],
                    top_p=p["top_p"],
                    top_k=p["top_k"],
                    seed=(p["seed"] + index) if p.get("seed") is not None else None,
                    stop=tuple(p.get("stop") or ()),
                    echo=p.get("echo", False),
                    logprobs=p.get("logprobs", False),
                    top_logprobs=p.get("top_logprobs", 0),
                )
                self.decoder.add(prompt, params, callback=self._on_token, request_id=(key, index))
        self.buffer.add(job.pk, "state", {"state": JobState.RUNNING, "attempt": job.attempts})

    def cancel(self, job_id: str) -> None:
        """Any thread: stop this job's sequences before their next token."""
        running = self.running.get(job_id)
        if running is None:
            return
        for index in range(running.expected):
            self.decoder.cancel((job_id, index))

    def _on_token(self, event) -> None:
        key, index = event.request_id
        running = self.running.get(key)
        if running is None:
            return
        if running.first_token_at is None:
            running.first_token_at = timezone.now()
            running.first_token_clock = time.monotonic()
        data = {
            "index": index,
            "text": event.text,
            "token": event.token_id,
            "logprob": event.logprob,
            "finish_reason": event.finish_reason,
        }
        if event.logprob is not None:
            data["piece"] = self._piece_text(event.token_id)
        if event.top_logprobs is not None:
            data["top_logprobs"] = self._named([event.top_logprobs])[0]
        self.buffer.add(key, "token", data)

    def _complete(self, completion) -> None:
        key, index = completion.request_id
        running = self.running.get(key)
        if running is None:
            return
        running.completions[index] = completion
        if len(running.completions) < running.expected:
            return
        del self.running[key]
        job = running.job
        ordered = [running.completions[i] for i in range(running.expected)]
        errors = [c.error for c in ordered if c.error]
        if errors:
            state, error = JobState.FAILED, f"Generation failed: {errors[0]}"
        elif any(c.finish_reason == "cancelled" for c in ordered):
            state = JobState.CANCELLED
            error = (
                GenerationJob.objects.filter(pk=job.pk).values_list("error", flat=True).first()
                or "Cancelled by its owner."
            )
        else:
            state, error = JobState.SUCCEEDED, ""
        n = int(job.params.get("n", 1))
        outputs = [self._output(c, i, i // n) for i, c in enumerate(ordered)]
        decode_seconds = None
        if running.first_token_clock is not None:
            decode_seconds = max(time.monotonic() - running.first_token_clock, 1e-6)
        self._end(
            job,
            state,
            error=error,
            outputs=outputs,
            completion_tokens=sum(len(c.tokens) for c in ordered),
            prompt_tokens=sum(len(c.prompt_tokens) for c in ordered[::n]),
            first_token_at=running.first_token_at,
            decode_seconds=decode_seconds,
        )

    def _output(self, completion, index: int, prompt_index: int) -> dict:
        out = {
            "index": index,
            "prompt_index": prompt_index,
            "text": completion.text,
            "token_ids": completion.tokens,
            "tokens": None,
            "logprobs": completion.logprobs,
            "prompt_logprobs": completion.prompt_logprobs,
            "finish_reason": completion.finish_reason,
        }
        if completion.logprobs is None:
            return out
        from inference.llama.generation import token_strings  # torch: workers only

        tokenizer = self.llama.tokenizer
        # The strings of what the text shows: the prompt's tokens when it was echoed, then
        # the new ones; offsets are where each starts in `text`.
        out["tokens"] = token_strings(tokenizer, completion.tokens)
        out["top_logprobs"] = self._named(completion.top_logprobs)
        start = 0
        if completion.prompt_logprobs is not None:
            prompt_strs = token_strings(tokenizer, completion.prompt_tokens, first=True)
            out["prompt_token_ids"] = completion.prompt_tokens
            out["prompt_tokens"] = prompt_strs
            out["prompt_top_logprobs"] = self._named(completion.prompt_top_logprobs)
            out["prompt_text_offset"] = _offsets(prompt_strs, 0)
            start = len(completion.text) - len("".join(out["tokens"]))
        out["text_offset"] = _offsets(out["tokens"], max(start, 0))
        return out

    def _named(self, tops: list | None) -> list | None:
        """{token id: logprob} -> {token text: logprob}, as OpenAI's top_logprobs."""
        if tops is None:
            return None
        piece = self._piece_text
        return [None if top is None else {piece(t): lp for t, lp in top.items()} for top in tops]

    def _piece_text(self, token_id: int) -> str:
        from inference.llama.generation import token_strings  # torch: workers only

        return token_strings(self.llama.tokenizer, [token_id])[0]

    def _end(self, job: GenerationJob, state: str, *, error: str = "", **result) -> None:
        written = job_finish(job=job, state=state, error=error, worker=self.worker.node, **result)
        if written:
            self.buffer.add(job.pk, "end", {"state": state, "error": error})
        else:
            logger.warning("job %s was taken back from this worker; its result is dropped", job.pk)
        self.buffer.flush(force=True)

    def fail_all(self, error: str) -> None:
        for key in list(self.running):
            running = self.running.pop(key)
            self._end(running.job, JobState.FAILED, error=error)

    def hand_back(self, reason: str) -> int:
        """The batch cannot go on here (a tensor-parallel rank was lost): every job in it
        goes back to its queue, or fails after JOBS_MAX_ATTEMPTS, once (its claim)."""
        handed = 0
        for key in list(self.running):
            job = self.running.pop(key).job
            state = job_take_back(job_id=job.pk, claim_id=job.claim_id, reason=reason)
            handed += state is not None
        self.buffer.flush(force=True)
        return handed

    # -- the loop ---------------------------------------------------------------------------
    def _claim_more(self) -> None:
        # Scoring jobs take no cache rows: the jobs that came with them still join this step.
        free = self.max_batch - self.decoder.active - self.decoder.waiting_for_rows
        for job in jobs_claim_queued(variant=self.variant, worker=self.worker, limit=free):
            self.add(job)

    def run(self, *, admit_until: float) -> None:
        if self.group is not None:
            self.group.begin(self.decoder)
        self._loop(admit_until=admit_until)
        if self.group is not None:
            self.group.end(self.decoder)  # only after a clean loop: see job_run

    def _loop(self, *, admit_until: float) -> None:
        last_claim = 0.0  # look for jobs that arrived with this one at once
        last_poll = time.monotonic()
        while True:
            now = time.monotonic()
            may_admit = now < admit_until
            if may_admit and now - last_claim >= CLAIM_POLL_SECONDS:
                self._claim_more()
                last_claim = now
            if not self.decoder.has_work():
                if may_admit:
                    self._claim_more()  # one last look before the task returns
                if not self.decoder.has_work():
                    self.buffer.flush(force=True)
                    break
            if now - last_poll >= settings.JOBS_HEARTBEAT_SECONDS:
                claims = {r.job.pk: r.job.claim_id for r in self.running.values()}
                for pk in jobs_heartbeat(claims=claims):
                    self.cancel(str(pk))
                last_poll = now
            for completion in self.decoder.step():
                self._complete(completion)
            self.buffer.flush()  # at most every 10 ms; at once for `end` events
            if self.delay:
                time.sleep(self.delay)


def _offsets(strings: list[str], start: int) -> list[int]:
    offsets, at = [], start
    for text in strings:
        offsets.append(at)
        at += len(text)
    return offsets


# --- The task body -----------------------------------------------------------------------------


def job_run(job_id: str, *, node: str = "", soft_time_limit: float | None = None) -> str:
    """Run one job (and whatever joins its batch). Returns what happened, for the log."""
    global _active_run
    worker = identity(node)
    job = GenerationJob.objects.select_related("variant").filter(pk=job_id).first()
    if job is None:
        return "no such job"
    if job.state == JobState.RUNNING:
        if not _holder_is_dead(job):
            return "running in another process"
        # Its whole batch goes back at once, so the run below claims them together again.
        states = jobs_take_back_batch(job=job, reason="its worker process died", requeue=False)
        state = states.get(job.pk)
        if state != JobState.QUEUED:
            return f"taken back from a dead worker: {state}"
    elif job.state != JobState.QUEUED:
        return f"already {job.state}"
    try:
        llama = model_for(job.variant)
    except Exception as exc:
        logger.exception("cannot load %s", job.variant)
        claimed = job_claim(job_id=job.pk, worker=worker)
        if claimed is not None:
            run_error = (
                f"The worker could not load {job.variant} ({type(exc).__name__}: {exc}). "
                "Nothing was generated; try again later."
            )
            if job_finish(job=claimed, state=JobState.FAILED, error=run_error, worker=node):
                events.end_publish(claimed.pk, JobState.FAILED, run_error)
        return "model unavailable"
    claimed = job_claim(job_id=job.pk, worker=worker)
    if claimed is None:
        return "claimed by another worker"
    _ensure_listener()
    slug = claimed.variant.slug
    group = _groups.get(slug)
    parallel = group is not None and group.spec.world_size > 1
    run = BatchRun(llama, claimed.variant, worker, group=group if parallel else None)
    _active_run = run
    started = time.monotonic()
    # Admit new jobs during the first half of the time limit only, so that every job in the
    # batch has time to finish before the soft limit.
    limit = soft_time_limit or settings.JOBS_SOFT_TIME_LIMIT
    admit_until = started + limit / 2
    try:
        run.add(claimed)
        run.run(admit_until=admit_until)
    except SoftTimeLimitExceeded:
        _decoders.clear()  # it still holds the stopped batch's requests
        if parallel:  # the followers are inside a step rank 0 left: out of step for good
            _group_drop(slug, "a batch was stopped at its time limit")
        run.fail_all(
            f"The job ran past the time limit of {limit:g} seconds and was stopped. Ask for "
            "fewer new tokens."
        )
        return "time limit"
    except Exception as exc:
        _decoders.clear()
        if parallel:
            # A rank died or a collective failed or timed out: the survivors are out of
            # step. The batch's jobs go back to the queue (each runs again once, on the new
            # group) and the group starts again on the next job.
            reason = group.explain(exc)
            _group_drop(slug, reason)
            handed = run.hand_back(f"{reason}; the tensor-parallel group was restarted")
            if group_lost_too_often(slug):
                logger.critical(
                    "%s: %s; %d job(s) handed back. The tensor-parallel group was lost %d "
                    "times within %.0f minutes, so this worker stops instead of starting it "
                    "again: check the GPUs (nvidia-smi, the kernel log) before it restarts.",
                    claimed.variant,
                    reason,
                    handed,
                    TP_MAX_LOSSES,
                    TP_LOSS_WINDOW_SECONDS / 60,
                )
                _stop_worker()
                return "tensor-parallel group lost too often: worker stopping"
            logger.error(
                "%s: %s; %d job(s) handed back; the group of %d ranks starts again on the next job",
                claimed.variant,
                reason,
                handed,
                group.spec.world_size,
            )
            return "tensor-parallel group lost"
        logger.exception("generation failed on %s", node)
        reason = type(exc).__name__
        if "OutOfMemory" in reason:
            message = "The worker ran out of GPU memory. Try fewer tokens or a smaller n."
        else:
            message = f"The model failed while generating ({reason}). Try again later."
        run.fail_all(message)
        return "failed"
    finally:
        _active_run = None
    return "done"
