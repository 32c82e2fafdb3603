"""The provisioned marker and the VM's unique id (spec 05 §3.2).

``<Lib.Dir>/provisioned`` holds the instance id the VM was provisioned with. A different id at start
means the disk was cloned from a VM that was not generalised: the agent cleans its cached state
(§13.3) instead of provisioning again.
"""

from __future__ import annotations

import os
import re

from guestagent import log
from guestagent.errors import CommandError
from guestagent.osutil import system

PRODUCT_UUID = "/sys/class/dmi/id/product_uuid"
MARKER = "provisioned"
UUID_PATTERN = re.compile(r"^\s*[A-F0-9]{8}(?:\-[A-F0-9]{4}){3}\-[A-F0-9]{12}\s*$", re.IGNORECASE)


def _swap(hexstring: str) -> str:
    return "".join(reversed([hexstring[i:i + 2] for i in range(0, len(hexstring), 2)]))


def correct_instance_id(instance_id: str) -> str:
    """SMBIOS stores the first three groups little-endian; IMDS's vmId is the swapped form."""
    if not UUID_PATTERN.match(instance_id):
        return instance_id
    parts = instance_id.strip().split("-")
    return "-".join([_swap(parts[0]), _swap(parts[1]), _swap(parts[2]), parts[3], parts[4]])


def get_instance_id() -> str:
    if system.path(PRODUCT_UUID).is_file():
        try:
            value = (system.read_text(PRODUCT_UUID, errors="replace") or "").strip()
        except OSError:
            value = ""
    else:
        try:
            result = system.run(["dmidecode", "--string", "system-uuid"], timeout=30, check=False)
        except CommandError:
            return ""
        if result.returncode != 0 or UUID_PATTERN.match(result.stdout) is None:
            return ""
        value = result.stdout.strip()
    return correct_instance_id(value)


def is_current_instance_id(recorded: str) -> bool:
    current = get_instance_id()
    log.verbose("current instance id: {0}", current)
    log.verbose(" former instance id: {0}", recorded)
    return current.lower() == recorded.lower() or current.lower() == correct_instance_id(recorded).lower()


def marker_path(lib_dir: str) -> str:
    return os.path.join(lib_dir, MARKER)


def is_provisioned(lib_dir: str) -> bool:
    return system.path(marker_path(lib_dir)).is_file()


def read_marker(lib_dir: str) -> str:
    return (system.read_text(marker_path(lib_dir), default="", errors="replace") or "").strip()


def write_marker(lib_dir: str) -> None:
    system.write_file(marker_path(lib_dir), get_instance_id(), mode=0o644)
