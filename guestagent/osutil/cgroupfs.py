"""The cgroup file system (spec 06 §10): which hierarchy is mounted, what a cgroup has used, and the
raw knobs systemd turns for us (cpu.max / cpu.cfs_quota_us) — used to verify that limits hold.

Parsers take text so upstream's samples (fixtures/walinuxagent/cgroups) are read exactly as the
files under /sys/fs/cgroup are. Nothing here talks to systemd (guestagent.exthandler.cgroups does).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Optional

from guestagent.osutil import processes, system

CGROUP_ROOT = "/sys/fs/cgroup"
V1, V2 = "v1", "v2"
SUPPORTED_V1 = ("cpu,cpuacct", "memory")


class CgroupsError(Exception):
    pass


class CounterNotFound(CgroupsError):
    pass


# --- detection ------------------------------------------------------------------------------------------
@dataclass
class Mount:
    point: str
    fstype: str
    options: str  # super options (controllers for v1)


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/self/mountinfo → mounts (fields: … mount point (5th) … ' - ' fstype source super-options)."""
    mounts = []
    for line in text.splitlines():
        if " - " not in line:
            continue
        left, right = line.split(" - ", 1)
        lf, rf = left.split(), right.split()
        if len(lf) >= 5 and len(rf) >= 3:
            mounts.append(Mount(lf[4].replace("\\040", " "), rf[0], rf[2]))
    return mounts


@dataclass
class Hierarchy:
    """What /sys/fs/cgroup holds: v2 (unified), v1 (per-controller mounts) or unsupported (with why)."""

    version: Optional[str]
    reason: str = ""
    v1_mounts: Optional[dict[str, str]] = None  # controller → mount point
    v2_root: str = ""
    v2_root_controllers: tuple[str, ...] = ()

    @property
    def supported(self) -> bool:
        return self.version is not None

    def can_enforce_cpu(self) -> bool:
        if self.version == V1:
            return bool(self.v1_mounts and "cpu" in self.v1_mounts)
        return self.version == V2 and "cpu" in self.v2_root_controllers


def detect(mountinfo: str, read=lambda p: system.read_text(p, default=None)) -> Hierarchy:
    """Upstream's rules: cgroup2 at /sys/fs/cgroup → v2; tmpfs there → v1, unless the unified mount
    (/sys/fs/cgroup/unified) has controllers available (hybrid with split controllers: unsupported);
    v1 controllers must be mounted under /sys/fs/cgroup; no mount at all → unsupported."""
    mounts = parse_mountinfo(mountinfo)
    root = next((m for m in reversed(mounts) if m.point == CGROUP_ROOT), None)
    if root is None:
        return Hierarchy(None, f"Expected cgroup filesystem to be mounted at '{CGROUP_ROOT}', but it is not")
    if root.fstype == "cgroup2":
        text = read(os.path.join(CGROUP_ROOT, "cgroup.subtree_control")) or ""
        return Hierarchy(V2, v2_root=CGROUP_ROOT, v2_root_controllers=tuple(text.split()))
    if root.fstype != "tmpfs":
        return Hierarchy(None, f"Unknown cgroup file system at {CGROUP_ROOT}: {root.fstype}")
    unified = next((m for m in mounts if m.point == CGROUP_ROOT + "/unified" and m.fstype == "cgroup2"), None)
    if unified is not None:
        available = (read(os.path.join(unified.point, "cgroup.controllers")) or "").strip()
        if available:
            return Hierarchy(None, "Detected hybrid cgroup mode, but there are controllers available to be "
                                   f"enabled in unified hierarchy: {available}")
    controllers: dict[str, str] = {}
    for m in mounts:
        if m.fstype != "cgroup":
            continue
        for opt in m.options.split(","):
            if opt in ("cpu", "cpuacct", "memory"):
                if not m.point.startswith(CGROUP_ROOT + "/"):
                    return Hierarchy(None, f"Expected cgroup controllers to be mounted at '{CGROUP_ROOT}', "
                                           f"but {opt} is at {m.point}")
                controllers[opt] = m.point
    return Hierarchy(V1, v1_mounts=controllers)


def detect_host() -> Hierarchy:
    return detect(system.read_text("/proc/self/mountinfo", default="") or "")


# --- /proc parsers --------------------------------------------------------------------------------------
def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup → {controller list or "" (v2): relative path}."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


def process_cgroup_path(text: str, version: str, controller: str = "cpu") -> Optional[str]:
    paths = parse_proc_cgroup(text)
    if version == V2:
        return paths.get("")
    for key, value in paths.items():
        if controller in key.split(","):
            return value
    return None


def parse_uptime(text: str) -> float:
    return float(text.split()[0])


def parse_keyed(text: str) -> dict[str, int]:
    """``key value`` lines (cpu.stat, cpuacct.stat, memory.stat, memory.events)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


# --- controllers ----------------------------------------------------------------------------------------
class _Files:
    def __init__(self, path: str):
        self.path = path

    def read(self, name: str) -> str:
        try:
            with open(os.path.join(self.path, name), encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            raise CgroupsError(f"{name} not found in {self.path}") from None

    def counter(self, name: str, key: str) -> int:
        values = parse_keyed(self.read(name))
        if key not in values:
            raise CounterNotFound(f"Cannot find counter {key} in {name}")
        return values[key]


class CpuController(_Files):
    """% Processor Time between two polls, and throttled time (as upstream: v1 ticks × cores against the
    system's CPU ticks; v2 usage_usec against /proc/uptime, i.e. 100 % = one core)."""

    def __init__(self, path: str, version: str, proc_root: str = "/proc"):
        super().__init__(path)
        self.version = version
        self.proc_root = proc_root
        self._prev: Optional[tuple[float, float]] = None
        self._prev_throttled: Optional[float] = None

    def _sample(self) -> tuple[float, float]:
        if self.version == V1:
            stat = parse_keyed(self.read("cpuacct.stat"))
            used = float(stat.get("user", 0) + stat.get("system", 0))
            return used, float(processes.system_cpu_ticks())
        used = self.counter("cpu.stat", "usage_usec") / 1e6
        with open(os.path.join(self.proc_root, "uptime"), encoding="utf-8") as f:
            return used, parse_uptime(f.read())

    def throttled_seconds(self) -> float:
        if self.version == V1:
            return self.counter("cpu.stat", "throttled_time") / 1e9
        return self.counter("cpu.stat", "throttled_usec") / 1e6

    def cpu_usage(self) -> Optional[float]:
        """Percent since the previous call (None on the first call)."""
        used, system_time = self._sample()
        prev, self._prev = self._prev, (used, system_time)
        if prev is None or system_time <= prev[1]:
            return None
        factor = (os.cpu_count() or 1) if self.version == V1 else 1
        return round(100.0 * factor * (used - prev[0]) / (system_time - prev[1]), 3)

    def throttled_delta(self) -> float:
        current = self.throttled_seconds()
        prev, self._prev_throttled = self._prev_throttled, current
        return round(current - (prev if prev is not None else current), 3)


@dataclass
class MemoryUsage:
    anon: int
    cache: int
    swap: Optional[int]
    max_usage: Optional[int]
    throttled_events: Optional[int]

    @property
    def total(self) -> int:
        return self.anon + self.cache


class MemoryController(_Files):
    def __init__(self, path: str, version: str):
        super().__init__(path)
        self.version = version

    def usage(self) -> MemoryUsage:
        stat = parse_keyed(self.read("memory.stat"))
        anon_key, cache_key = ("rss", "cache") if self.version == V1 else ("anon", "file")
        for key in (anon_key, cache_key):
            if key not in stat:
                raise CounterNotFound(f"Cannot find counter {key} in memory.stat")
        return MemoryUsage(stat[anon_key], stat[cache_key], self._swap(stat), self._max(), self._throttled())

    def _swap(self, stat: dict[str, int]) -> Optional[int]:
        if self.version == V1:
            return stat.get("swap")
        try:
            return int(self.read("memory.swap.current").split()[0])
        except (CgroupsError, ValueError, IndexError):
            return None

    def _max(self) -> Optional[int]:
        name = "memory.max_usage_in_bytes" if self.version == V1 else "memory.peak"
        try:
            return int(self.read(name).split()[0])
        except (CgroupsError, ValueError, IndexError):
            return None

    def _throttled(self) -> Optional[int]:
        if self.version == V1:
            return None
        try:
            return parse_keyed(self.read("memory.events")).get("high")
        except CgroupsError:
            return None


# --- the raw knobs (verification and sandboxes without systemd) -----------------------------------------
def quota_values(percent: Optional[float], period_us: int = 100_000) -> tuple[str, int]:
    """CPUQuota=N% as the kernel sees it: (quota in µs per period or "max", period)."""
    if percent is None:
        return "max", period_us
    return str(max(1000, int(period_us * percent / 100))), period_us


def set_cpu_quota(path: str, version: str, percent: Optional[float]) -> None:
    quota, period = quota_values(percent)
    if version == V2:
        with open(os.path.join(path, "cpu.max"), "w") as f:
            f.write(f"{quota} {period}")
        return
    with open(os.path.join(path, "cpu.cfs_period_us"), "w") as f:
        f.write(str(period))
    with open(os.path.join(path, "cpu.cfs_quota_us"), "w") as f:
        f.write("-1" if quota == "max" else quota)


def read_cpu_quota(path: str, version: str) -> Optional[float]:
    """The enforced quota in percent of one CPU, None for no quota."""
    if version == V2:
        quota, period = open(os.path.join(path, "cpu.max")).read().split()
        return None if quota == "max" else 100.0 * int(quota) / int(period)
    quota_us = int(open(os.path.join(path, "cpu.cfs_quota_us")).read())
    period_us = int(open(os.path.join(path, "cpu.cfs_period_us")).read())
    return None if quota_us < 0 else 100.0 * quota_us / period_us


def add_process(path: str, pid: int) -> None:
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(pid))


def procs(path: str) -> list[int]:
    try:
        text = open(os.path.join(path, "cgroup.procs")).read()
    except FileNotFoundError:
        return []
    return [int(p) for p in re.findall(r"\d+", text)]
