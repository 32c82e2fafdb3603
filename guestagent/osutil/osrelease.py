"""The distribution's identity from /etc/os-release (cheap: used by ``waagent -version``).

The ext-handler asks for it in every status (each goal-state period), so the parsed file is kept and
read again only when a ``stat`` of either file (under the current root) shows a change.
"""

from __future__ import annotations

import os

from guestagent.osutil import system

_cache: tuple | None = None   # (key, values); no typing import: -version and the supervisor read this


def _stamp(name: str) -> tuple | None:
    try:
        st = os.stat(system.path(name))
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def os_release() -> dict[str, str]:
    global _cache
    key = (str(system.path("/etc/os-release")), _stamp("/etc/os-release"), _stamp("/usr/lib/os-release"))
    cached = _cache
    if cached is not None and cached[0] == key:
        return dict(cached[1])
    values = _read()
    _cache = (key, values)
    return dict(values)


def _read() -> dict[str, str]:
    values: dict[str, str] = {}
    text = system.read_text("/etc/os-release", default="") or system.read_text("/usr/lib/os-release", default="") or ""
    for line in text.splitlines():
        line = line.strip()
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip().strip("\"'")
    return values


def distro() -> tuple[str, str, str]:
    """(id, version, codename), e.g. ("debian", "12", "bookworm")."""
    values = os_release()
    return values.get("ID", "unknown"), values.get("VERSION_ID", ""), values.get("VERSION_CODENAME", "")


def distro_info() -> str:
    name, version, _ = distro()
    return f"{name} {version}".strip()
