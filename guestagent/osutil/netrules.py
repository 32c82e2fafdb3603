"""Persistent network-interface udev rules, moved out of the way (spec 05 §10).

A generalised image must not pin the NIC name to the MAC address of the VM it was captured on, so
the rules are moved into the agent's lib dir (replacing older copies). Ubuntu and Debian do not
need it (their udev has no persistent-net generator): there the operation is a no-op, as upstream
(:attr:`~guestagent.osutil.distros.Distro.remove_net_rules`).
"""

from __future__ import annotations

import os
import shutil

from guestagent import log
from guestagent.osutil import system

RULES_FILES = ("/lib/udev/rules.d/75-persistent-net-generator.rules", "/etc/udev/rules.d/70-persistent-net.rules")
def remove_rules_files(lib_dir: str, rules_files: tuple[str, ...] = RULES_FILES) -> list[str]:
    """Move each rules file into ``lib_dir``; returns the files moved."""
    moved = []
    for src in rules_files:
        name = os.path.basename(src)
        dest = system.path(os.path.join(lib_dir, name))
        if dest.is_file():
            dest.unlink()
        if system.path(src).is_file():
            log.warn("Move rules file {0} to {1}", name, os.path.join(lib_dir, name))
            shutil.move(str(system.path(src)), str(dest))
            moved.append(src)
    return moved


def restore_rules_files(lib_dir: str, rules_files: tuple[str, ...] = RULES_FILES) -> list[str]:
    """Put moved rules back (deprovisioning's counterpart)."""
    restored = []
    for dest in rules_files:
        src = system.path(os.path.join(lib_dir, os.path.basename(dest)))
        if system.path(dest).is_file() or not src.is_file():
            continue
        log.warn("Move rules file {0} to {1}", os.path.basename(dest), dest)
        system.path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(system.path(dest)))
        restored.append(dest)
    return restored
