"""A kernel load killed half-way (a worker's kill -9 inside torch's builder) must not wedge
every later load on the machine: the lock torch leaves behind is removed by the next loader,
and two loaders at once still take turns."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from inference.llama import cpu_kernels

pytestmark = pytest.mark.skipif(cpu_kernels.kernel() is None, reason="no C++ kernels here")

ROOT = Path(__file__).resolve().parents[3]
LOAD = "from inference.llama import cpu_kernels; assert cpu_kernels.kernel() is not None"


def _build_dir() -> Path:
    from torch.utils.cpp_extension import _get_build_directory

    # the build kernel() loads here (the AVX-512 one on a CPU that has it)
    name = cpu_kernels.NAMES[cpu_kernels.preferred_isa()]
    return Path(_get_build_directory(name, verbose=False))


def _load_in_a_new_process() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", LOAD], cwd=ROOT)


def test_a_lock_left_by_a_killed_load_does_not_stop_the_next_one():
    stale = _build_dir() / "lock"
    stale.touch()  # what a process killed inside torch's load_inline leaves

    loader = _load_in_a_new_process()

    assert loader.wait(timeout=120) == 0  # before the fix: waited forever on the file
    assert not stale.exists()


def test_a_loader_killed_while_holding_the_lock_releases_it():
    import fcntl

    # A process that takes the loaders' lock and is then killed, as a worker might be.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'w'); "
            "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(600)",
            str(_build_dir() / "portal.flock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    loader = _load_in_a_new_process()
    time.sleep(1.0)
    assert loader.poll() is None  # it waits its turn while the lock is held
    holder.kill()
    holder.wait()
    holder.stdout.close()

    assert loader.wait(timeout=120) == 0
    with open(_build_dir() / "portal.flock", "w") as f:  # and nobody holds it now
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
