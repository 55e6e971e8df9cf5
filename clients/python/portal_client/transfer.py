"""Parallel ranged download of one file, resumable, SHA-256 checked while it streams.

A file is fetched into `<name>.part` in chunks by a few threads. Next to it,
`<name>.part.state` holds one 8-byte counter per chunk: how many bytes of that chunk are
on disk. A counter is written right after its bytes (both are in the page cache, so a
killed process loses at most the block in flight per thread), which is what lets a
re-run continue where the last one stopped. The main thread hashes the contiguous
prefix of the file as it fills in, so the SHA-256 is known as soon as the last byte lands.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from tqdm import tqdm

BLOCK = 1024 * 1024
_MAGIC = b"PORTALDL1"
_HEADER = 128
_COUNTER = struct.Struct("<Q")


def human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return str(count)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 * BLOCK):
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
        if fresh:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, header + bytes(8 * self.chunks), 0)
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


class _SignedUrl:
    """The current signed S3 URL, shared by the threads; renewed once when it stops working."""

    def __init__(self, fresh: Callable[[], str]):
        self._fresh = fresh
        self._lock = threading.Lock()
        self._url: str | None = None
        self._generation = 0

    def get(self) -> tuple[str, int]:
        with self._lock:
            if self._url is None:
                self._url = self._fresh()
                self._generation += 1
            return self._url, self._generation

    def renew(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._url = None


class _Retryable(Exception):
    pass


class _Hasher:
    """SHA-256 of the file's contiguous prefix, fed in order.

    The thread whose block lands exactly at the frontier hashes it from memory, right after
    writing it; bytes that other threads wrote ahead are read back (from the page cache) by
    `catch_up` once the frontier reaches them.
    """

    def __init__(self, fd: int):
        self.fd = fd
        self.lock = threading.Lock()
        self.digest = hashlib.sha256()
        self.hashed = 0

    def feed(self, offset: int, block) -> None:
        if offset != self.hashed:  # unlocked read: only a hint, checked again below
            return
        with self.lock:
            if offset == self.hashed:
                self.digest.update(block)
                self.hashed += len(block)

    def catch_up(self, ready: int, *, step: int = 4 * BLOCK) -> None:
        """Hash what is on disk up to `ready`, one step per lock hold."""
        while True:
            with self.lock:
                if self.hashed >= ready:
                    return
                data = os.pread(self.fd, min(step, ready - self.hashed), self.hashed)
                if not data:
                    raise OSError("the partial file is shorter than recorded")
                self.digest.update(data)
                self.hashed += len(data)


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


def download_file(
    *,
    dest: Path,
    size: int,
    sha256: str,
    fresh_url: Callable[[], str],
    session_factory: Callable[[], requests.Session],
    workers: int = 4,
    chunk_size: int = 16 * 1024 * 1024,
    retries: int = 6,
    timeout: float = 30.0,
    progress: bool = True,
    on_receive: Callable[[int], None] | None = None,
    error_class: type = RuntimeError,
) -> int:
    """Fetch one file to `dest`, verified; returns the bytes received in this call."""
    dest = Path(dest)
    part_path, state_path = _paths(dest)
    state = _State(state_path, sha256=sha256, size=size, chunk_size=chunk_size)
    fd = os.open(part_path, os.O_RDWR | os.O_CREAT, 0o644)
    if state.fresh:
        os.ftruncate(fd, 0)
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)  # sparse: the chunks land at their offsets

    done = state.done
    cond = threading.Condition()
    stop = threading.Event()
    url = _SignedUrl(fresh_url)
    hasher = _Hasher(fd)
    received = [0]
    bar = tqdm(
        total=size,
        initial=sum(done),
        desc=dest.name,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not progress,
        leave=True,
    )

    def bounds(index: int) -> tuple[int, int]:
        start = index * chunk_size
        return start, min(start + chunk_size, size)

    def fetch(index: int) -> None:
        start, end = bounds(index)
        buffer = memoryview(bytearray(BLOCK))
        attempt, delay = 0, 1.0
        while not stop.is_set():
            with cond:
                offset = start + done[index]
            if offset >= end:
                return
            signed, generation = url.get()
            try:
                with session_factory().get(
                    signed,
                    headers={"Range": f"bytes={offset}-{end - 1}"},
                    stream=True,
                    timeout=timeout,
                ) as response:
                    if response.status_code in (401, 403):
                        url.renew(generation)  # expired or revoked signature: ask the portal
                        raise _Retryable(f"S3 refused the signed URL (HTTP {response.status_code})")
                    if response.status_code != 206:
                        raise _Retryable(f"S3 answered HTTP {response.status_code}")
                    for block in _body_blocks(response, end - offset, buffer):
                        if stop.is_set():
                            return
                        if on_receive:
                            on_receive(len(block))
                        os.pwrite(fd, block, offset)
                        hasher.feed(offset, block)
                        offset += len(block)
                        with cond:
                            done[index] = offset - start
                            state.record(index, done[index])
                            received[0] += len(block)
                            cond.notify_all()
                        bar.update(len(block))
                        attempt, delay = 0, 1.0  # progress resets the retry budget
                        if offset >= end:
                            return
                    raise _Retryable("the connection closed early")
            except (requests.RequestException, _Retryable) as exc:
                attempt += 1
                if attempt > retries:
                    raise error_class(
                        f"{dest.name}: download failed after {retries} retries ({exc}). Run "
                        "the same command again to resume."
                    ) from None
                stop.wait(delay)
                delay = min(delay * 2, 30)

    pending = [i for i in range(state.chunks) if done[i] < bounds(i)[1] - bounds(i)[0]]
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(pending) or 1)))
    futures = [pool.submit(fetch, i) for i in pending]
    first_open = 0

    def recorded() -> int:
        """End of the contiguous prefix that is on disk and recorded."""
        nonlocal first_open
        with cond:
            while first_open < state.chunks:
                start, end = bounds(first_open)
                if done[first_open] < end - start:
                    return start + done[first_open]
                first_open += 1
        return size

    try:
        while hasher.hashed < size:
            ready = recorded()
            if ready > hasher.hashed:
                hasher.catch_up(ready)
                continue
            for future in futures:
                if future.done() and future.exception():
                    raise future.exception()
            if all(f.done() for f in futures):
                if recorded() < size:
                    raise error_class(f"{dest.name}: the download stopped short.")
                continue  # a worker hashed its last block after recording it
            with cond:
                cond.wait(0.2)
        for future in futures:
            future.result()
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        os.close(fd)
        state.close()
        bar.close()
        raise
    pool.shutdown(wait=True)
    bar.close()
    os.close(fd)
    state.close()
    digest = hasher.digest.hexdigest()
    if digest != sha256:
        part_path.unlink(missing_ok=True)
        state_path.unlink(missing_ok=True)
        raise error_class(
            f"{dest.name}: SHA-256 {digest} does not match the portal's {sha256}. "
            "The damaged file was removed; run the command again."
        )
    os.replace(part_path, dest)
    state_path.unlink(missing_ok=True)
    return received[0]
