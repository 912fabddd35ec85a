"""How many threads torch computes with: the CPUs this process may use, less those other processes keep busy.

torch's own default (one thread per physical core) assumes the machine is ours. On a small shared
machine its threads wait on each other while another job holds a core, and a run gets many times
slower (the toy demo took 21 min beside a 2-thread job, 3.5 min with one thread). So the default is
the CPUs this process may run on (affinity mask, cgroup CPU quota) minus those other processes keep
busy (the 1-minute load average, capped by the threads runnable right now), at least one.
``--threads N`` or ``OMP_NUM_THREADS`` decide instead when set; set one of them when results must
match bit for bit across runs, since a different thread count may change the last bits of float sums.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from .errors import SelfieError

log = logging.getLogger(__name__)

LOADAVG = Path("/proc/loadavg")
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (rounded down, at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.floor(quota))
    return max(1, cpus)


def cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time the cgroup may use (``cpu.max``, or cgroup v1's cfs quota); None when unlimited."""
    try:
        if CGROUP_V2.is_file():
            quota, period = CGROUP_V2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if CGROUP_V1[0].is_file():
            quota, period = (int(p.read_text()) for p in CGROUP_V1)
            return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None
    return None


def busy_cpus() -> float:
    """CPUs other processes keep busy: the 1-minute load average, but no more than the threads runnable right
    now besides this one (so a job that just ended does not count for a minute); 0 where neither exists."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    now = runnable_now()
    return load if now is None else min(load, max(now - 1, 0))


def runnable_now(samples: int = 3, gap_s: float = 0.01) -> int | None:
    """The median count of runnable threads (this one included) over a few reads of ``/proc/loadavg``."""
    counts = []
    for i in range(samples):
        try:
            counts.append(int(LOADAVG.read_text().split()[3].split("/")[0]))
        except (OSError, IndexError, ValueError):
            return None
        if i + 1 < samples:
            time.sleep(gap_s)
    return sorted(counts)[len(counts) // 2]


def default_threads() -> int:
    """The usable CPUs that other processes leave idle, at least one (see the module docstring)."""
    cpus = usable_cpus()
    idle = cpus - math.floor(busy_cpus() + 0.5)
    return max(1, min(cpus, idle))


def env_threads() -> int | None:
    """``OMP_NUM_THREADS`` when the user set it to a positive number, else None."""
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        n = int(raw.split(",")[0])  # OpenMP allows a list per nesting level; the first is ours
    except ValueError:
        return None
    return n if n > 0 else None


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """(threads, why): ``requested`` (``--threads``), else ``OMP_NUM_THREADS``, else ``default_threads()``."""
    if requested is not None:
        if requested < 1:
            raise SelfieError(f"--threads must be at least 1, got {requested}")
        return requested, "--threads"
    env = env_threads()
    if env is not None:
        return env, "OMP_NUM_THREADS"
    cpus, busy = usable_cpus(), busy_cpus()
    return default_threads(), f"{cpus} usable CPU(s), load {busy:.1f}"


def configure_threads(requested: int | None = None) -> int:
    """Set torch's intra-op thread count once per command (see ``choose_threads``); returns it.

    >>> configure_threads(2)
    2
    """
    import torch

    n, why = choose_threads(requested)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.info("torch threads: %d (%s)", n, why)
    return n
