"""Processes as the kernel sees them (``/proc`` is read directly, never through the osutil root)."""

from __future__ import annotations

import os


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
