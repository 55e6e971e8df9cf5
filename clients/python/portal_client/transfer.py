"""Parallel ranged download of one file, resumable, SHA-256 checked while it streams.

A file is fetched into `<name>.part` in chunks by a few threads. Next to it,
`<name>.part.state` holds one 8-byte counter per chunk: how many bytes of that chunk are
on disk. A counter is written after each MiB of its chunk lands (both are in the page
cache, so a killed process loses at most a MiB per thread), which is what lets a re-run
continue where the last one stopped. The calling thread hashes the contiguous prefix of
the file as it fills in, so the SHA-256 is known as soon as the last byte lands.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import requests
from tqdm import tqdm

# Network reads land in a per-thread buffer of this size, which stays in the CPU cache
# between the copy from the socket and the copy into the file: on loopback, 1 MiB blocks
# were a third slower than 256 KiB ones (bench/downloads.py).
BLOCK = 256 * 1024
MiB = 1024 * 1024
# Each worker asks for one chunk at a time. Every request costs the S3 server a signature
# check and a lookup, so on loopback 64 MiB chunks beat 16 MiB ones by about a tenth;
# resuming is not coarser for it, since the counters advance once a MiB.
CHUNK = 64 * MiB
_MAGIC = b"PORTALDL1"
_HEADER = 128
_COUNTER = struct.Struct("<Q")


# A presigned URL is a bearer credential until it expires, and requests' errors quote the
# URL they failed on: what the client prints names the object, never its signed query.
_SIGNED_QUERY = re.compile(
    r"\?[^\s'\"<>]*(?:X-Amz-|Signature=|AWSAccessKeyId=|token=)[^\s'\"<>]*", re.I
)
_PORTAL_TOKEN = re.compile(r"\bllp_[A-Za-z0-9_-]{4,}")


def redact(text: str) -> str:
    """`text` without signed query strings or portal access tokens."""
    text = _SIGNED_QUERY.sub("?[signed query removed]", text)
    return _PORTAL_TOKEN.sub("llp_[removed]", text)


def human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return str(count)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def is_complete(dest: Path, *, size: int, sha256: str) -> bool:
    return dest.is_file() and dest.stat().st_size == size and sha256_of(dest) == sha256


def _paths(dest: Path) -> tuple[Path, Path]:
    return dest.with_name(dest.name + ".part"), dest.with_name(dest.name + ".part.state")


class _State:
    """The per-chunk byte counters of a partial download."""

    def __init__(self, path: Path, *, sha256: str, size: int, chunk_size: int):
        self.chunks = max(1, -(-size // chunk_size))
        header = f"{_MAGIC.decode()} {sha256} {size} {chunk_size}".encode().ljust(_HEADER)
        fresh = True
        if path.exists() and path.stat().st_size == _HEADER + 8 * self.chunks:
            with open(path, "rb") as handle:
                fresh = handle.read(_HEADER) != header
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fresh:  # overwritten, not truncated to 0 first: see _Download.__init__
            os.pwrite(self.fd, header + bytes(8 * self.chunks), 0)
            os.ftruncate(self.fd, _HEADER + 8 * self.chunks)
        raw = os.pread(self.fd, 8 * self.chunks, _HEADER)
        self.done = [_COUNTER.unpack_from(raw, 8 * i)[0] for i in range(self.chunks)]
        self.fresh = fresh

    def record(self, index: int, value: int) -> None:
        os.pwrite(self.fd, _COUNTER.pack(value), _HEADER + 8 * index)

    def close(self) -> None:
        os.close(self.fd)


def bytes_present(dest: Path, size: int) -> int:
    """Bytes of `dest` a resumed download would not fetch again (for the free-space check)."""
    _, state_path = _paths(dest)
    if not state_path.exists():
        return 0
    raw = state_path.read_bytes()[_HEADER:]
    return min(size, sum(_COUNTER.unpack_from(raw, i)[0] for i in range(0, len(raw) - 7, 8)))


def signed_lifetime(url: str) -> float | None:
    """Seconds a presigned URL is valid for from its signing (SigV4 `X-Amz-Expires`), or
    None when it does not say."""
    values = parse_qs(urlsplit(url).query).get("X-Amz-Expires")
    try:
        return float(values[0]) if values else None
    except ValueError:
        return None


# A URL is renewed before a request once less than this share of its lifetime is left:
# S3 checks the signature's expiry when a request starts, so a long ranged GET begun in
# time finishes, and no request is spent on a 403.
RENEW_WHEN_LEFT = 0.25


class _SignedUrl:
    """The current signed S3 URL, shared by the threads.

    The portal signs URLs for a short time (two minutes by default), so that one copied
    out of a log or a shell history is soon useless. Before each request the threads ask
    for the URL; it is fetched afresh through the portal's /dl/ link when the last one is
    near its end (and at once when S3 refuses it), so a download of any length never
    holds a URL longer than the portal allows.
    """

    def __init__(self, fresh: Callable[[], str], clock: Callable[[], float] = time.monotonic):
        self._fresh = fresh
        self._clock = clock
        self._lock = threading.Lock()
        self._url: str | None = None
        self._renew_at = float("inf")
        self._generation = 0

    def get(self) -> tuple[str, int]:
        with self._lock:
            if self._url is None or self._clock() >= self._renew_at:
                fetched_at = self._clock()
                self._url = self._fresh()
                lifetime = signed_lifetime(self._url)
                self._renew_at = (
                    fetched_at + lifetime * (1 - RENEW_WHEN_LEFT)
                    if lifetime is not None
                    else float("inf")
                )
                self._generation += 1
            return self._url, self._generation

    def renew(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._url = None


class _Retryable(Exception):
    pass


class _Hasher:
    """SHA-256 of the file's contiguous prefix, fed in order by the thread that waits.

    It reads the bytes back from the page cache into one reused buffer (no allocation per
    read), and hashlib lets go of the GIL while it works, so the hashing runs beside the
    network threads. A read-only memory map would save the copy, and was faster for 1 GiB
    files, but from 2 GiB on, once the kernel starts writing dirty pages back during the
    download, every mapped page costs the write-back work: 1.5x slower in all.
    """

    STEP = MiB  # fits the CPU cache, where the bytes just written still are

    # Hashed bytes leave the page cache in windows of DROP bytes once KEEP_CACHED behind
    # the hashing: see _drop_behind.
    DROP = 32 * MiB
    KEEP_CACHED = 64 * MiB

    def __init__(self, fd: int):
        self.fd = fd
        self.digest = hashlib.sha256()
        self.hashed = 0
        self._buffer = memoryview(bytearray(self.STEP))
        self._next_drop = self.DROP  # the end of the next window to write back

    def catch_up(self, ready: int) -> None:
        """Hash what is on disk up to `ready`."""
        while self.hashed < ready:
            want = self._buffer[: min(self.STEP, ready - self.hashed)]
            if hasattr(os, "preadv"):
                count = os.preadv(self.fd, [want], self.hashed)
                block = want[:count]
            else:  # no preadv: macOS before 11
                block = os.pread(self.fd, len(want), self.hashed)
                count = len(block)
            if not count:
                raise OSError("the partial file is shorter than recorded")
            self.digest.update(block)
            self.hashed += count
            self._drop_behind()

    def _drop_behind(self) -> None:
        """Write back, then forget, the hashed bytes more than KEEP_CACHED behind.

        A download of many GB otherwise fills the page cache with dirty pages until the
        kernel's background write-back starts, and from then on every write costs several
        times more (writing 4 GiB took 3 to 5.7 s of CPU instead of 1.7 s here). A window's
        first POSIX_FADV_DONTNEED starts its write-back; a second one, three windows later,
        drops its pages, clean by then, so the next writes reuse them. Nothing unwritten is
        lost, and the hashed bytes are not read again. (Keeping up to 1 GiB cached instead
        measured no better: other processes' dirty pages start the write-back just as well.)
        """
        if not hasattr(os, "posix_fadvise"):  # macOS, Windows
            return
        while self.hashed >= self._next_drop + self.KEEP_CACHED:
            start = self._next_drop - self.DROP
            os.posix_fadvise(self.fd, start, self.DROP, os.POSIX_FADV_DONTNEED)
            if start >= 3 * self.DROP:
                os.posix_fadvise(self.fd, start - 3 * self.DROP, self.DROP, os.POSIX_FADV_DONTNEED)
            self._next_drop += self.DROP


def _body_blocks(response: requests.Response, remaining: int, buffer: memoryview):
    """The response body in blocks of at most len(buffer) bytes, at most `remaining` in all.

    Reads straight into `buffer` through the standard library's response when it is there
    (no allocation per block: a third less CPU than iter_content); each block is only valid
    until the next one is read.
    """
    raw = getattr(response.raw, "_fp", None)
    if (
        raw is None
        or not hasattr(raw, "readinto")
        or response.raw.headers.get("Content-Encoding", "identity") not in ("", "identity")
    ):
        for block in response.iter_content(len(buffer)):
            yield block[:remaining]
            remaining -= len(block)
            if remaining <= 0:
                return
        return
    while remaining > 0:
        count = raw.readinto(buffer[: min(len(buffer), remaining)])
        if not count:
            return
        yield buffer[:count]
        remaining -= count


def _release(response: requests.Response) -> None:
    """Hand a fully read response's connection back to its pool, for the next chunk.

    The body was read through the standard library's response (see `_body_blocks`), which
    requests does not see: left alone, closing the response would close the connection.
    """
    raw = getattr(response.raw, "_fp", None)
    if raw is not None and getattr(raw, "isclosed", lambda: False)():
        response.raw.release_conn()


MAX_BACKOFF_SECONDS = 8.0  # a store back after an outage is tried again within 8 s


class RetryBudget:
    """Backoff (1 s doubling to MAX_BACKOFF_SECONDS) within a time budget and, optionally, a
    number of tries. `wait()` sleeps before the next try and returns True, or returns False at once
    when that try would start after the budget: no sleep before giving up."""

    def __init__(self, *, seconds: float, tries: int | None = None, sleep=time.sleep):
        self.seconds, self.tries, self.sleep = seconds, tries, sleep
        self.reset()

    def reset(self) -> None:
        """Progress was made: the budget starts again."""
        self.started, self.failures, self.delay = time.monotonic(), 0, 1.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait(self, *, at_least: float = 0.0) -> bool:
        self.failures += 1
        delay = max(self.delay, at_least)
        if self.tries is not None and self.failures >= self.tries:
            return False
        if self.elapsed + delay > self.seconds:
            return False
        self.sleep(delay)
        self.delay = min(self.delay * 2, MAX_BACKOFF_SECONDS)
        return True


def download_file(
    *,
    dest: Path,
    size: int,
    sha256: str,
    fresh_url: Callable[[], str],
    session_factory: Callable[[], requests.Session],
    workers: int = 4,
    chunk_size: int = CHUNK,
    retries: int | None = None,
    retry_seconds: float = 300.0,
    timeout: float = 30.0,
    progress: bool = True,
    on_receive: Callable[[int], None] | None = None,
    error_class: type = RuntimeError,
) -> int:
    """Fetch one file to `dest`, verified; returns the bytes received in this call."""
    return _Download(
        dest=Path(dest),
        size=size,
        sha256=sha256,
        fresh_url=fresh_url,
        session_factory=session_factory,
        workers=workers,
        chunk_size=chunk_size,
        retries=retries,
        retry_seconds=retry_seconds,
        timeout=timeout,
        progress=progress,
        on_receive=on_receive,
        error_class=error_class,
    ).run()


class _Download:
    """One file: worker threads fetch the missing chunks, the calling thread hashes.

    Each worker fetches one chunk at a time with a ranged GET on its own kept-alive
    connection and writes it in place, recording its progress once a MiB. The calling thread
    hashes the file's contiguous prefix as it fills in, so the SHA-256 is known as soon as
    the last byte lands.
    """

    def __init__(self, *, dest: Path, size: int, sha256: str, fresh_url, session_factory,
                 workers: int, chunk_size: int, retries: int | None, retry_seconds: float,
                 timeout: float, progress: bool,
                 on_receive, error_class: type):  # fmt: skip
        self.dest, self.size, self.sha256 = dest, size, sha256
        self.session_factory, self.on_receive = session_factory, on_receive
        self.chunk_size, self.retries, self.timeout = chunk_size, retries, timeout
        self.retry_seconds = retry_seconds
        self.error_class = error_class
        self.part_path, self.state_path = _paths(dest)
        self.state = _State(self.state_path, sha256=sha256, size=size, chunk_size=chunk_size)
        self.done = self.state.done
        # A fresh start overwrites whatever an older `.part` holds rather than truncating it
        # to 0 first: on ext4, truncating to 0 makes close() write back the whole file
        # (auto_da_alloc), a quarter of a second per GiB on the test machine.
        self.fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT, 0o644)
        if os.fstat(self.fd).st_size != size:
            os.ftruncate(self.fd, size)  # sparse: the chunks land at their offsets
        self.pending = [i for i in range(self.state.chunks) if not self._complete(i)]
        self.workers = max(1, min(workers, len(self.pending) or 1))
        self.cond = threading.Condition()
        # One pwrite at a time: the kernel serializes writes to a file anyway, and a waiter
        # on its inode lock spins on a core (measured: 1.3x slower with 2 workers) where one
        # on this lock sleeps.
        self.write_lock = threading.Lock()
        self.stop = threading.Event()
        self.url = _SignedUrl(fresh_url)
        self.hasher = _Hasher(self.fd)
        self.received = 0
        self.frontier_chunk = 0  # the first chunk not complete yet
        self.local = threading.local()
        self.sessions: list[requests.Session] = []
        self.bar = tqdm(
            total=size,
            initial=sum(self.done),
            desc=dest.name,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            disable=not progress,
            leave=True,
        )

    # --- chunks ------------------------------------------------------------------------------

    def _bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_size
        return start, min(start + self.chunk_size, self.size)

    def _complete(self, index: int) -> bool:
        start, end = self._bounds(index)
        return self.done[index] >= end - start

    def _recorded(self) -> int:
        """End of the contiguous prefix that is on disk and recorded (hold `cond`)."""
        while self.frontier_chunk < self.state.chunks:
            if not self._complete(self.frontier_chunk):
                return self._bounds(self.frontier_chunk)[0] + self.done[self.frontier_chunk]
            self.frontier_chunk += 1
        return self.size

    # --- worker threads ------------------------------------------------------------------------

    def _thread_tools(self) -> tuple[requests.Session, memoryview]:
        """This thread's session (its connection is reused chunk after chunk) and buffer."""
        if not hasattr(self.local, "session"):
            self.local.session = self.session_factory()
            self.local.buffer = memoryview(bytearray(BLOCK))
            with self.cond:
                self.sessions.append(self.local.session)
        return self.local.session, self.local.buffer

    def _commit(self, index: int, offset: int) -> None:
        """Record the bytes of chunk `index` written up to `offset`; wake the hashing thread."""
        start = self._bounds(index)[0]
        with self.cond:
            new = offset - start - self.done[index]
            if new > 0:
                self.received += new
                self.bar.update(new)
                self.done[index] += new
                self.state.record(index, self.done[index])
                self.cond.notify_all()

    def _fetch(self, index: int) -> None:
        start, end = self._bounds(index)
        session, buffer = self._thread_tools()
        # Each worker has its own budget; bytes received renew it.
        budget = RetryBudget(seconds=self.retry_seconds, tries=self.retries, sleep=self.stop.wait)
        while not self.stop.is_set():
            with self.cond:
                offset = start + self.done[index]
            if offset >= end:
                return
            signed, generation = self.url.get()
            try:
                with session.get(
                    signed,
                    headers={"Range": f"bytes={offset}-{end - 1}"},
                    stream=True,
                    timeout=self.timeout,
                ) as response:
                    if response.status_code in (401, 403):
                        self.url.renew(generation)  # expired or revoked: ask the portal again
                        raise _Retryable(f"S3 refused the signed URL (HTTP {response.status_code})")
                    if response.status_code != 206:
                        raise _Retryable(f"S3 answered HTTP {response.status_code}")
                    if self._receive(response, index, offset, end, buffer):
                        return
                    raise _Retryable("the connection closed early")
            except (requests.RequestException, _Retryable) as exc:
                with self.cond:
                    if start + self.done[index] > offset:
                        budget.reset()  # progress renews the budget
                if not budget.wait():
                    raise self.error_class(
                        f"{self.dest.name}: download failed after retrying for "
                        f"{budget.elapsed:.0f} s ({redact(str(exc))}). Run the same command "
                        "again to resume."
                    ) from None

    def _receive(self, response, index: int, offset: int, end: int, buffer) -> bool:
        """Write the body at `offset`; True once the chunk is complete or the run is stopping."""
        told = offset  # recorded, and the hashing thread woken, once a MiB
        try:
            for block in _body_blocks(response, end - offset, buffer):
                if self.stop.is_set():
                    return True
                if self.on_receive:
                    self.on_receive(len(block))
                with self.write_lock:
                    while block:  # a regular file may take less than asked
                        written = os.pwrite(self.fd, block, offset)
                        block, offset = block[written:], offset + written
                if offset - told >= MiB or offset >= end:
                    self._commit(index, offset)
                    told = offset
                if offset >= end:
                    _release(response)
                    return True
            return False
        finally:
            self._commit(index, offset)  # what landed before a failure is kept

    # --- the calling thread ----------------------------------------------------------------------

    def run(self) -> int:
        pool = ThreadPoolExecutor(max_workers=self.workers)
        futures = [pool.submit(self._fetch, i) for i in self.pending]
        try:
            while self.hasher.hashed < self.size:
                with self.cond:
                    ready = self._recorded()
                    if ready <= self.hasher.hashed:
                        failed = next((f for f in futures if f.done() and f.exception()), None)
                        if failed is not None:
                            raise failed.exception()
                        if all(f.done() for f in futures):
                            break
                        self.cond.wait(0.2)
                        continue
                self.hasher.catch_up(ready)
            for future in futures:
                future.result()  # a worker's error, now that every worker has stopped
            if self.hasher.hashed < self.size:
                raise self.error_class(f"{self.dest.name}: the download stopped short.")
        except BaseException:
            self.stop.set()
            with self.cond:
                self.cond.notify_all()
            pool.shutdown(wait=True, cancel_futures=True)
            self._close()
            raise
        pool.shutdown(wait=True)
        self._close()
        digest = self.hasher.digest.hexdigest()
        if digest != self.sha256:
            self.part_path.unlink(missing_ok=True)
            self.state_path.unlink(missing_ok=True)
            raise self.error_class(
                f"{self.dest.name}: SHA-256 {digest} does not match the portal's "
                f"{self.sha256}. The damaged file was removed; run the command again."
            )
        os.replace(self.part_path, self.dest)
        self.state_path.unlink(missing_ok=True)
        return self.received

    def _close(self) -> None:
        self.bar.close()
        os.close(self.fd)
        self.state.close()
        for session in self.sessions:
            session.close()
