"""Goal-state history under <lib>/history (spec 03 §7): one folder per change, redacted, bounded.

Saving never fails a goal state: errors are logged once per folder. SAS query strings and protected
settings are replaced with ``***REDACTED***`` before anything is written.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Optional

from guestagent import log
from guestagent.errors import PathEscapeError
from guestagent.osutil import atomic, pathguard, system
from guestagent.protocol.certificates import CertSummary

REDACTED = "***REDACTED***"
MAX_ENTRIES = 50
FOLDER_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}__[^/]+$")
PLACEHOLDER = "<xml>empty placeholder file</xml>"

# What older agents (2.7.3, Debian's package) saved beside the state in <lib>: copies of goal-state
# documents and status. Upstream deletes them at each ext-handler start; SharedConfig.xml stays (other
# tools read it), and so does the GoalState.1.xml placeholder.
LEGACY_PATTERNS = (re.compile(r"^VmSettings\.\d+\.json$"), re.compile(r"^.*\.\d+\.agentsManifest$", re.I),
                   re.compile(r"^.*\.\d+\.manifest\.xml$", re.I), re.compile(r"^.*\.\d+\.xml$", re.I),
                   re.compile(r"^HostingEnvironmentConfig\.xml$", re.I), re.compile(r"^RemoteAccess\.xml$", re.I),
                   re.compile(r"^waagent_status\.\d+\.json$"))

_BLOB_XML = re.compile(r"(<(StatusUploadBlob|InVMArtifactsProfileBlob)\b[^>]*>[^<?]*\?)[^<]*(</\2>)")
_PROTECTED_JSON = re.compile(r'("protectedSettings"\s*:\s*")((?:[^"\\]|\\.)*)(")')
_STATUS_BLOB_JSON = re.compile(r'("statusUploadBlob"\s*:\s*\{[^{}]*?"value"\s*:\s*"[^"?]*\?)((?:[^"\\]|\\.)*)(")')


def redact_extensions_config(text: str) -> str:
    """ExtensionsConfig for the history copy: blob SAS queries and protectedSettings replaced (03 §2.5)."""
    text = _BLOB_XML.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)
    return _PROTECTED_JSON.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)


def redact_vm_settings(text: str) -> str:
    text = _STATUS_BLOB_JSON.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)
    return _PROTECTED_JSON.sub(lambda m: m.group(1) + REDACTED + m.group(3), text)


def purge_legacy(lib_dir: str) -> None:
    """Delete an older agent's goal-state copies from ``lib_dir`` (an agent taking over from 2.7.3
    leaves none of them stale beside its own files); a file that cannot go is logged, not fatal."""
    try:
        names = os.listdir(system.path(lib_dir))
    except OSError as e:
        log.warn("Error removing legacy history files: {0}", e)
        return
    for name in sorted(names):
        full = os.path.join(lib_dir, name)
        if name != "GoalState.1.xml" and any(p.match(name) for p in LEGACY_PATTERNS) \
                and not system.path(full).is_dir():
            try:
                system.remove(full)
            except OSError as e:
                log.warn("Cannot delete legacy history file '{0}': {1}", full, e)


def folder_name(tag: str, now: Optional[float] = None) -> str:
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S", time.gmtime(time.time() if now is None else now))
    return f"{stamp}__{tag}"


class History:
    """The history directory; ``start(tag)`` opens a new folder that later ``save_*`` calls fill."""

    def __init__(self, lib_dir: str, enabled: bool = True):
        self.lib_dir = lib_dir
        self.root = os.path.join(lib_dir, "history")
        self.enabled = enabled
        self.current: Optional[str] = None
        self._error_logged = False

    def start(self, tag: str, now: Optional[float] = None) -> Optional[str]:
        if not self.enabled:
            return None
        self.current = os.path.join(self.root, folder_name(tag, now))
        self._error_logged = False
        try:
            system.mkdir(self.root, mode=0o700)
            pathguard.within(self.root, self.current)  # the tag is the fabric's incarnation / ETag
            system.mkdir(self.current, mode=0o700)
            self.purge()
        except PathEscapeError as e:
            self._log_error(e)
            self.current = None
        except OSError as e:
            self._log_error(e)
        return self.current

    def _log_error(self, error: BaseException) -> None:
        if not self._error_logged:
            self._error_logged = True
            log.warn("Failed to save the goal-state history to {0}: {1}", self.current, error)

    def save(self, name: str, text: str) -> None:
        if not self.enabled or self.current is None:
            return
        try:
            system.write_file(pathguard.join(self.current, name), text, fsync=False)
        except (OSError, PathEscapeError) as e:
            self._log_error(e)

    def save_goal_state(self, text: str) -> None:
        self.save("GoalState.xml", text)
        try:
            system.write_file(os.path.join(self.lib_dir, "GoalState.1.xml"), PLACEHOLDER, fsync=False)
        except OSError as e:
            self._log_error(e)

    def save_extensions_config(self, text: str) -> None:
        self.save("ExtensionsConfig.xml", redact_extensions_config(text))

    def save_vm_settings(self, text: str) -> None:
        self.save("VmSettings.json", redact_vm_settings(text))

    def save_certificates(self, summary: list[CertSummary]) -> None:
        self.save("Certificates.json", json.dumps([c.to_json() for c in summary], indent=4))

    def save_status(self, status_json: str) -> None:
        self.save("waagent_status.json", status_json)

    # --- housekeeping --------------------------------------------------------------------------------
    def _entries(self) -> list[str]:
        base = system.path(self.root)
        try:
            names = os.listdir(base)
        except OSError:
            return []
        paths = [os.path.join(base, n) for n in names]
        return sorted(paths, key=lambda p: (_ctime(p), os.path.basename(p)), reverse=True)

    def purge(self) -> None:
        """Keep the newest 50 entries (folders and zips) by ctime."""
        for old in self._entries()[MAX_ENTRIES:]:
            system.remove(old)

    def archive(self) -> None:
        """Zip every history folder but the newest into <folder>.zip (written atomically)."""
        folders = [p for p in self._entries() if os.path.isdir(p) and FOLDER_PATTERN.match(os.path.basename(p))]
        current = system.path(self.current) if self.current else None
        for index, folder in enumerate(folders):
            if index == 0 or (current is not None and os.fspath(current) == folder):
                continue
            try:
                import zipfile  # here: idle goal states archive nothing (zipfile: ~0.35 MB resident)

                with atomic.Replacing(folder + ".zip") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
                    for name in sorted(os.listdir(folder)):
                        zf.write(os.path.join(folder, name), arcname=name)
                system.remove(folder)
            except OSError as e:
                log.warn("Failed to archive {0}: {1}", folder, e)


def _ctime(p: str) -> float:
    try:
        return os.stat(p).st_ctime
    except OSError:
        return 0.0
