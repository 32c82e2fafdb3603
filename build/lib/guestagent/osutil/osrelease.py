"""The distribution's identity from /etc/os-release (cheap: used by ``waagent -version``)."""

from __future__ import annotations

from guestagent.osutil import system


def os_release() -> dict[str, str]:
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
