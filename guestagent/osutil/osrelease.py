"""The distribution's identity from /etc/os-release: the one reader of that file.

Cheap (imports only ``os``): ``waagent -version`` uses it too. The ext-handler asks for it in every
status (each goal-state period), so the parsed file is kept and read again only when a ``stat`` of
either file (under the current root) shows a change.
"""

from __future__ import annotations

import os

from guestagent.osutil import root

FILES = ("/etc/os-release", "/usr/lib/os-release")
_cache: tuple | None = None   # (key, values); no typing import: -version and the supervisor read this


def _stamp(name: str) -> tuple | None:
    try:
        st = os.stat(root.mapped(name))
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def os_release() -> dict[str, str]:
    global _cache
    key = (root.mapped(FILES[0]), _stamp(FILES[0]), _stamp(FILES[1]))
    cached = _cache
    if cached is not None and cached[0] == key:
        return dict(cached[1])
    values = parse(_read())
    _cache = (key, values)
    return dict(values)


def _read() -> str:
    """The first of the two files that has content ('' when neither does)."""
    for name in FILES:
        try:
            with open(root.mapped(name), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        if text:
            return text
    return ""


def parse(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
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
