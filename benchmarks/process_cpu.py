"""CPU accounting for benchmarks on a shared machine: the CPU time of a process tree over a
window, this VM's steal time over the same window (/proc/stat), and what else ran meanwhile.

A router started with ``--workers N`` is a parent and N children, so its cost is the sum over
the tree. Sampling is per pid at the window's two ends: a process that exits inside the window
loses its share (its time would only show in its parent's ``children_*`` once reaped), so the
benchmark keeps every process alive across a window and ``TreeCpu.lost`` says when one was not.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import psutil

# /proc/stat "cpu" columns, in order (man 5 proc); guest time is already inside user.
PROC_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def parse_proc_stat(text: str) -> dict[str, int]:
    """The aggregate ``cpu`` line of /proc/stat as jiffies per field (fields a kernel omits
    count as 0)."""
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] == "cpu":
            values = [int(v) for v in parts[1:1 + len(PROC_STAT_FIELDS)]]
            values += [0] * (len(PROC_STAT_FIELDS) - len(values))
            return dict(zip(PROC_STAT_FIELDS, values, strict=True))
    raise ValueError("no aggregate 'cpu' line in /proc/stat text")


def read_proc_stat() -> dict[str, int] | None:
    try:
        with open("/proc/stat") as f:
            return parse_proc_stat(f.read())
    except OSError:  # not Linux
        return None


def steal_fraction(before: dict[str, int] | None, after: dict[str, int] | None) -> float | None:
    """Share of all CPU time (every core) the hypervisor took from this VM between two
    samples; None where /proc/stat is unavailable or no time passed."""
    if before is None or after is None:
        return None
    total = sum(after[k] - before[k] for k in PROC_STAT_FIELDS)
    return (after["steal"] - before["steal"]) / total if total > 0 else None


def busy_fraction(before: dict[str, int] | None, after: dict[str, int] | None) -> float | None:
    """Share of all CPU time that was not idle (any process, ours or not)."""
    if before is None or after is None:
        return None
    total = sum(after[k] - before[k] for k in PROC_STAT_FIELDS)
    idle = sum(after[k] - before[k] for k in ("idle", "iowait"))
    return (total - idle) / total if total > 0 else None


def _cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def tree_pids(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    try:
        root = psutil.Process(pid)
        return [pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


def sample_pids(pids: list[int]) -> dict[int, float]:
    """user+sys seconds per live pid (pids that are gone are left out)."""
    out = {}
    for pid in pids:
        try:
            out[pid] = _cpu_seconds(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out


@dataclass
class TreeCpu:
    """CPU of process trees between ``start()`` and ``stop()``."""

    roots: list[int]
    _before: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0
    processes: int = 0
    lost: int = 0  # processes alive at start() but gone at stop(): their window is missing

    def start(self) -> TreeCpu:
        pids = [p for root in self.roots for p in tree_pids(root)]
        self._before = sample_pids(pids)
        return self

    def stop(self) -> TreeCpu:
        after = sample_pids(list(self._before))
        # A process born inside the window is not counted: the benchmark starts every router
        # process before its windows, so none should be.
        self.seconds = sum(after[p] - self._before[p] for p in after)
        self.processes = len(after)
        self.lost = len(self._before) - len(after)
        return self


def self_cpu_seconds() -> float:
    """user+sys of this process (all its threads), for the load generator's own cost."""
    t = os.times()
    return t.user + t.system


@dataclass
class MachineWindow:
    """Steal, busy share and wall time of the whole VM over one window."""

    started_at: float = 0.0
    _stat: dict[str, int] | None = None
    wall_s: float = 0.0
    steal: float | None = None
    busy: float | None = None

    def start(self) -> MachineWindow:
        self._stat = read_proc_stat()
        self.started_at = time.perf_counter()
        return self

    def stop(self) -> MachineWindow:
        after = read_proc_stat()
        self.wall_s = time.perf_counter() - self.started_at
        self.steal = steal_fraction(self._stat, after)
        self.busy = busy_fraction(self._stat, after)
        return self


def snapshot_all() -> dict[int, tuple[float, str]]:
    """user+sys seconds and a short command line of every process we may read."""
    out = {}
    for proc in psutil.process_iter(["cmdline", "name"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [proc.info["name"] or "?"])
            out[proc.pid] = (_cpu_seconds(proc), cmd[:120])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return out


def top_others(before: dict[int, tuple[float, str]], after: dict[int, tuple[float, str]],
               exclude: set[int], top: int = 6) -> list[dict]:
    """The processes outside ``exclude`` that used the most CPU between two snapshots (those
    started in between count from 0): what else shared the cores."""
    used = []
    for pid, (cpu, cmd) in after.items():
        if pid in exclude:
            continue
        delta = cpu - before.get(pid, (0.0, ""))[0]
        if delta > 0.05:
            used.append({"pid": pid, "cpu_s": round(delta, 2), "cmd": cmd})
    return sorted(used, key=lambda u: -u["cpu_s"])[:top]
