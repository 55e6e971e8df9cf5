"""A long-lived tensor-parallel group driven by a server process (the jobs worker).

`parallel.spawn` runs one function in N fresh processes and waits for them; a server needs
the opposite shape: its own process is rank 0 and drives batches whenever work arrives,
and N - 1 follower processes stay loaded for its whole life. `Group` is that shape:

- `Group(spec).start()` checks that the size fits (`memory_check`), starts the followers
  (`python -m inference.llama.group`, one per GPU or gloo processes on the CPU), joins the
  process group as rank 0 with a collective timeout (`spec.timeout_s`: a lost peer raises
  instead of hanging), loads rank 0's slice and waits until every follower says it loaded
  its own (or why it could not).
- Between batches the followers wait on their stdin, not inside a collective, so an idle
  worker never runs into the collective timeout; EOF (rank 0's process is gone) ends them,
  as does PR_SET_PDEATHSIG.
- `begin(decoder)` tells every follower to mirror that decoder (same batch rows and cache
  length; a new decoder id makes them build a new one, exactly when rank 0 did) and they
  enter `BatchDecoder.follow()`: rank 0 broadcasts each step's new requests, cancellations
  and sampled tokens (see `generation`), `end(decoder)` releases them.
- A follower that dies, a collective that fails or times out: `lost()` says which rank and
  why, and `abort()` kills what is left and leaves the process group, so a new `Group` can
  start in the same process.

Nothing here imports Django: the worker (inference/worker.py) claims jobs and hands back
the batch of a lost group.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .checkpoint import expected_shapes, load_tokenizer
from .engine import Llama, resolve_dtype
from .generation import PREFILL_TOKEN_BUDGET
from .layout import read_params
from .model import ModelArgs
from .parallel import Parallel, free_port

log = logging.getLogger(__name__)

GB = 1e9
# What a CUDA context and the caching allocator's slack take on each GPU besides tensors.
CUDA_CONTEXT_BYTES = int(0.5 * GB)


class GroupError(RuntimeError):
    """The group could not start, or lost a rank: the message says which and why."""


class DoesNotFit(GroupError):
    """The size does not fit the memory this worker was given; the message has the numbers."""


@dataclass(frozen=True)
class GroupSpec:
    ckpt_dir: str
    world_size: int
    device: str = "cpu"  # "cpu" or "cuda" (rank r takes GPU r of the visible ones)
    dtype: str = "auto"
    quantize: str | None = None
    max_seq_len: int | None = None
    max_batch_size: int = 8  # for the memory check: the KV cache the worker will allocate
    timeout_s: float = 120.0  # any collective must finish within this
    start_timeout_s: float = 1800.0  # every rank loaded its slice (65B: 16 GB each) by then
    threads: int = 0  # torch threads per rank on the CPU (0: cores / ranks)
    label: str = ""  # what the messages call the model: "LLaMA 65B"
    vocab_size: int = 0  # the tokenizer's, for the memory check when params.json says -1

    @property
    def backend(self) -> str:
        return "nccl" if self.device.startswith("cuda") else "gloo"

    def name(self) -> str:
        return self.label or Path(self.ckpt_dir).name


# --- memory -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryPlan:
    weights_per_rank: int  # bytes
    kv_cache_per_rank: int  # bytes, for max_batch_size rows of max_seq_len tokens
    ranks: int
    batch: int
    context: int
    # The largest pass's float32 logits over the whole vocabulary (every rank gathers
    # them), twice: the logits and their log-softmax.
    activations_per_rank: int = 0

    @property
    def per_rank(self) -> int:
        return self.weights_per_rank + self.kv_cache_per_rank + self.activations_per_rank


def memory_plan(
    params: dict,
    *,
    world_size: int,
    dtype: torch.dtype,
    quantize: str | None = None,
    max_batch_size: int,
    max_seq_len: int,
    vocab_size: int | None = None,
) -> MemoryPlan:
    """Bytes each rank needs: its slice of the weights (int8: one byte per element of the
    projection matrices plus their scales), its heads' share of the KV cache, and the
    logits of the largest pass."""
    vocab = int(params.get("vocab_size", -1))
    if vocab <= 0:
        vocab = vocab_size or 32000  # -1 in params.json: the tokenizer's size (LLaMA's 32000)
    args = ModelArgs.from_params(params, vocab_size=vocab, max_seq_len=max_seq_len)
    shapes = expected_shapes(args, Parallel(world_size=world_size))
    item = torch.empty((), dtype=dtype).element_size()
    weights = 0
    for name, shape in shapes.items():
        numel = shape.numel()
        if quantize in ("int8", "q8_0") and len(shape) == 2 and "tok_embeddings" not in name:
            # int8 plus its scales: a float16 one per 32 input columns (llama.cpp's Q8_0
            # layout) or one per output row, whichever the engine uses; the larger counts.
            weights += numel + max(numel // 32 * 2, shape[0] * item)
        else:
            weights += numel * item
    kv_per_rank = max(1, args.kv_heads // world_size) * args.head_dim
    kv = 2 * args.n_layers * max_batch_size * max_seq_len * kv_per_rank * item
    tokens = min(max_batch_size * max_seq_len, PREFILL_TOKEN_BUDGET)
    activations = 2 * tokens * args.vocab_size * 4
    return MemoryPlan(weights, kv, world_size, max_batch_size, max_seq_len, activations)


def available_bytes(device: str) -> tuple[int, str]:
    """Free memory where a rank's tensors go: the GPU's free memory, or the host's
    MemAvailable (every CPU rank shares it)."""
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return free, f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "this host's RAM (MemAvailable)"
    return 0, "this host's RAM"


def memory_check(
    spec: GroupSpec, params: dict, *, available: tuple[int, str] | None = None
) -> None:
    """Raise DoesNotFit, naming the numbers, when the size cannot fit. On the CPU all ranks
    share the host's memory; on CUDA each rank checks its own GPU (rank 0 here, the
    followers before they load)."""
    dtype = resolve_dtype(spec.dtype, spec.device, spec.quantize)
    context = spec.max_seq_len or int(params.get("max_seq_len", 2048))
    vocab = spec.vocab_size
    if not vocab and int(params.get("vocab_size", -1)) <= 0:
        with contextlib.suppress(Exception):  # no tokenizer here: LLaMA's 32000 is assumed
            vocab = load_tokenizer(spec.ckpt_dir).n_words
    plan = memory_plan(
        params,
        world_size=spec.world_size,
        dtype=dtype,
        quantize=spec.quantize,
        max_batch_size=spec.max_batch_size,
        max_seq_len=context,
        vocab_size=vocab or None,
    )
    free, where = available if available is not None else available_bytes(spec.device)
    on_cpu = not spec.device.startswith("cuda")
    need = plan.per_rank * (spec.world_size if on_cpu else 1)
    fixed = 0 if on_cpu else CUDA_CONTEXT_BYTES
    need += fixed
    if need > free:
        advice = (
            "Give it a host with more memory, int8 weights (JOBS_QUANTIZE) or a smaller "
            "JOBS_MAX_BATCH_SIZE: more CPU ranks share the same RAM."
            if on_cpu
            else "Give it more GPUs (JOBS_TP_SIZES), larger ones, int8 weights "
            "(JOBS_QUANTIZE) or a smaller JOBS_MAX_BATCH_SIZE."
        )
        precision = f"{str(dtype).removeprefix('torch.')}" + (
            f", {spec.quantize} weights" if spec.quantize else ""
        )
        share = f"{spec.world_size} ranks x " if on_cpu and spec.world_size > 1 else ""
        raise DoesNotFit(
            f"{spec.name()} does not fit: {share}{_gb(plan.per_rank + fixed)} per rank "
            f"({_gb(plan.weights_per_rank)} of weights in {precision} on {spec.world_size} "
            f"rank(s) + {_gb(plan.kv_cache_per_rank)} of KV cache for {plan.batch} rows x "
            f"{plan.context} tokens + {_gb(plan.activations_per_rank + fixed)} of logits"
            f"{' and CUDA context' if fixed else ''}) = {_gb(need)} needed, but {where} has "
            f"{_gb(free)} free. {advice}"
        )


def _gb(n: int) -> str:
    return f"{n / GB:.2f} GB"


# --- rank 0 ------------------------------------------------------------------------------------


class Group:
    """Rank 0 of a tensor-parallel group in this process, and its followers."""

    def __init__(self, spec: GroupSpec):
        self.spec = spec
        self.followers: list[subprocess.Popen] = []
        self.llama: Any = None
        self.par = Parallel()
        self._following = False
        self._broken: str | None = None
        self._watch: threading.Thread | None = None

    # -- start and stop ----------------------------------------------------------------------
    def start(self, params: dict | None = None):
        """Start the followers and load rank 0's slice; returns the `Llama` of rank 0."""

        spec = self.spec
        if params is not None:
            memory_check(spec, params)
        if spec.threads:
            torch.set_num_threads(spec.threads)
        elif spec.world_size > 1 and spec.backend == "gloo":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.world_size))
        if spec.world_size == 1:
            self.llama = self._load(Parallel())
            return self.llama
        port = free_port()
        started = time.monotonic()
        if spec.backend == "nccl":
            # On an NCCL error or timeout, abort the communicator and raise in this process
            # (2) instead of tearing the worker down (the default, 3): the batch is handed
            # back here. The followers inherit it.
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
        for rank in range(1, spec.world_size):
            self.followers.append(_start_follower(spec, rank, port))
        try:
            # Every rank loads its slice first (no collective runs while loading), says so
            # on its stdout, and only then do all join the process group: a rank that
            # cannot load is told at once, not after a rendezvous timeout.
            par = Parallel(world_size=spec.world_size, rank=0)
            self.llama = self._load(par)
            for rank, proc in enumerate(self.followers, start=1):
                self._expect(rank, proc, "loaded", started + spec.start_timeout_s)
            self._join(port)
            for rank, proc in enumerate(self.followers, start=1):
                self._expect(rank, proc, "ready", time.monotonic() + spec.timeout_s)
            self.par = par
        except BaseException:
            self.abort()
            raise
        log.info(
            "%s: %d ranks (%s) loaded in %.1fs",
            spec.name(),
            spec.world_size,
            spec.backend,
            time.monotonic() - started,
        )
        return self.llama

    def _join(self, port: int) -> None:
        spec = self.spec
        if dist.is_initialized():  # a group this process left behind: start clean
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        try:
            _init_process_group(spec, 0, port)
        except Exception as exc:
            raise GroupError(
                f"{spec.name()}: the {spec.world_size} ranks did not join within "
                f"{spec.timeout_s:g}s ({self._why_not(exc)})"
            ) from exc

    def _load(self, par: Parallel):
        spec = self.spec
        # One process: the device as configured ("cuda:1" stays GPU 1); a group: rank r on
        # GPU r of the visible ones.
        tp_gpu = spec.backend == "nccl" and spec.world_size > 1
        device = "cuda:0" if tp_gpu else spec.device
        return Llama.load(
            spec.ckpt_dir,
            device=device,
            dtype=spec.dtype,
            max_seq_len=spec.max_seq_len,
            parallel=par,
            quantize=spec.quantize,
        )

    def _expect(self, rank: int, proc: subprocess.Popen, word: str, deadline: float) -> None:
        line = _read_line(proc, deadline)
        if line == word:
            return
        if line.startswith("error "):
            raise GroupError(f"{self.spec.name()}: rank {rank} could not start: {line[6:]}")
        raise GroupError(
            f"{self.spec.name()}: rank {rank} {_exit_text(proc) or f'did not say {word!r} in time'}"
        )

    def stop(self) -> None:
        """Release the followers and leave the group (the worker is shutting down)."""
        for proc in self.followers:
            with contextlib.suppress(Exception):
                proc.stdin.write(b'{"cmd": "exit"}\n')
                proc.stdin.flush()
        for proc in self.followers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _close_pipes(proc)
        self._leave()

    def abort(self, reason: str = "") -> None:
        """Kill what is left of the group: after a lost rank or a failed collective the
        survivors are out of step and cannot be trusted with another batch."""
        if reason:
            self._broken = self._broken or reason
        for proc in self.followers:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc in self.followers:
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
            _close_pipes(proc)
        self._leave()

    def _leave(self) -> None:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        self._following = False

    # -- health -------------------------------------------------------------------------------
    def lost(self) -> str | None:
        """Why this group cannot run another step (a rank that exited), or None."""
        if self._broken:
            return self._broken
        for rank, proc in enumerate(self.followers, start=1):
            text = _exit_text(proc)
            if text:
                return f"tensor-parallel rank {rank} of {self.spec.world_size} {text}"
        return None

    def _why_not(self, exc: BaseException) -> str:
        return self.lost() or f"{type(exc).__name__}: {exc}"

    def explain(self, exc: BaseException) -> str:
        """The reason a collective failed, for the jobs handed back and the log: the dead
        rank when there is one (give its exit a moment to be seen), else the error."""
        deadline = time.monotonic() + 2
        while self.lost() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        lost = self.lost()
        if lost:
            return lost
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return (
            f"a tensor-parallel collective failed or took longer than {self.spec.timeout_s:g}s "
            f"({type(exc).__name__}: {first})"
        )

    # -- batches ------------------------------------------------------------------------------
    def begin(self, decoder) -> None:
        """Have the followers mirror `decoder` until `end(decoder)`."""
        if self.spec.world_size == 1 or self._following:
            return
        reason = self.lost()
        if reason:
            raise GroupError(reason)
        command = {
            "cmd": "follow",
            "decoder": id(decoder),
            "max_batch_size": decoder.max_batch_size,
            "max_seq_len": decoder.max_seq_len,
        }
        line = (json.dumps(command) + "\n").encode()
        try:
            for proc in self.followers:
                proc.stdin.write(line)
                proc.stdin.flush()
        except OSError as exc:
            raise GroupError(self._why_not(exc)) from exc
        self._following = True
        if self.spec.backend == "nccl" and (self._watch is None or not self._watch.is_alive()):
            self._watch = threading.Thread(target=self._watch_followers, daemon=True)
            self._watch.start()

    def _watch_followers(self) -> None:
        """NCCL waits for a dead peer until its timeout (gloo sees the closed socket at
        once): while a batch runs, a follower that exits aborts the communicator, so rank
        0's pending collective fails now."""
        while self._following and self._broken is None:
            reason = self.lost()
            if reason:
                self._broken = reason
                log.error("%s; aborting the NCCL communicator", reason)
                with contextlib.suppress(Exception):
                    dist.distributed_c10d._abort_process_group()
                return
            time.sleep(0.2)

    def end(self, decoder) -> None:
        if self.spec.world_size == 1 or not self._following:
            return
        decoder.close()
        self._following = False


def _init_process_group(spec: GroupSpec, rank: int, port: int) -> None:
    if spec.backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        spec.backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=spec.world_size,
        timeout=timedelta(seconds=spec.timeout_s),
    )


def _start_follower(spec: GroupSpec, rank: int, port: int) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, "-m", "inference.llama.group", json.dumps(asdict(spec)), str(rank)]
    argv.append(str(port))
    return subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True
    )


def _close_pipes(proc: subprocess.Popen) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _read_line(proc: subprocess.Popen, deadline: float) -> str:
    """One line of a follower's stdout, or "" at EOF or the deadline."""
    fd = proc.stdout.fileno()
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return ""
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if not ready:
            if proc.poll() is not None:
                return ""
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            return ""
        data += chunk
    return data.decode(errors="replace").strip()


def _exit_text(proc: subprocess.Popen) -> str | None:
    code = proc.poll()
    if code is None:
        return None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"(pid {proc.pid}) was killed by {name}"
    return f"(pid {proc.pid}) exited with code {code}"


# --- a follower ---------------------------------------------------------------------------------


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _say(out, line: str) -> None:
    out.write(line + "\n")
    out.flush()


def follower_main(spec: GroupSpec, rank: int, port: int) -> int:
    _die_with_parent()
    out = sys.stdout
    try:
        if spec.backend == "nccl":
            torch.cuda.set_device(rank)
        elif spec.threads:
            torch.set_num_threads(spec.threads)
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec.world_size))
        if spec.backend == "nccl":
            memory_check(spec, read_params(spec.ckpt_dir))  # this rank's own GPU
        llama = Llama.load(
            spec.ckpt_dir,
            device=f"cuda:{rank}" if spec.backend == "nccl" else spec.device,
            dtype=spec.dtype,
            max_seq_len=spec.max_seq_len,
            parallel=Parallel(world_size=spec.world_size, rank=rank),
            quantize=spec.quantize,
        )
        _say(out, "loaded")
        _init_process_group(spec, rank, port)
    except Exception as exc:
        log.exception("rank %d could not start", rank)
        _say(out, f"error {type(exc).__name__}: {exc}".replace("\n", " "))
        return 1
    _say(out, "ready")
    decoder, decoder_id = None, None
    for raw in sys.stdin:
        command = json.loads(raw)
        if command["cmd"] == "exit":
            break
        if command["cmd"] == "follow":
            if command["decoder"] != decoder_id:
                decoder = None  # free the old cache first
                decoder = llama.decoder(
                    max_batch_size=command["max_batch_size"], max_seq_len=command["max_seq_len"]
                )
                decoder_id = command["decoder"]
            decoder.follow()
    # stdin closed (rank 0 is gone) or told to exit: leave without a barrier, which a dead
    # rank 0 would never reach.
    with contextlib.suppress(Exception):
        dist.destroy_process_group()
    return 0


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=logging.INFO, format=f"[tp rank {argv[1]}] %(levelname)s %(name)s: %(message)s"
    )
    spec = GroupSpec(**json.loads(argv[0]))
    return follower_main(spec, int(argv[1]), int(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
