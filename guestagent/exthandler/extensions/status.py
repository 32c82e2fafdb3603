"""Reading what an extension reports (04 §10, §11) and the placeholder status the agent writes for it.

The status file is written by third-party code: anything in it may be wrong, huge or missing. Every
problem becomes a reported status (``error``/1012, ``transitioning``…) and never an exception.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Optional

from guestagent import log
from guestagent.osutil import system
from guestagent.timestamps import utc_seconds

VALID = ("transitioning", "warning", "error", "success")
TERMINAL = ("success", "error")
CODE_INVALID_STATUS = 1012
MAX_STATUS_CHARS = 128 * 1024
MAX_MESSAGE = 1024
MAX_SUBSTATUS_FIELD = 10 * 1024
TRUNCATED = " ... [TRUNCATED]"
HEARTBEAT_FRESHNESS = 600
#: Only a file modified this recently is re-read once when it does not parse (it may be mid-write).
RECENT_WRITE = 2.0


class Malformed(ValueError):
    pass


def _message(fm: Any, where: str) -> Optional[str]:
    if fm is None:
        return None
    if not isinstance(fm, dict) or "lang" not in fm or "message" not in fm:
        raise Malformed(f"{where}: formattedMessage needs 'lang' and 'message'")
    msg = fm["message"]
    return msg if msg is None or isinstance(msg, str) else str(msg)


def _code(status: dict) -> Any:
    """The code as the handler wrote it (upstream forwards any JSON value: "0", 0, "E42"); 0 when absent."""
    return status.get("code", 0)


def _cut(text: Optional[str], limit: int) -> Optional[str]:
    if text is not None and len(text) > limit:
        return text[:limit] + TRUNCATED
    return text


def parse_status(text: str, name: str) -> Optional[dict]:
    """Validate status file text; return the ``settingsStatus`` object (without sequence number) or None for an
    empty array. Raise ValueError (not JSON) or Malformed."""
    doc = json.loads(text)
    if not isinstance(doc, list):
        raise Malformed("the status file is not a JSON array")
    if not doc:
        return None
    item = doc[0]
    if not isinstance(item, dict) or not isinstance(item.get("status"), dict):
        raise Malformed("'status' object missing")
    st = item["status"]
    if "status" not in st:
        raise Malformed("'status.status' missing")
    value = st["status"] if st["status"] in VALID else "error"
    message = _message(st.get("formattedMessage"), "status")
    big = len(text) > MAX_STATUS_CHARS
    if big:
        message = _cut(message, MAX_MESSAGE)
    substatus = []
    total = len(message or "")
    for sub in st.get("substatus") or []:
        if sub is None:
            continue
        if not isinstance(sub, dict) or sub.get("status") not in VALID:
            raise Malformed("a substatus entry has no valid 'status'")
        sub_name = sub.get("name")
        sub_msg = _message(sub.get("formattedMessage"), "substatus")
        if big:
            sub_name = _cut(sub_name if isinstance(sub_name, str) else None, MAX_SUBSTATUS_FIELD)
            sub_msg = _cut(sub_msg, MAX_SUBSTATUS_FIELD)
            total += len(sub_name or "") + len(sub_msg or "")
            if total > MAX_STATUS_CHARS:
                break
        entry: dict = {"name": sub_name, "status": sub["status"], "code": _code(sub)}
        if sub_msg is not None:
            entry["formattedMessage"] = {"lang": "en-US", "message": sub_msg}
        substatus.append(entry)
    status: dict = {"name": name, "configurationAppliedTime": st.get("configurationAppliedTime"),
                    "operation": st.get("operation"), "status": value, "code": _code(st),
                    "formattedMessage": {"lang": "en-US", "message": message if message is not None else ""}}
    if substatus:
        status["substatus"] = substatus
    return {"status": status, "version": 1.0, "timestampUTC": utc_seconds()}


def _simple(name: str, status: str, code: int, message: str, operation: Optional[str] = None) -> dict:
    return {"status": {"name": name, "configurationAppliedTime": None, "operation": operation, "status": status,
                       "code": code, "formattedMessage": {"lang": "en-US", "message": message}},
            "version": 1.0, "timestampUTC": utc_seconds()}


def error_status(name: str, code: int, message: str) -> dict:
    """A ``settingsStatus`` in error the agent reports for an extension that could not run."""
    return _simple(name, "error", code, message)


def read_status(path: str, name: str, retry: bool = True) -> Optional[dict]:
    """The reported ``settingsStatus`` for one status file, whatever is (or is not) in it."""
    real = system.path(path)
    for attempt in (0, 1):
        try:
            text = real.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return _simple(name, "transitioning", 0, "This status is being reported by the Guest Agent since no "
                           f"status file was reported by extension {name}: [ExtensionStatusError] Status file "
                           f"{path} does not exist")
        except OSError as e:
            return _simple(name, "error", -1, f"Failed to get status file: {e}")
        try:
            return parse_status(text, name)
        except Malformed as e:
            reason, code = f"Could not get a valid status from the extension {name}: {e}", CODE_INVALID_STATUS
        except ValueError as e:
            log.periodic(1800, log.WARNING, "The status file {0} is not in the correct format: {1}\n{2}", path, e,
                         text[:2000])
            reason, code = f"The status reported by the extension {name} is in incorrect format: {e}", \
                CODE_INVALID_STATUS
        try:
            recent = time.time() - real.stat().st_mtime < RECENT_WRITE
        except OSError:
            recent = False
        if attempt == 0 and retry and recent:
            time.sleep(0.05)
            continue
        return _simple(name, "error", code, reason)
    return None  # pragma: no cover


def status_value(path: str) -> Optional[str]:
    """Just the status string (for dependency waits); None when the file is missing or unusable."""
    try:
        doc = parse_status(system.path(path).read_text(encoding="utf-8", errors="replace"), "")
    except (OSError, ValueError):
        return None
    return doc["status"]["status"] if doc else None


def write_placeholder(path: str, name: str, operation: Optional[str], code: int, message: str,
                      overwrite: bool = False) -> None:
    """The error status the agent writes on the extension's behalf (04 §5.4)."""
    if not overwrite and system.exists(path):
        return
    doc = [{"version": 1.0, "timestampUTC": utc_seconds(),
            "status": {"name": name, "operation": operation, "status": "error", "code": code,
                       "formattedMessage": {"lang": "en-US", "message": message}}}]
    system.mkdir(os.path.dirname(path), mode=0o700)
    system.write_file(path, json.dumps(doc), mode=0o600, fsync=False)


def read_heartbeat(path: str) -> tuple:
    """(status, message) from heartbeat.log; ("Unresponsive", None) when stale; raise OSError/ValueError when
    missing or unusable."""
    real = system.path(path)
    mtime = real.stat().st_mtime
    if time.time() - mtime > HEARTBEAT_FRESHNESS:
        return "Unresponsive", None
    doc = json.loads(real.read_text(encoding="utf-8", errors="replace"))
    hb = doc[0]["heartbeat"]
    fm = hb.get("formattedMessage") or {}
    return hb.get("status"), fm.get("message") if isinstance(fm, dict) else None
