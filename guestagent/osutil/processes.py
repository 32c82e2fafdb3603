"""Processes as the kernel sees them (``/proc`` is read directly, never through the osutil root)."""

from __future__ import annotations

import os
import re


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return ") Z " not in f.read()
    except OSError:
        return True


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read(4096).replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _read(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def parent_pid(pid: int) -> int:
    """The parent's PID from ``/proc/<pid>/stat`` (0 when the process is gone)."""
    try:
        return int(_read(pid, "stat").rsplit(")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return 0


def describe(pid: int) -> str:
    """``[PID: n] <command line>`` as upstream names a process in its cgroup checks."""
    return f"[PID: {pid}] {cmdline(pid).strip() or 'UNKNOWN'}"


def started_by_agent(pid: int, systemd_run: set[int]) -> bool:
    """May ``pid`` be in the agent's cgroup (06 §10.4)? This process and its parent (the daemon), our
    descendants, processes carrying the agent's environment marker, systemd-run helpers, zombies and
    processes that are gone."""
    from guestagent.osutil.system import AGENT_ENV_MARKER

    me = os.getpid()
    if pid in (me, os.getppid()) or pid in systemd_run:
        return True
    stat = _read(pid, "stat")
    if not stat or ") Z " in stat:
        return True
    key, value = AGENT_ENV_MARKER
    if f"{key}={value}" in _read(pid, "environ"):
        return True
    if re.search(r"systemd-run.*--unit=.*--scope.*--slice=azure-vmextensions", cmdline(pid)):
        return True
    parent = pid
    for _ in range(32):  # walk up to us
        parent = parent_pid(parent)
        if parent == me:
            return True
        if parent <= 1:
            return False
    return False


def rss_kb(pid: str = "self") -> int:
    """Resident set size (0 where /proc is not readable)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


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
