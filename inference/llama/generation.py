"""Batched generation with a KV cache: a step-wise `BatchDecoder` and `generate()` on top.

`BatchDecoder` keeps a fixed number of cache rows ("slots"). `add()` queues a request at
any time, also while others are running (continuous batching); each `step()`

1. applies cancellations and admits queued requests into free slots,
2. advances every running sequence by one token (one batched decode pass, each row at
   its own position, so prompts of different lengths need no padding tricks),
3. prefills the newly admitted prompts (one right-padded pass; attention is causal and
   each row starts at position 0, so the padding is never attended) and samples their
   first token,
4. hands each new token to its request's callback and returns the requests that finished.

Requests of at most one new token (scoring: `max_new_tokens` 0 scores the prompt only, 1 is
what evaluation harnesses send) take no cache row: each step runs all of them at once, in
cache-less forward passes batched by length, or, for prompts that differ only in a short
ending (a task's choices after one context), one prefill of the common prefix in a scratch
cache and a few decode passes for the endings. With `echo` and `logprobs` every prompt
position is scored (`prompt_logprobs`, the first None) and `top_logprobs` N adds the N
likeliest tokens at each position.

Each request samples from its own `torch.Generator`, so a seeded request draws the same
tokens whatever else shares its batch. Under tensor parallelism rank 0 drives: it
broadcasts new requests and cancellations at the start of a step and the sampled tokens
at its end, and the other ranks call `follow()`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .model import Transformer
from .tokenizer import Tokenizer

LENGTH, STOP, EOS, CANCELLED, ERROR = "length", "stop", "eos", "cancelled", "error"

log = logging.getLogger(__name__)

# How many prompt tokens go through one prefill pass at most (rows x padded length);
# bounds the activation memory of a burst of long prompts.
PREFILL_TOKEN_BUDGET = 8192
# generate()'s cache rows unless told otherwise; more prompts wait for a free row.
DEFAULT_BATCH = 32
# Prompt tokens decoded in front of the output so SentencePiece keeps its leading space.
_CONTEXT_TOKENS = 4
# Tokens of one cache-less scoring pass (rows x padded length). Such a pass returns logits at
# every position ([rows, length, vocab] float32: 2048 x 32000 x 4 bytes = 262 MB for LLaMA),
# so it is kept smaller than the prefill budget.
SCORE_TOKEN_BUDGET = 2048
# The most alternatives a request may ask for at each position (vLLM's limit).
MAX_TOP_LOGPROBS = 20


class GenerationError(Exception):
    pass


class ContextLengthError(GenerationError, ValueError):
    """Prompt plus max_new_tokens do not fit the model's context (or the cache)."""


class Cancel(Exception):
    """Raise from a token callback to stop that sequence (finish reason `cancelled`)."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded. temperature 0 (the default) means greedy.

    Logprobs are those of the model's own distribution (before temperature, top-k and
    top-p), as the original release's `logprobs` option reports them.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    echo: bool = False
    logprobs: bool = False
    top_logprobs: int = 0  # with logprobs: the N likeliest tokens at each position too
    ignore_eos: bool = False  # benchmarks: always run max_new_tokens

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0 (0: score the prompt only)")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def scores_prompt(self) -> bool:
        """Every prompt position is scored (echo with logprobs)."""
        return self.echo and self.logprobs

    @property
    def one_pass(self) -> bool:
        """At most one new token: the request needs one forward pass and no cache row."""
        return self.max_new_tokens <= 1


@dataclass
class TokenEvent:
    """One sampled token, passed to a request's callback.

    `text` is the output text that became final with this token: it may be empty while a
    multi-byte character is incomplete or while the text could still turn out to be the
    start of a stop sequence, and is never text past a stop sequence. The final event of a
    sequence carries `finish_reason` and flushes what was held back. An EOS token is
    reported (with finish reason `eos`) but is not part of the completion's tokens.
    """

    request_id: Any
    index: int
    token_id: int
    text: str
    logprob: float | None = None
    finish_reason: str | None = None
    top_logprobs: dict[int, float] | None = None  # with SamplingParams.top_logprobs


@dataclass
class Completion:
    request_id: Any
    prompt: str | None
    prompt_tokens: list[int]
    tokens: list[int]
    text: str
    finish_reason: str
    logprobs: list[float] | None = None
    prompt_logprobs: list[float | None] | None = None
    # With top_logprobs N: {token id: logprob} of the N likeliest tokens at each position
    # (the prompt's first position has none: None).
    top_logprobs: list[dict[int, float]] | None = None
    prompt_top_logprobs: list[dict[int, float] | None] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TokenCallback = Callable[[TokenEvent], "bool | None"]


@dataclass
class Request:
    prompt: str | Sequence[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: Any = None
    callback: TokenCallback | None = None


class _Seq:
    """Decoder-side state of one request."""

    def __init__(
        self,
        request_id: Any,
        prompt: str | None,
        prompt_tokens: list[int],
        params: SamplingParams,
        callback: TokenCallback | None = None,
        *,
        device: torch.device | None = None,
    ):
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_tokens = prompt_tokens
        self.params = params
        self.callback = callback
        self.slot = -1
        self.pos = 0  # tokens in the cache = where the next one is written
        self.next_token: int | None = None  # sampled, not yet fed to the model
        self.n_sampled = 0
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.top_logprobs: list[dict[int, float]] = []
        self.prompt_logprobs: list[float | None] | None = None
        self.prompt_top_logprobs: list[dict[int, float] | None] | None = None
        self.text = ""
        self.text_lens: list[int] = []  # len(text) after each token, to cut at a stop
        self.emitted = 0  # characters of text already streamed
        self.scanned = 0  # stop sequences were searched up to here
        self.error: str | None = None
        self.generator: torch.Generator | None = None
        if device is not None and not params.greedy:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator(device=device).manual_seed(seed)

    def spec(self) -> tuple:
        """What another rank needs to mirror this request (callbacks stay on rank 0)."""
        return (self.request_id, self.prompt, self.prompt_tokens, self.params)


def _argmax_rows(rows: torch.Tensor) -> list[int]:
    """Each row's `argmax` (the first of tied maxima; a NaN counts as the largest, as in
    torch). CPU float32 rows go through numpy: torch's reduction costs 57 us for one row
    of 32,000 logits and 0.8 ms for eight on this 2-core VM (numpy: 3 and 39 us), a
    tenth of a 100M model's batch-8 decode step."""
    if rows.device.type == "cpu" and rows.dtype == torch.float32 and not rows.requires_grad:
        return rows.numpy().argmax(-1).tolist()
    return rows.argmax(-1).tolist()


def _sample_one(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    x = logits / p.temperature
    idx = None
    if 0 < p.top_k < x.shape[-1]:
        x, idx = torch.topk(x, p.top_k)  # sorted, descending
    probs = torch.softmax(x, dim=-1)
    if p.top_p < 1.0:
        if idx is None:
            probs, idx = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the original release's rule:
        # drop a token when the mass before it already exceeds p).
        probs = probs.masked_fill(probs.cumsum(-1) - probs > p.top_p, 0.0)
    choice = torch.multinomial(probs, 1, generator=gen)
    if idx is not None:
        choice = idx[choice]
    return int(choice)


def _safe_len(text: str, stops: Sequence[str]) -> int:
    """How much of `text` can be streamed without retracting anything later."""
    n = len(text)
    # A byte-fallback character split over tokens decodes as U+FFFD until it completes.
    while n and text[n - 1] == "\ufffd":
        n -= 1
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, n), 0, -1):
            if text.startswith(stop[:k], n - k):
                hold = max(hold, k)
                break
    return n - hold


class BatchDecoder:
    """Continuous-batching decoder over one model and a preallocated KV cache.

    Thread safety: `add()` and `cancel()` may be called from any thread; `step()`,
    `run()` and `close()` from one thread only (the one that owns the model).
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer | None = None,
        *,
        max_batch_size: int = 8,
        max_seq_len: int | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.par = model.par
        self.context_len = model.args.max_seq_len
        self.max_seq_len = min(max_seq_len or self.context_len, self.context_len)
        self.max_batch_size = max_batch_size
        self.eos_id = tokenizer.eos_id if tokenizer is not None else None
        self.device = model.device
        with torch.inference_mode():
            self.cache = model.new_cache(max_batch_size, self.max_seq_len)
        self._slots: list[_Seq | None] = [None] * max_batch_size
        self._free = list(range(max_batch_size))  # a heap: fill low slots first, so the
        # rows a decode pass covers (0..highest busy slot) stay dense
        self._pending: deque[_Seq] = deque()
        # Requests of at most one new token: one cache-less forward pass each, batched with
        # the others of the same step, so a burst of scoring requests needs no cache rows.
        self._one_pass: list[_Seq] = []
        self._by_id: dict[Any, _Seq] = {}
        self._incoming: list[_Seq] = []
        self._cancels: dict[Any, str] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._ids = itertools.count()
        self._closed = False

    # -- requests ------------------------------------------------------------------------
    def add(
        self,
        prompt: str | Sequence[int] | Request,
        params: SamplingParams | None = None,
        *,
        callback: TokenCallback | None = None,
        request_id: Any = None,
    ) -> Any:
        """Queue a request; it joins the batch at the next step with a free slot.

        A string prompt is encoded with BOS; a list of ids is used as is. Returns the
        request id (the one given, or a new integer). Raises ContextLengthError when
        prompt plus max_new_tokens cannot fit.
        """
        if self.par.enabled and not self.par.is_leader:
            raise GenerationError("only rank 0 adds requests; other ranks call follow()")
        if isinstance(prompt, Request):
            params = prompt.params
            callback = prompt.callback
            request_id = prompt.request_id
            prompt = prompt.prompt
        params = params or SamplingParams()
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise GenerationError("a text prompt needs a tokenizer")
            text: str | None = prompt
            tokens = self.tokenizer.encode(prompt, bos=True)
        else:
            text = None
            tokens = [int(t) for t in prompt]
        if not tokens:
            raise GenerationError("empty prompt (a text prompt has at least BOS)")
        vocab = self.model.args.vocab_size
        if not all(0 <= t < vocab for t in tokens):
            raise GenerationError(f"prompt token ids must be in [0, {vocab})")
        if params.stop and self.tokenizer is None:
            raise GenerationError("stop sequences need a tokenizer")
        total = len(tokens) + params.max_new_tokens
        for limit, what in (
            (self.context_len, "the model's context length"),
            (self.max_seq_len, "this decoder's KV cache"),
        ):
            if total > limit:
                raise ContextLengthError(
                    f"prompt of {len(tokens)} tokens plus max_new_tokens "
                    f"{params.max_new_tokens} is {total}, more than {what} ({limit})"
                )
        with self._lock:
            if request_id is None:
                request_id = next(self._ids)
            if request_id in self._by_id:
                raise GenerationError(f"request id {request_id!r} is already in use")
            seq = _Seq(request_id, text, tokens, params, callback, device=self.device)
            self._by_id[request_id] = seq
            self._incoming.append(seq)
            self._wake.set()
        return request_id

    def cancel(self, request_id: Any, reason: str = CANCELLED) -> bool:
        """Stop a queued or running request before its next token. It is returned by the
        next `step()` with finish reason `cancelled`. False if it is not known."""
        with self._lock:
            if request_id not in self._by_id:
                return False
            self._cancels.setdefault(request_id, reason)
            self._wake.set()
            return True

    @property
    def active(self) -> int:
        return sum(s is not None for s in self._slots)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._incoming) + len(self._one_pass)

    @property
    def waiting_for_rows(self) -> int:
        """Queued requests that will need a cache row (one-pass requests need none)."""
        with self._lock:
            return len(self._pending) + sum(not s.params.one_pass for s in self._incoming)

    def has_work(self) -> bool:
        with self._lock:
            return bool(self._by_id or self._cancels)

    def wait_for_work(self, timeout: float | None = None) -> bool:
        """Block until there is something to step (a request was added or cancelled), or
        `timeout` seconds pass; for a decode loop that runs in its own thread:

            while running:
                if not decoder.wait_for_work(timeout=1.0):
                    continue
                for completion in decoder.step(): ...
        """
        with self._lock:
            if self._by_id or self._cancels:
                return True
            self._wake.clear()
        return self._wake.wait(timeout)

    # -- the loop ------------------------------------------------------------------------
    def step(self) -> list[Completion]:
        """One token for every running sequence; returns the requests that finished."""
        finished, _ = self._step()
        return finished

    def run(self) -> list[Completion]:
        """Step until every request has finished; completions in finishing order."""
        done: list[Completion] = []
        while self.has_work():
            done.extend(self.step())
        return done

    def follow(self) -> None:
        """Ranks other than 0: mirror rank 0's steps until it calls `close()`."""
        while not self._step()[1]:
            pass

    def close(self) -> None:
        """Rank 0 under tensor parallelism: release the followers from `follow()`. A no-op
        otherwise, or when they were released and no step ran since. A server that keeps
        its decoder between batches (the jobs worker) has them follow again, and steps."""
        if self.par.enabled and self.par.is_leader and not self._closed:
            self._closed = True
            self._sync_control([], {}, shutdown=True)

    @torch.inference_mode()
    def _step(self) -> tuple[list[Completion], bool]:
        self._closed = False  # the followers follow again (see close())
        with self._lock:
            incoming, self._incoming = self._incoming, []
            cancels, self._cancels = self._cancels, {}
        shutdown = False
        if self.par.enabled:
            incoming, cancels, shutdown = self._sync_control(incoming, cancels)
            if shutdown:
                return [], True
        # Queue first, then cancel: a request cancelled in the step it arrives must leave
        # the queue too.
        for seq in incoming:
            (self._one_pass if seq.params.one_pass else self._pending).append(seq)
        finished = [
            self._finish(seq, reason)
            for rid, reason in cancels.items()
            if (seq := self._lookup(rid)) is not None
        ]
        if self._one_pass:
            one_pass, self._one_pass = self._one_pass, []
            finished.extend(self._run_one_pass(one_pass))
        running = [s for s in self._slots if s is not None]
        admitted = []
        while self._pending and self._free:
            seq = self._pending.popleft()
            seq.slot = heapq.heappop(self._free)
            self._slots[seq.slot] = seq
            admitted.append(seq)
        if not running and not admitted:
            return finished, False
        seqs = running + admitted
        try:
            # Decode before prefill: the decode pass writes dummy rows (free or just-admitted
            # slots inside its row range) at position 0, which the prefill then overwrites.
            parts = []
            if running:
                parts.append(self._decode(running))
            if admitted:
                parts.append(self._prefill(admitted))
            logits = torch.cat(parts) if len(parts) > 1 else parts[0]
            if self.par.is_leader:
                tokens, logprobs, tops = self._sample(seqs, logits)
        except RuntimeError as exc:
            if self.par.enabled:
                raise  # the other ranks are inside the same collectives: nothing to save
            # Out of memory for a long prompt, say (torch's errors are RuntimeErrors): the
            # requests of this pass fail, the decoder stays usable for the next ones. Any
            # other exception is the caller's (a time limit raised from a signal handler,
            # an interrupt) and goes up to it untouched.
            log.exception("decode step failed for %d requests", len(seqs))
            for seq in seqs:
                seq.error = f"{type(exc).__name__}: {exc}"
                finished.append(self._finish(seq, ERROR))
            return finished, False
        if self.par.is_leader:
            done_flags = []
            for seq, tok, lp, top in zip(seqs, tokens, logprobs, tops, strict=True):
                reason = self._accept(seq, tok, lp, top)
                done_flags.append(reason is not None)
                if reason is not None:
                    finished.append(self._finish(seq, reason))
            if self.par.enabled:
                msg = torch.tensor(
                    [tokens, [int(d) for d in done_flags]], dtype=torch.long, device=self.device
                )
                self.par.broadcast(msg)
        else:
            msg = torch.empty(2, len(seqs), dtype=torch.long, device=self.device)
            self.par.broadcast(msg)
            for seq, tok, done in zip(seqs, *msg.tolist(), strict=True):
                if done:
                    self._finish(seq, LENGTH)
                else:
                    seq.next_token = tok
        return finished, False

    # -- internals -----------------------------------------------------------------------
    def _lookup(self, request_id: Any) -> _Seq | None:
        with self._lock:
            return self._by_id.get(request_id)

    def _sync_control(
        self, incoming: list[_Seq], cancels: dict[Any, str], shutdown: bool = False
    ) -> tuple[list[_Seq], dict[Any, str], bool]:
        head = torch.tensor(
            [len(incoming), len(cancels), int(shutdown)], dtype=torch.long, device=self.device
        )
        self.par.broadcast(head)
        n_new, n_cancel, stop = head.tolist()
        if n_new or n_cancel:
            payload = ([s.spec() for s in incoming], cancels) if self.par.is_leader else None
            specs, cancels = self.par.broadcast_object(payload)
            if not self.par.is_leader:
                incoming = []
                for rid, prompt, tokens, params in specs:
                    seq = _Seq(rid, prompt, tokens, params)
                    self._by_id[rid] = seq
                    incoming.append(seq)
        return incoming, cancels, bool(stop)

    def _decode(self, running: list[_Seq]) -> torch.Tensor:
        rows = max(s.slot for s in running) + 1
        toks = [0] * rows
        pos = [0] * rows
        for s in running:
            toks[s.slot] = s.next_token
            pos[s.slot] = s.pos
        logits = self.model.decode(
            torch.tensor(toks, device=self.device),
            torch.tensor(pos, device=self.device),
            self.cache,
            span=max(pos) + 1,
        )
        for s in running:
            s.pos += 1
        slots = [s.slot for s in running]
        if slots == list(range(rows)):
            return logits
        return logits[torch.tensor(slots, device=self.device)]

    def _prefill(self, admitted: list[_Seq]) -> torch.Tensor:
        """Prefill the admitted prompts into their cache rows; logits at each one's last
        position, in the order of `admitted`."""
        rows: dict[int, torch.Tensor] = {}
        scoring = [s for s in admitted if s.params.scores_prompt]
        plain = [s for s in admitted if not s.params.scores_prompt]
        for group in _groups(scoring, SCORE_TOKEN_BUDGET) + _groups(plain, PREFILL_TOKEN_BUDGET):
            toks, lens = self._padded(group)
            slots = torch.tensor([s.slot for s in group], device=self.device)
            last = torch.tensor([n - 1 for n in lens], device=self.device)
            if group[0].params.scores_prompt:
                # echo + logprobs wants every prompt position scored.
                full = self.model.prefill(toks, self.cache, slots, None)
                self._score_prompts(group, full)
                logits = full[torch.arange(len(group), device=self.device), last]
            else:
                logits = self.model.prefill(toks, self.cache, slots, last)
            for i, s in enumerate(group):
                s.pos = len(s.prompt_tokens)
                rows[id(s)] = logits[i]
        return torch.stack([rows[id(s)] for s in admitted])

    def _padded(self, group: list[_Seq]) -> tuple[torch.Tensor, list[int]]:
        lens = [len(s.prompt_tokens) for s in group]
        toks = torch.zeros(len(group), max(lens), dtype=torch.long)
        for i, s in enumerate(group):
            toks[i, : lens[i]] = torch.tensor(s.prompt_tokens)
        return toks.to(self.device), lens

    def _score_prompts(self, group: list[_Seq], logits: torch.Tensor) -> None:
        """Prompt log-probabilities from logits at every position ([rows, length, vocab])."""
        if self.par.is_leader:
            for i, s in enumerate(group):
                self._score_prompt(s, logits[i])

    def _score_prompt(self, s: _Seq, logits: torch.Tensor) -> None:
        """One prompt's log-probabilities (and top alternatives) from the logits at its
        positions ([length, vocab]); position 0 has no prediction, hence None."""
        if not s.params.scores_prompt:
            return
        n = len(s.prompt_tokens)
        s.prompt_logprobs = [None]
        s.prompt_top_logprobs = [None] if s.params.top_logprobs else None
        if n < 2:
            return
        lp = torch.log_softmax(logits[: n - 1].float(), dim=-1)
        target = torch.tensor(s.prompt_tokens[1:], device=lp.device)
        s.prompt_logprobs += lp.gather(1, target[:, None])[:, 0].tolist()
        if s.prompt_top_logprobs is not None:
            s.prompt_top_logprobs += _top(lp, s.params.top_logprobs)

    def _run_one_pass(self, seqs: list[_Seq]) -> list[Completion]:
        """Requests of at most one new token, batched without cache rows of their own:
        score the prompt when asked, sample the one token, finish.

        Prompts that differ only in a short ending (a harness's choices after one context)
        share one prefill of their common prefix in a scratch cache and decode their endings
        together; the others go through cache-less forward passes batched by length.
        """
        clusters, alone = ([], seqs) if self.par.enabled else _clusters(seqs)
        done: list[Completion] = []
        for batch in _cluster_batches(clusters, SCORE_TOKEN_BUDGET):
            members = [s for _, group in batch for s in group]
            done += self._score_pass(members, lambda batch=batch: self._shared_logits(batch))
        alone = sorted(alone, key=lambda s: -len(s.prompt_tokens))  # less padding per pass
        for group in _groups(alone, SCORE_TOKEN_BUDGET):
            done += self._score_pass(group, lambda group=group: self._forward_logits(group))
        return done

    def _forward_logits(self, group: list[_Seq]) -> list[torch.Tensor]:
        toks, lens = self._padded(group)
        logits = self.model.forward(toks)
        return [logits[i, :n] for i, n in enumerate(lens)]

    def _shared_logits(self, batch: list[tuple[int, list[_Seq]]]) -> list[torch.Tensor]:
        """Logits at every prompt position of each member ([length, vocab]), computing
        each cluster's common prefix once: prefill it into the first member's row of a
        scratch cache, copy that row's keys and values to the other members' rows, then
        decode every member's ending one position at a time, all rows together."""
        members = [s for _, group in batch for s in group]
        width = max(len(s.prompt_tokens) for s in members)
        cache = self.model.new_cache(len(members), width)
        firsts, row = [], 0
        for _, group in batch:
            firsts.append(row)
            row += len(group)
        heads = torch.zeros(len(batch), max(p for p, _ in batch), dtype=torch.long)
        for c, (p, group) in enumerate(batch):
            heads[c, :p] = torch.tensor(group[0].prompt_tokens[:p])
        shared = self.model.prefill(
            heads.to(self.device), cache, torch.tensor(firsts, device=self.device), None
        )
        starts = []
        for (p, group), first in zip(batch, firsts, strict=True):
            for layer_kv in cache.kv:  # [2, rows, kv_heads, positions, head_dim]
                layer_kv[:, first + 1 : first + len(group), :, :p] = layer_kv[
                    :, first : first + 1, :, :p
                ]
            starts += [p] * len(group)
        steps = max(len(s.prompt_tokens) - p for s, p in zip(members, starts, strict=True))
        tails: list[torch.Tensor] = []
        for j in range(steps):
            toks, pos = [], []
            for s, p in zip(members, starts, strict=True):
                at = min(p + j, len(s.prompt_tokens) - 1)  # ended rows repeat their last
                toks.append(s.prompt_tokens[at])
                pos.append(at)
            tails.append(
                self.model.decode(
                    torch.tensor(toks, device=self.device),
                    torch.tensor(pos, device=self.device),
                    cache,
                    span=max(pos) + 1,
                )
            )
        out = []
        row = 0
        for c, (p, group) in enumerate(batch):
            for s in group:
                k = len(s.prompt_tokens) - p
                ending = torch.stack([tails[j][row] for j in range(k)])
                out.append(torch.cat([shared[c, :p], ending]))
                row += 1
        return out

    def _score_pass(
        self, group: list[_Seq], compute: Callable[[], list[torch.Tensor]]
    ) -> list[Completion]:
        """Run `compute` (logits at every prompt position of each request), score the
        prompts, sample the one new token where asked, finish the requests."""
        done: list[Completion] = []
        sample = [s for s in group if s.params.max_new_tokens > 0]
        picks: dict[int, tuple] = {}
        try:
            logits = compute()
            if self.par.is_leader:
                for s, rows in zip(group, logits, strict=True):
                    self._score_prompt(s, rows)
                if sample:
                    last = torch.stack(
                        [rows[-1] for s, rows in zip(group, logits, strict=True) if s in sample]
                    )
                    for s, *pick in zip(sample, *self._sample(sample, last), strict=True):
                        picks[id(s)] = tuple(pick)
        except RuntimeError as exc:
            if self.par.enabled:
                raise
            log.exception("scoring pass failed for %d requests", len(group))
            for seq in group:
                seq.error = f"{type(exc).__name__}: {exc}"
                done.append(self._finish(seq, ERROR))
            return done
        for seq in group:
            reason: str | None = None
            if id(seq) in picks:
                reason = self._accept(seq, *picks[id(seq)])
            done.append(self._finish(seq, reason or LENGTH))
        return done

    def _sample(
        self, seqs: list[_Seq], logits: torch.Tensor
    ) -> tuple[list[int], list[float | None], list[dict[int, float] | None]]:
        n = len(seqs)
        tokens = [0] * n
        greedy = [i for i, s in enumerate(seqs) if s.params.greedy]
        if greedy:
            rows = logits if len(greedy) == n else logits[greedy]
            for i, t in zip(greedy, _argmax_rows(rows), strict=True):
                tokens[i] = t
        for i, s in enumerate(seqs):
            if not s.params.greedy:
                tokens[i] = _sample_one(logits[i], s.params, s.generator)
        logprobs: list[float | None] = [None] * n
        tops: list[dict[int, float] | None] = [None] * n
        want = [i for i, s in enumerate(seqs) if s.params.logprobs]
        if want:
            lp = torch.log_softmax(logits[want], dim=-1)
            chosen = torch.tensor([tokens[i] for i in want], device=logits.device)
            for i, v in zip(want, lp.gather(1, chosen[:, None])[:, 0].tolist(), strict=True):
                logprobs[i] = v
            k = max(seqs[i].params.top_logprobs for i in want)
            if k:
                for i, top in zip(want, _top(lp, k), strict=True):
                    keep = seqs[i].params.top_logprobs
                    if keep:
                        tops[i] = dict(list(top.items())[:keep])
        return tokens, logprobs, tops

    def _accept(
        self, seq: _Seq, token: int, logprob: float | None, top: dict[int, float] | None = None
    ) -> str | None:
        """Record a sampled token, stream it, and say whether the sequence finished."""
        p = seq.params
        seq.n_sampled += 1
        seq.next_token = token
        reason: str | None = None
        if token == self.eos_id and not p.ignore_eos:
            reason = EOS
        else:
            seq.tokens.append(token)
            if logprob is not None:
                seq.logprobs.append(logprob)
            if top is not None:
                seq.top_logprobs.append(top)
            if self.tokenizer is not None:
                context = seq.prompt_tokens[-_CONTEXT_TOKENS:]
                seq.text = self.tokenizer.decode_continuation(context, seq.tokens)
                seq.text_lens.append(len(seq.text))
            if p.stop:
                reason = self._check_stop(seq)
            if reason is None and seq.n_sampled >= p.max_new_tokens:
                reason = LENGTH
        end = len(seq.text) if reason else _safe_len(seq.text, p.stop)
        delta = seq.text[seq.emitted : end] if end > seq.emitted else ""
        seq.emitted = max(seq.emitted, end)
        if seq.callback is not None:
            event = TokenEvent(
                seq.request_id, seq.n_sampled - 1, token, delta, logprob, reason, top
            )
            try:
                keep_going = seq.callback(event)
            except Cancel:
                keep_going = False
            except Exception as exc:  # a broken callback stops its own request only
                seq.error = f"{type(exc).__name__}: {exc}"
                keep_going = False
            if keep_going is False and reason is None:
                with self._lock:
                    self._cancels.setdefault(seq.request_id, ERROR if seq.error else CANCELLED)
        return reason

    def _check_stop(self, seq: _Seq) -> str | None:
        longest = max(len(s) for s in seq.params.stop)
        # Resume a little before the previous end: the text may have grown into a stop
        # sequence, and up to 3 U+FFFD of an incomplete character may have been replaced.
        start = max(0, seq.scanned - longest - 3)
        hits = [i for s in seq.params.stop if (i := seq.text.find(s, start)) >= 0]
        seq.scanned = len(seq.text)
        if not hits:
            return None
        cut = min(hits)
        seq.text = seq.text[:cut]
        # Keep the tokens needed to produce the text before the stop sequence.
        keep = next(
            (k for k in range(len(seq.tokens) + 1) if (seq.text_lens[k - 1] if k else 0) >= cut),
            len(seq.tokens),
        )
        del seq.tokens[keep:]
        del seq.logprobs[keep:]
        del seq.top_logprobs[keep:]
        return STOP

    def _finish(self, seq: _Seq, reason: str) -> Completion:
        with self._lock:
            self._by_id.pop(seq.request_id, None)
        if seq.slot >= 0:
            self._slots[seq.slot] = None
            heapq.heappush(self._free, seq.slot)
            seq.slot = -1
        else:
            with contextlib.suppress(ValueError):  # already admitted or never queued
                self._pending.remove(seq)
            with contextlib.suppress(ValueError):
                self._one_pass.remove(seq)
        text = seq.text
        if seq.params.echo:
            prompt_text = seq.prompt
            if prompt_text is None and self.tokenizer is not None:
                prompt_text = self.tokenizer.decode(seq.prompt_tokens)
            text = (prompt_text or "") + text
        return Completion(
            request_id=seq.request_id,
            prompt=seq.prompt,
            prompt_tokens=list(seq.prompt_tokens),
            tokens=list(seq.tokens),
            text=text,
            finish_reason=reason,
            logprobs=list(seq.logprobs) if seq.params.logprobs else None,
            prompt_logprobs=seq.prompt_logprobs,
            top_logprobs=(
                list(seq.top_logprobs) if seq.params.logprobs and seq.params.top_logprobs else None
            ),
            prompt_top_logprobs=seq.prompt_top_logprobs,
            error=seq.error,
        )


def token_strings(tokenizer: Tokenizer, ids: Sequence[int], *, first: bool = False) -> list[str]:
    """The text each token contributes, so that the strings join into the decoded text
    (what OpenAI's `tokens` and `text_offset` describe).

    SentencePiece's word marker becomes a space; BOS and EOS contribute nothing; byte
    pieces of one UTF-8 character give the character on its last byte, "" before it. With
    `first` (the tokens start a text, as a prompt does), the leading space SentencePiece
    drops when decoding is dropped too.
    """
    out: list[str] = []
    pending = b""
    strip = first
    for t in ids:
        piece = tokenizer.piece(t)
        if t in (tokenizer.bos_id, tokenizer.eos_id):
            out.append("")
            continue
        if tokenizer.sp.is_byte(t):
            pending += bytes([int(piece[3:5], 16)])
            try:
                text = pending.decode("utf-8")
            except UnicodeDecodeError:
                if len(pending) < 4:
                    out.append("")
                    continue
                text = pending.decode("utf-8", errors="replace")
            pending = b""
        else:
            if pending:
                out[-1] += pending.decode("utf-8", errors="replace")
                pending = b""
            text = piece.replace("\u2581", " ")
        if strip and text:
            text = text.removeprefix(" ")
            strip = False
        out.append(text)
    return out


def _groups(seqs: list[_Seq], budget: int) -> list[list[_Seq]]:
    """Consecutive runs of `seqs` whose padded size (rows x longest) fits `budget`; a
    longer prompt goes alone."""
    groups: list[list[_Seq]] = []
    current: list[_Seq] = []
    width = 0
    for s in seqs:
        n = len(s.prompt_tokens)
        if current and max(width, n) * (len(current) + 1) > budget:
            groups.append(current)
            current, width = [], 0
        current.append(s)
        width = max(width, n)
    if current:
        groups.append(current)
    return groups


# Prompts share a prefill when they have at least this many tokens in common and each
# differs in at most SHARE_MAX_ENDING tokens (decoded one position at a time).
SHARE_MIN_PREFIX = 4
SHARE_MAX_ENDING = 16


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _clusters(seqs: list[_Seq]) -> tuple[list[tuple[int, list[_Seq]]], list[_Seq]]:
    """(prefix length, members) of the prompts worth prefilling once, and the rest.

    Sorted, prompts with a common prefix are neighbours; a cluster's prefix is the shortest
    of its neighbours' common prefixes, and always leaves each member at least one token.
    """
    clusters: list[tuple[int, list[_Seq]]] = []
    alone: list[_Seq] = []
    current: list[_Seq] = []
    prefix = 0

    def close() -> None:
        if len(current) > 1:
            clusters.append((prefix, list(current)))
        else:
            alone.extend(current)

    for s in sorted(seqs, key=lambda s: s.prompt_tokens):
        n = len(s.prompt_tokens)
        if current:
            p = min(prefix, _common(current[-1].prompt_tokens, s.prompt_tokens), n - 1)
            endings = [len(x.prompt_tokens) - p for x in current] + [n - p]
            if p >= SHARE_MIN_PREFIX and max(endings) <= SHARE_MAX_ENDING:
                current.append(s)
                prefix = p
                continue
            close()
        current, prefix = [s], n - 1
    if current:
        close()
    return clusters, alone


def _cluster_batches(
    clusters: list[tuple[int, list[_Seq]]], budget: int
) -> list[list[tuple[int, list[_Seq]]]]:
    """Clusters packed into passes whose scratch cache (rows x longest prompt) fits
    `budget` tokens; a cluster too large for one pass is cut into parts."""
    batches: list[list[tuple[int, list[_Seq]]]] = []
    current: list[tuple[int, list[_Seq]]] = []
    rows = width = 0
    for p, members in clusters:
        longest = max(len(s.prompt_tokens) for s in members)
        per_pass = max(2, budget // longest)
        for i in range(0, len(members), per_pass):
            part = members[i : i + per_pass]
            if current and (rows + len(part)) * max(width, longest) > budget:
                batches.append(current)
                current, rows, width = [], 0, 0
            current.append((p, part))
            rows += len(part)
            width = max(width, longest)
    if current:
        batches.append(current)
    return batches


def _top(lp: torch.Tensor, k: int) -> list[dict[int, float]]:
    """{token id: logprob} of the k likeliest tokens of each row of `lp`, likeliest first."""
    values, ids = torch.topk(lp, min(k, lp.shape[-1]), dim=-1)
    pairs = zip(ids.tolist(), values.tolist(), strict=True)
    return [dict(zip(i, v, strict=True)) for i, v in pairs]


def generate(
    model: Transformer,
    tokenizer: Tokenizer | None,
    prompts: Sequence[str | Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams] | None = None,
    *,
    max_batch_size: int | None = None,
    callback: TokenCallback | None = None,
) -> list[Completion]:
    """Complete every prompt (decoded together); results in the order of `prompts`.

    `callback` gets every TokenEvent, with `request_id` the prompt's index; returning
    False or raising Cancel stops that prompt only.
    """
    if isinstance(params, SamplingParams) or params is None:
        params = [params or SamplingParams()] * len(prompts)
    if len(params) != len(prompts):
        raise ValueError("one SamplingParams per prompt, or one for all")
    if not prompts:
        return []
    # Size the cache for this batch only: allocation is part of the latency here.
    need = 0
    for prompt, p in zip(prompts, params, strict=True):
        n = len(tokenizer.encode(prompt)) if isinstance(prompt, str) and tokenizer else len(prompt)
        need = max(need, n + p.max_new_tokens)
    decoder = BatchDecoder(
        model,
        tokenizer,
        max_batch_size=min(max_batch_size or DEFAULT_BATCH, len(prompts)),
        max_seq_len=min(need, model.args.max_seq_len),
    )
    for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        decoder.add(prompt, p, callback=callback, request_id=i)
    results = {c.request_id: c for c in decoder.run()}
    decoder.close()
    return [results[i] for i in range(len(prompts))]
