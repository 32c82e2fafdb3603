"""The handler's on-disk state under ``<lib>/<Name>-<version>/`` (04 §3, §5).

Every write is atomic (write temp, fsync, rename) so a SIGKILL at any instant leaves either the old or the
new HandlerState/HandlerStatus: that is what lets the next ext-handler continue without repeating a
finished install.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

from guestagent.exthandler.extensions.versions import version_key
from guestagent.osutil import pathguard, system
from guestagent.protocol.status import redact_sas

NOT_INSTALLED, INSTALLED, ENABLED, FAILED_UPGRADE = "NotInstalled", "Installed", "Enabled", "FailedUpgrade"
_DIR = re.compile(r"^(?P<name>.+)-(?P<version>\d+(?:\.\d+)*)$")
AGENT_PREFIX = "WALinuxAgent"
LOG_ROOT = "/var/log/azure"


def dumps(value: Any) -> str:
    """Python's json defaults (", " / ": ", ASCII only), as every upstream agent-written file."""
    return json.dumps(value)


def read_optional(path: str) -> Optional[str]:
    """A small agent-written file, or None when it (or its directory) does not exist."""
    try:
        return system.path(path).read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


def split_dir_name(name: str) -> Optional[tuple]:
    m = _DIR.match(name)
    if not m or name.startswith(AGENT_PREFIX):
        return None
    return m.group("name"), m.group("version")


def handler_dirs(lib_dir: str) -> list:
    """(name, version, path) for every ``<Name>-<version>`` directory in the lib dir."""
    root = system.path(lib_dir)
    out = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return out
    for entry in entries:
        parsed = split_dir_name(entry)
        if parsed and os.path.isdir(os.path.join(root, entry)):
            out.append((parsed[0], parsed[1], os.path.join(lib_dir, entry)))
    return out


class HandlerFiles:
    """Paths and state files of one handler version. Every path holding a name from the goal state is
    checked by :mod:`pathguard` (PathEscapeError) when it is built, i.e. right before its use."""

    def __init__(self, lib_dir: str, name: str, version: str, log_root: str = LOG_ROOT):
        self.lib_dir, self.name, self.version = lib_dir, name, version
        self.base_dir = pathguard.join(lib_dir, f"{name}-{version}")
        self.config_dir = os.path.join(self.base_dir, "config")
        self.status_dir = os.path.join(self.base_dir, "status")
        self.heartbeat_file = os.path.join(self.base_dir, "heartbeat.log")
        self.manifest_file = os.path.join(self.base_dir, "HandlerManifest.json")
        self.log_dir = pathguard.join(log_root, name)
        self.events_dir = os.path.join(self.log_dir, "events")

    def exists(self) -> bool:
        return system.path(self.base_dir).is_dir()

    # --- HandlerState ---------------------------------------------------------------------------------
    def state(self) -> str:
        text = read_optional(os.path.join(self.config_dir, "HandlerState"))
        return text.strip() if text and text.strip() else NOT_INSTALLED

    def set_state(self, value: str) -> None:
        system.mkdir(self.config_dir, mode=0o700)
        system.write_file(self._config("HandlerState"), value, mode=0o600)

    def _config(self, leaf: str) -> str:
        return pathguard.join(self.config_dir, leaf)

    def ext_state(self, ext_name: str) -> str:
        text = read_optional(self._config(f"{ext_name}.HandlerState"))
        return (text or "").strip() or "disabled"

    def set_ext_state(self, ext_name: str, value: str) -> None:
        system.mkdir(self.config_dir, mode=0o700)
        system.write_file(self._config(f"{ext_name}.HandlerState"), value, mode=0o600)

    def enabled_mc_extensions(self) -> list:
        try:
            names = os.listdir(system.path(self.config_dir))
        except OSError:
            return []
        out = []
        for n in sorted(names):
            if n.endswith(".HandlerState") and n != "HandlerState":
                ext = n[:-len(".HandlerState")]
                if self.ext_state(ext) == "enabled":
                    out.append(ext)
        return out

    # --- HandlerStatus ----------------------------------------------------------------------------------
    def status(self) -> Optional[dict]:
        text = read_optional(os.path.join(self.config_dir, "HandlerStatus"))
        if not text:
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def set_status(self, status: str, code: int, message: Optional[str], supports_mc: bool = False) -> None:
        doc = {"name": self.name, "version": self.version, "status": status, "code": code,
               "message": redact_sas(message), "supports_multi_config": supports_mc, "extension_status": None}
        system.mkdir(self.config_dir, mode=0o700)
        system.write_file(self._config("HandlerStatus"), dumps(doc), mode=0o600)

    # --- settings and status files ----------------------------------------------------------------------
    def settings_file(self, seq: int, ext_name: Optional[str] = None) -> str:
        return self._config(f"{ext_name}.{seq}.settings" if ext_name else f"{seq}.settings")

    def status_file(self, seq: int, ext_name: Optional[str] = None) -> str:
        return pathguard.join(self.status_dir, f"{ext_name}.{seq}.status" if ext_name else f"{seq}.status")

    def write_settings(self, settings: Any, multi_config: bool) -> None:
        """``<seq>.settings`` / ``<Ext>.<seq>.settings`` with upstream's JSON; ``0.settings`` empty when the
        handler has no settings. 0600: it may carry protected settings (encrypted, but still secret)."""
        system.mkdir(self.config_dir, mode=0o700)
        if settings is None:
            system.write_file(self.settings_file(0), "", mode=0o600)
            return
        doc = {"runtimeSettings": [{"handlerSettings": settings.handler_settings()}]}
        system.write_file(self.settings_file(settings.sequence_number, settings.name if multi_config else None),
                          dumps(doc), mode=0o600)

    def latest_seq(self, ext_name: Optional[str] = None) -> Optional[int]:
        """Sequence number of the most recently modified settings file (10 §1 fallback)."""
        pattern = re.compile(rf"^{re.escape(ext_name)}\.(\d+)\.settings$" if ext_name else r"^(\d+)\.settings$")
        best: Optional[tuple] = None
        try:
            entries = os.listdir(system.path(self.config_dir))
        except OSError:
            return None
        for entry in entries:
            m = pattern.match(entry)
            if m:
                try:
                    mtime = os.stat(system.path(os.path.join(self.config_dir, entry))).st_mtime
                except OSError:
                    continue
                if best is None or mtime > best[0]:
                    best = (mtime, int(m.group(1)))
        return best[1] if best else None

    def mc_extension_names(self) -> list:
        """Multi-config extension names found on disk (``config/<ext>.<seq>.settings``)."""
        names = set()
        try:
            for entry in os.listdir(system.path(self.config_dir)):
                m = re.match(r"^(.+)\.(\d+)\.settings$", entry)
                if m:
                    names.add(m.group(1))
        except OSError:
            pass
        return sorted(names)

    def remove_mc_extension_files(self, ext_name: str) -> None:
        for folder, suffix in ((self.config_dir, ".settings"), (self.status_dir, ".status")):
            try:
                entries = os.listdir(system.path(folder))
            except OSError:
                continue
            for entry in entries:
                if entry.startswith(ext_name + ".") and entry.endswith(suffix) and \
                        entry[len(ext_name) + 1:-len(suffix)].isdigit():
                    system.remove(os.path.join(folder, entry))
        system.remove(self._config(f"{ext_name}.HandlerState"))

    def write_environment(self) -> None:
        """HandlerEnvironment.json (04 §4), key order as upstream."""
        env = {"logFolder": self.log_dir, "configFolder": self.config_dir, "statusFolder": self.status_dir,
               "heartbeatFile": self.heartbeat_file, "eventsFolder": self.events_dir,
               "eventsFolder_preview": self.events_dir}
        doc = [{"name": self.name, "version": 1.0, "handlerEnvironment": env}]
        system.write_file(pathguard.join(self.base_dir, "HandlerEnvironment.json"), dumps(doc), mode=0o644)


def installed_versions(lib_dir: str, name: str) -> list:
    """Versions of ``name`` on disk whose HandlerState counts as installed, ascending (03 §5.3 step 2)."""
    out = []
    for n, v, _ in handler_dirs(lib_dir):
        if n == name and HandlerFiles(lib_dir, n, v).state() not in (NOT_INSTALLED, FAILED_UPGRADE):
            out.append(v)
    out.sort(key=version_key)
    return out
