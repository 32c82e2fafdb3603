"""Extension telemetry events (ETP, spec 04 §14): ``<Extension.LogDir>/<Handler>/events/<digits>.json``.

Every ``Debug.EtpCollectionPeriod`` the files are validated as upstream does (required keys, sizes,
360 events per handler and period) and turned into GuestAgentGenericLogs events (provider FFF0196F…,
id 7). Instead of holding them in memory until the sender posts them, each accepted event is written
into the agent's events directory (atomically, as a complete ``.waagent.tld`` event) before its
source file is deleted — so the durable pipeline of guestagent.exthandler.telemetry carries it and a
restart loses nothing. Every processed file is deleted and each events directory is emptied at the
end of a run, as upstream.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from guestagent import events, log
from guestagent.osutil import system

FILE_NAME = re.compile(r"^(\d+)\.json$", re.IGNORECASE)
HANDLER_NAME = re.compile(r"^([^-]+)", re.IGNORECASE)
MAX_EVENTS_PER_PERIOD = 360
MAX_FILE_SIZE = 4 * 1024 * 1024
MAX_EVENT_SIZE = 6 * 1024
MAX_MESSAGE = 3 * 1024
READ_ATTEMPTS = 3
#: Upstream's schema fields, lower-cased, in the order it checks them (alphabetical).
REQUIRED = ("eventlevel", "eventpid", "eventtid", "message", "operationid", "taskname", "timestamp", "version")


class InvalidExtensionEvent(ValueError):
    pass


@dataclass
class CollectResult:
    captured: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, Counter] = field(default_factory=dict)
    skipped_files: list[str] = field(default_factory=list)


def validate(raw: Any) -> dict[str, str]:
    """Keep the required keys (case-insensitive), trim + SAS-redact strings, enforce the size rules."""
    if not isinstance(raw, dict):
        raise InvalidExtensionEvent("InvalidEvent: event is not a JSON object")
    event: dict[str, str] = {}
    for key, value in raw.items():
        low = str(key).lower()
        if low not in REQUIRED or value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and low in ("eventpid", "eventtid"):
            value = str(value)
        if not isinstance(value, str):
            raise InvalidExtensionEvent(f"InvalidType: {key} is not a string")
        event[low] = log.redact(value.strip())
    if "message" not in event:
        raise InvalidExtensionEvent("MissingKeyError: Message not found")
    event["message"] = event["message"][:MAX_MESSAGE]
    if not event["message"]:
        raise InvalidExtensionEvent("EmptyMessageError: Message should not be empty")
    size = 0
    for key in REQUIRED:
        if key not in event:
            raise InvalidExtensionEvent(f"MissingKeyError: {key} not found")
        if size > MAX_EVENT_SIZE:
            raise InvalidExtensionEvent(f"OversizeEventError: max event size allowed: {MAX_EVENT_SIZE}")
        size += len(event[key])
    return event


def to_event(handler: str, ext: dict[str, str], mtime: float) -> dict[str, Any]:
    """The provider-FFF0196F event: common set (TaskName/EventPid/EventTid replaced), then EventName,
    CapabilityUsed, Context1-3 — the order upstream's replace-or-append produces."""
    params = events.common_parameters(mtime, event_id=events.LOG_EVENT_ID, provider_id=events.LOG_PROVIDER_ID)
    replace = {"TaskName": ext["taskname"], "EventPid": ext["eventpid"], "EventTid": ext["eventtid"]}
    for p in params:
        if p["name"] in replace:
            p["value"] = replace[p["name"]]
    params += [{"name": "EventName", "value": f"{handler}-{ext['version']}"},
               {"name": "CapabilityUsed", "value": ext["eventlevel"]},
               {"name": "Context1", "value": ext["message"]},
               {"name": "Context2", "value": ext["timestamp"]},
               {"name": "Context3", "value": ext["operationid"]}]
    return {"eventId": events.LOG_EVENT_ID, "providerId": events.LOG_PROVIDER_ID, "parameters": params,
            "file_type": "json"}


def _read(path: str, sleep: Callable[[float], None], delay: float) -> Any:
    attempt = 0
    while True:
        attempt += 1
        try:
            with open(path, "rb") as f:
                return json.loads(f.read().decode("utf-8"))
        except (FileNotFoundError, ValueError):
            if attempt >= READ_ATTEMPTS:
                raise
        sleep(delay)


def _warn(message: str, lib_dir: str) -> None:
    log.warn("{0}", message)
    events.add_log_event("WARNING", message, lib_dir=lib_dir)


def _handler_dirs(ext_log_dir: str) -> list[tuple[str, str]]:
    base = str(system.path(ext_log_dir))
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for name in names:
        events_dir = os.path.join(base, name, "events")
        if os.path.isdir(os.path.join(base, name)) and HANDLER_NAME.match(name) and os.path.isdir(events_dir):
            out.append((name, events_dir))
    return out


def collect_handler(handler: str, directory: str, lib_dir: str, result: CollectResult,
                    sleep: Callable[[float], None] = time.sleep, delay: float = 1.0) -> int:
    files = sorted((n for n in os.listdir(directory) if FILE_NAME.match(n)), reverse=True)
    captured = 0
    dropped: Counter = Counter()
    try:
        for name in files:
            path = os.path.join(directory, name)
            try:
                size = os.stat(path).st_size
                if size > MAX_FILE_SIZE:
                    msg = (f"Skipping file: {path} as its size is {size / 1e6:.2f} Mb > Max size allowed "
                           f"{MAX_FILE_SIZE / 1e6:.1f} Mb")
                    result.skipped_files.append(path)
                    _warn(msg, lib_dir)
                    continue
                mtime = os.path.getmtime(path)
                items = _read(path, sleep, delay)
                for raw in items if isinstance(items, list) else [items]:
                    try:
                        ext = validate(raw)
                    except InvalidExtensionEvent as e:
                        dropped[f"[InvalidExtensionEventError] {e}"] += 1
                        continue
                    events.write_event_file(to_event(handler, ext, mtime), lib_dir)
                    captured += 1
                    if captured >= MAX_EVENTS_PER_PERIOD:
                        break
                if captured >= MAX_EVENTS_PER_PERIOD:
                    _warn(f"Reached max count for the extension: {handler}; Max Limit: {MAX_EVENTS_PER_PERIOD}. "
                          "Skipping the rest.", lib_dir)
                    break
            except Exception as e:  # one bad file never stops the others
                result.skipped_files.append(path)
                _warn(f"Failed to process event file {name}:{type(e).__name__}: {e}", lib_dir)
            finally:
                try:
                    os.remove(path)
                except OSError:
                    pass
    finally:
        if dropped:
            details = "\n\t".join(f"Reason: {k}; Dropped Count: {v}" for k, v in dropped.items())
            _warn(f"Dropped events for Extension: {handler}; Details:\n\t{details}", lib_dir)
            result.dropped[handler] = dropped
        if captured:
            log.info("Collected {0} events for extension: {1}", captured, handler)
        result.captured[handler] = captured
    return captured


def _empty(directory: str) -> None:
    try:
        names = os.listdir(directory)
    except OSError:
        return
    logged = False
    for name in names:
        try:
            os.remove(os.path.join(directory, name))
        except OSError as e:
            if not logged:
                log.error("Failed to completely clear the {0} directory. Exception: {1}", directory, e)
                logged = True


def collect(ext_log_dir: str, lib_dir: str, sleep: Callable[[float], None] = time.sleep,
            delay: float = 1.0) -> CollectResult:
    """One ETP run over every handler's events directory."""
    result = CollectResult()
    dirs = _handler_dirs(ext_log_dir)
    try:
        for handler, directory in dirs:
            collect_handler(handler, directory, lib_dir, result, sleep, delay)
    except Exception as e:
        events.add_event(events.WALAEventOperation.ExtensionTelemetryEventProcessing, is_success=False,
                         message=f"Unknown error occurred when trying to collect extension events:{e}",
                         lib_dir=lib_dir)
    finally:
        for _, directory in dirs:
            _empty(directory)
    return result
