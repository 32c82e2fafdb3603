"""Processes and the kernel's CPU and memory accounting, through psutil (never through the osutil root).

psutil is the agent's one reader of ``/proc/<pid>``, ``/proc/stat`` and ``/proc/meminfo``; it loads in
the daemon before Ready and in the ext-handler child (its monitor), never in the lean supervisor, which
keeps its own RSS reader (``daemon/supervisor.py``).
"""

from __future__ import annotations

import os
import re
import signal
from dataclasses import dataclass
from typing import Iterator, Optional

import psutil

from guestagent.version import AGENT_ENV_MARKER

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Every extension command gets its handler directory in this variable (04 §6.2).
EXTENSION_PATH_ENV = "AZURE_GUEST_AGENT_EXTENSION_PATH"


@dataclass(frozen=True)
class LeftCommand:
    """A process of an extension command that this process did not start (its ext-handler was killed)."""

    pid: int
    extension_path: str
    started: float        # seconds since the epoch
    command: str


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def cmdline(pid: int) -> str:
    """The command line, arguments joined by spaces ("" when the process is gone or hidden)."""
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def command_lines() -> Iterator[str]:
    """Every visible process's command line, in PID order (kernel threads have none and are skipped)."""
    for proc in psutil.process_iter(["cmdline"]):
        line = proc.info["cmdline"]
        if line:
            yield " ".join(line)


def parent_pid(pid: int) -> int:
    """The parent's PID (0 when the process is gone)."""
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return 0


def describe(pid: int) -> str:
    """``[PID: n] <command line>`` as upstream names a process in its cgroup checks."""
    return f"[PID: {pid}] {cmdline(pid).strip() or 'UNKNOWN'}"


def started_by_agent(pid: int, systemd_run: set[int]) -> bool:
    """May ``pid`` be in the agent's cgroup (06 §10.4)? This process and its parent (the daemon), our
    descendants, processes carrying the agent's environment marker, systemd-run helpers, zombies and
    processes that are gone."""
    me = os.getpid()
    if pid in (me, os.getppid()) or pid in systemd_run:
        return True
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        key, value = AGENT_ENV_MARKER
        try:
            if proc.environ().get(key) == value:
                return True
        except psutil.AccessDenied:
            pass
        if re.search(r"systemd-run.*--unit=.*--scope.*--slice=azure-vmextensions", " ".join(proc.cmdline())):
            return True
        return any(parent.pid == me for parent in proc.parents())
    except psutil.NoSuchProcess:
        return True
    except psutil.AccessDenied:
        return False


def extension_commands_left() -> list[LeftCommand]:
    """Extension commands another ext-handler started and did not see end: the agent's environment marker
    and a handler's directory in the environment, alive, not descendants of this process, and the command
    itself — the session leader the runner started (``/bin/sh -c <handler dir>/...``, also under
    systemd-run, which execs it) — not a daemon the command left behind on purpose."""
    me = os.getpid()
    key, value = AGENT_ENV_MARKER
    found = []
    for proc in psutil.process_iter(["create_time"]):
        try:
            if proc.pid == me or os.getsid(proc.pid) != proc.pid:
                continue
            argv = proc.cmdline()
            env = proc.environ()
            path = env.get(EXTENSION_PATH_ENV)
            if env.get(key) != value or not path or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if argv[:2] != ["/bin/sh", "-c"] or len(argv) < 3 or not argv[2].startswith(path.rstrip("/") + "/"):
                continue
            if any(parent.pid == me for parent in proc.parents()):
                continue
            found.append(LeftCommand(proc.pid, path, proc.info["create_time"], " ".join(argv)))
        except (psutil.Error, OSError):
            continue
    return found


def rss_kb(pid: Optional[int] = None) -> int:
    """Resident set size of ``pid`` (this process by default) in kB; 0 where it cannot be read."""
    try:
        return psutil.Process(pid).memory_info().rss // 1024
    except psutil.Error:
        return 0


def cpu_seconds(pid: Optional[int] = None) -> float:
    """User + system CPU time ``pid`` (this process by default) has used, in seconds."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def system_cpu_ticks() -> int:
    """USER_HZ ticks elapsed in all CPU states on all cores since boot, as upstream counts them: the first
    seven fields of ``/proc/stat``'s ``cpu`` line (steal and guest time left out)."""
    t = psutil.cpu_times()
    return round((t.user + t.nice + t.system + t.idle + t.iowait + t.irq + t.softirq) * _CLOCK_TICKS)


def system_memory_mb() -> tuple[int, int]:
    """(used MB, available MB) as ``free -b`` computes them: used = total − available."""
    memory = psutil.virtual_memory()
    return (memory.total - memory.available) // (1024 * 1024), memory.available // (1024 * 1024)


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid``, its process group and every descendant, also those that left the group.

    The tree is frozen first (SIGSTOP, parents before children) so that nothing forks between the
    snapshot and the kill; a process stopped cannot re-parent its children by exiting either."""
    _signal_group(pid, signal.SIGSTOP)
    frozen: list[psutil.Process] = []
    pending = [pid]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            proc = psutil.Process(current)
            proc.suspend()
            frozen.append(proc)
            pending.extend(child.pid for child in proc.children())
        except psutil.Error:
            continue
    _signal_group(pid, signal.SIGKILL)
    for proc in frozen:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


_malloc_trim = None


def release_free_heap() -> bool:
    """Return the C heap's free pages to the kernel (glibc ``malloc_trim(0)``); False where unavailable.

    The ext-handler child idles for hours between bursts (a goal state parsed, handlers run): glibc keeps
    the pages those bursts freed, ~3 MB of the child's RSS, until something trims them."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes

            trim = ctypes.CDLL(None).malloc_trim
            trim.argtypes = [ctypes.c_size_t]
            trim.restype = ctypes.c_int
            _malloc_trim = trim
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            _malloc_trim = False
    if not _malloc_trim:
        return False
    _malloc_trim(0)
    return True
