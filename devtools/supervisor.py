"""A small process supervisor for `make run`: restarts what crashes, stops in order.

Each service runs in a process group of its own, so the terminal's Ctrl-C reaches only
the supervisor, which then decides who stops when:

- A service that exits while the stack runs is started again after a backoff (1 s,
  doubling to 30 s while it keeps dying young, back to 1 s once it has run a while), with
  a log line saying how it ended. What remains of its process group (a killed Celery
  worker's pool children) is killed first. After `GIVE_UP_AFTER` quick deaths in a row
  the stack stops: a service that cannot start (a port taken) should not spin forever.
- Ctrl-C (SIGINT, SIGTERM or SIGHUP) stops the services tier by tier (the order of
  `stop_order`): each gets its stop signals in turn, each followed by a grace period,
  then SIGKILL for its whole group. A second Ctrl-C kills everything at once.

Every line a child writes is printed with the time and the service's name; the
supervisor's own lines are marked `supervisor`. Plain standard library.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# A service that ran this long before dying is not crash-looping: its backoff starts over.
HEALTHY_AFTER = 30.0
# A death within this many seconds of the start counts towards giving up.
QUICK_DEATH = 10.0
GIVE_UP_AFTER = 5


@dataclass
class Service:
    name: str
    argv: list[str]
    # (signal, seconds to wait for the exit) in turn; SIGKILL to the group after the last.
    stop_steps: list[tuple[signal.Signals, float]] = field(
        default_factory=lambda: [(signal.SIGTERM, 3.0)]
    )
    # Send the stop signals to the whole group, or to the main process only (a Celery
    # worker's pool children must not get SIGTERM: the main process winds them down).
    signal_group: bool = True
    proc: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    backoff: float = BACKOFF_FIRST
    quick_deaths: int = 0
    restarts: int = 0


def _now() -> str:
    t = time.time()
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t % 1 * 1000):03d}"


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _die_with_parent() -> None:
    # Linux: if the supervisor itself is killed (SIGKILL), its services get SIGTERM rather
    # than living on as orphans holding the stack's ports.
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _group_has_live_members(pgid: int) -> bool:
    """Whether a process of the group still runs; zombies do not count.

    A service's orphans (gunicorn workers killed by their master as it exits) wait for
    PID 1 to reap them, which some inits do late: `killpg(pgid, 0)` would count them.
    """
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
        fields = stat.rsplit(b")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


class Supervisor:
    def __init__(
        self,
        services: list[Service],
        *,
        stop_order: list[list[str]],
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        out=None,
    ):
        names = [s.name for s in services]
        assert sorted(names) == sorted(n for tier in stop_order for n in tier), stop_order
        self.services = {s.name: s for s in services}
        self.stop_order = stop_order
        self.env = env
        self.cwd = cwd
        self.out = out or sys.stdout
        self.width = max(len(n) for n in [*names, "supervisor"])
        self.selector = selectors.DefaultSelector()
        self.partial: dict[int, tuple[str, bytes]] = {}
        self.signals: list[int] = []

    # --- output ---------------------------------------------------------------------
    def log(self, name: str, line: str) -> None:
        self.out.write(f"{_now()} {name:<{self.width}} | {line}\n")
        self.out.flush()

    def say(self, line: str) -> None:
        self.log("supervisor", line)

    def _pump(self, timeout: float) -> None:
        """Print what the children wrote, waiting at most `timeout` for something."""
        try:
            events = self.selector.select(timeout)
        except InterruptedError:  # a signal; its handler has run
            return
        for key, _ in events:
            fd = key.fd
            name, pending = self.partial[fd]
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # every holder of the pipe has gone
                if pending:
                    self.log(name, pending.decode(errors="replace"))
                self.selector.unregister(fd)
                os.close(fd)
                del self.partial[fd]
                continue
            *lines, rest = (pending + data).split(b"\n")
            for line in lines:
                self.log(name, line.rstrip(b"\r").decode(errors="replace"))
            self.partial[fd] = (name, rest)

    # --- processes ------------------------------------------------------------------
    def _start(self, service: Service) -> None:
        read_fd, write_fd = os.pipe()
        try:
            service.proc = subprocess.Popen(
                service.argv,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                env=self.env,
                cwd=self.cwd,
                process_group=0,
                # preexec_fn is safe here: the supervisor runs a single thread.
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        self.partial[read_fd] = (service.name, b"")
        self.selector.register(read_fd, selectors.EVENT_READ)
        service.started_at = time.monotonic()
        service.restart_at = None
        self.say(f"started {service.name} (pid {service.proc.pid})")

    def _kill_group(self, service: Service) -> None:
        if service.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(service.proc.pid, signal.SIGKILL)

    def _group_alive(self, service: Service) -> bool:
        if service.proc is None:
            return False
        return _group_has_live_members(service.proc.pid)

    def _signal(self, service: Service, sig: signal.Signals) -> None:
        assert service.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if service.signal_group:
                os.killpg(service.proc.pid, sig)
            else:
                os.kill(service.proc.pid, sig)

    def _on_death(self, service: Service, code: int) -> bool:
        """Log the death and schedule the restart; False when the service is given up on."""
        lived = time.monotonic() - service.started_at
        self._kill_group(service)  # a worker's orphaned pool children, say
        if lived >= HEALTHY_AFTER:
            service.backoff = BACKOFF_FIRST
        service.quick_deaths = service.quick_deaths + 1 if lived < QUICK_DEATH else 0
        died = (
            f"{service.name} (pid {service.proc.pid}) died: {_describe_exit(code)} after "
            f"{lived:.1f} s"
        )
        if service.quick_deaths >= GIVE_UP_AFTER:
            self.say(
                f"{died}; that is {service.quick_deaths} times in a row within "
                f"{QUICK_DEATH:.0f} s of starting: giving up (see its lines above)"
            )
            return False
        service.restarts += 1
        delay = service.backoff
        service.backoff = min(service.backoff * 2, BACKOFF_MAX)
        service.restart_at = time.monotonic() + delay
        self.say(f"{died}; restarting in {delay:g} s (restart {service.restarts})")
        return True

    def _handle_signal(self, signum, _frame) -> None:
        self.signals.append(signum)

    # --- the two phases -------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._handle_signal)
        for service in self.services.values():
            self._start(service)
        status = 0
        while not self.signals:
            self._pump(0.2)
            now = time.monotonic()
            for service in self.services.values():
                if service.restart_at is not None:
                    if now >= service.restart_at:
                        self._start(service)
                    continue
                code = service.proc.poll() if service.proc else None
                if code is None:
                    continue
                if not self._on_death(service, code):
                    status = 1
                    self.signals.append(signal.SIGTERM)
                    break
        if status == 0:
            self.say(f"got {signal.Signals(self.signals[0]).name}: stopping (again to kill now)")
        self.stop()
        return status

    def stop(self) -> None:
        began = time.monotonic()
        handled = len(self.signals)
        for tier in self.stop_order:
            services = [self.services[n] for n in tier]
            self._stop_tier(services, lambda: len(self.signals) > handled)
        self._pump(0.1)
        left = [s.name for s in self.services.values() if self._group_alive(s)]
        if left:
            self.say(f"still running after the stop: {', '.join(left)}")
        self.say(f"stopped everything in {time.monotonic() - began:.1f} s")

    def _stop_tier(self, services: list[Service], forced) -> None:
        began = time.monotonic()
        # service name -> (index of its current stop step, deadline of that step)
        steps: dict[str, tuple[int, float]] = {}
        for service in services:
            service.restart_at = None
            if service.proc is None or service.proc.poll() is not None:
                self._kill_group(service)
                continue
            sig, grace = service.stop_steps[0]
            self.say(f"stopping {service.name} ({sig.name}, up to {grace:.0f} s)")
            self._signal(service, sig)
            steps[service.name] = (0, time.monotonic() + grace)
        while steps:
            self._pump(0.05)
            now = time.monotonic()
            for name, (index, deadline) in list(steps.items()):
                service = self.services[name]
                code = service.proc.poll()
                if code is not None and not self._group_alive(service):
                    self.say(f"{name} stopped ({_describe_exit(code)}) in {now - began:.1f} s")
                    del steps[name]
                    continue
                if code is not None:
                    # The main process is gone; what it left in its group goes too.
                    self._kill_group(service)
                    continue
                if index < 0:  # SIGKILL sent: only an uninterruptible sleep outlasts it
                    if now >= deadline:
                        self.say(f"{name} (pid {service.proc.pid}) did not die; leaving it")
                        del steps[name]
                    continue
                if now < deadline and not forced():
                    continue
                if index + 1 < len(service.stop_steps) and not forced():
                    sig, grace = service.stop_steps[index + 1]
                    self.say(f"{name} still running: {sig.name}, up to {grace:.0f} s")
                    self._signal(service, sig)
                    steps[name] = (index + 1, now + grace)
                else:
                    self.say(f"{name} still running: SIGKILL")
                    self._kill_group(service)
                    steps[name] = (-1, now + 5)
