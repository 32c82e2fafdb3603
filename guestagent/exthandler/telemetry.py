"""The telemetry pipeline (spec 06 §9, 01 §11): events directory → queue → ``?comp=telemetrydata``.

TelemetryEventsCollector reads ``<Lib.Dir>/events/*.tld`` every minute (JSON, or legacy XML), completes
legacy/extension events with the common parameters, redacts SAS tokens and queues them;
SendTelemetryHandler posts what is queued in batches below the 64 512-byte limit.

Durability (our choice, differs from upstream): upstream deletes an event file as soon as it is
queued, so a crash or a failed POST loses it. We delete a file only after the POST that carried it
succeeded; until then it stays on disk (and in an "in flight" set, so it is not queued twice). A
failed POST releases its files for the next collection; a file whose batch failed
``MAX_SEND_ATTEMPTS`` times is dropped and reported (``ReportEventErrors``), so one poisonous
event cannot block the pipeline. Unreadable or malformed files are deleted and reported
(``CollectEventErrors`` / ``CollectEventUnicodeErrors``) as upstream does.
"""

from __future__ import annotations

import json
import os
import queue
import re
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from guestagent import events, log
from guestagent.errors import XmlError
from guestagent.exthandler import extevents
from guestagent.osutil import system
from guestagent.periodic import Operation
from guestagent.protocol import xml
from guestagent.version import AGENT_NAME

if TYPE_CHECKING:  # the context imports these modules
    from guestagent.exthandler.context import ThreadContext

EVENT_FILE = re.compile(r"(?P<agent_event>\.waagent)?\.tld$")
COLLECT_PERIOD = 60.0
MAX_BUFFER = 2 ** 16 - 2 ** 10  # 64 512 bytes per request, as upstream
BATCH_EVENTS = 30
BATCH_WAIT = 5.0
READ_ATTEMPTS = 3
READ_RETRY_DELAY = 1.0
MAX_SEND_ATTEMPTS = 3
MAX_ERRORS_REPORTED = 5
EXTENSION_PARAMS = ("Name", "Version", "Operation", "OperationSuccess", "Message", "Duration")


class EventParseError(ValueError):
    pass


@dataclass
class TelemetryEvent:
    """One event as sent: ordered (name, value) parameters; the value's Python type gives the wire type."""

    event_id: int
    provider_id: str
    parameters: list[tuple[str, Any]] = field(default_factory=list)
    file_type: str = ""

    def get(self, name: str, default: Any = None) -> Any:
        for key, value in self.parameters:
            if key == name:
                return value
        return default

    def set(self, name: str, value: Any) -> None:
        for i, (key, _) in enumerate(self.parameters):
            if key == name:
                self.parameters[i] = (name, value)
                return
        self.parameters.append((name, value))

    def is_extension_event(self) -> bool:
        """A Name parameter other than WALinuxAgent (log and metric events have none)."""
        name = self.get("Name")
        return name is not None and name != AGENT_NAME

    @classmethod
    def from_dict(cls, data: dict) -> TelemetryEvent:
        """The on-disk JSON object (events.write_event_file's format)."""
        return _from_json_obj(data, "")


# --- parsing ---------------------------------------------------------------------------------------------

def quoteattr(value: str) -> str:
    """XML attribute quoting as upstream's ``xml.sax.saxutils.quoteattr`` (same output), without importing
    the xml.sax package into the child for one function."""
    value = value.replace("&", "&amp;").replace(">", "&gt;").replace("<", "&lt;")
    value = value.replace("\n", "&#10;").replace("\r", "&#13;").replace("\t", "&#9;")
    if '"' in value:
        if "'" in value:
            return '"' + value.replace('"', "&quot;") + '"'
        return "'" + value + "'"
    return '"' + value + '"'

def _from_json_obj(doc: Any, file_type: str) -> TelemetryEvent:
    if not isinstance(doc, dict):
        raise EventParseError("event is not a JSON object")
    params = doc.get("parameters")
    if not isinstance(params, list):
        raise EventParseError("event has no parameter list")
    try:
        event_id = int(doc.get("eventId", 0))
    except (TypeError, ValueError):
        raise EventParseError(f"invalid eventId {doc.get('eventId')!r}") from None
    out = TelemetryEvent(event_id, str(doc.get("providerId", "")), [], file_type)
    for p in params:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise EventParseError(f"invalid event parameter {str(p)[:80]!r}")
        value = p.get("value")
        if value is None:
            value = ""
        elif not isinstance(value, (bool, int, float, str)):
            value = json.dumps(value)
        out.parameters.append((p["name"], value))
    return out


def _xml_value(value: str, kind: str) -> Any:
    if kind == "mt:uint64":
        return int(value)
    if kind == "mt:bool":
        # upstream uses bool(value), which makes "False" true; we read the word
        return value.strip().lower() == "true"
    if kind == "mt:float64":
        return float(value)
    return value


def parse_event(text: str) -> TelemetryEvent:
    """JSON first (file_type "json"), else the legacy ``<Data><Provider/><Event/><Param/>…`` XML ("xml")."""
    try:
        doc = json.loads(text)
    except ValueError:
        return _parse_xml_event(text)
    return _from_json_obj(doc, "json")


def _parse_xml_event(text: str) -> TelemetryEvent:
    try:
        root = xml.parse(text, max_size=1024 * 1024, what="event")
        event_id = xml.attr(xml.find(root, "Event"), "id")
        provider_id = xml.attr(xml.find(root, "Provider"), "id")
        if event_id is None or provider_id is None:
            raise EventParseError("legacy XML event without Provider/Event id")
        out = TelemetryEvent(int(event_id), provider_id, [], "xml")
        for node in xml.findall(root, "Param"):
            out.parameters.append((xml.attr(node, "Name") or "",
                                   _xml_value(xml.attr(node, "Value") or "", xml.attr(node, "T") or "")))
        return out
    except (XmlError, ValueError, TypeError, AttributeError) as e:
        raise EventParseError(f"not a JSON or XML event: {e}") from None


def redact_message(event: TelemetryEvent) -> None:
    for i, (name, value) in enumerate(event.parameters):
        if name == "Message" and isinstance(value, str):
            event.parameters[i] = (name, log.redact(value))


def _common(event: TelemetryEvent, timestamp: float) -> list[tuple[str, Any]]:
    return [(p["name"], p["value"]) for p in events.common_parameters(timestamp, event_id=event.event_id,
                                                                       provider_id=event.provider_id,
                                                                       file_type=event.file_type)]


def complete_legacy_event(event: TelemetryEvent, mtime: float) -> None:
    """Extension events keep only their six fields plus our common set; agent events gain what is missing."""
    if event.is_extension_event():
        event.parameters = [(n, v) for n, v in event.parameters if n in EXTENSION_PARAMS] + _common(event, mtime)
        return
    present = {n for n, _ in event.parameters}
    event.parameters += [(n, v) for n, v in _common(event, mtime) if n not in present]


# --- encoding (01 §11.1) -----------------------------------------------------------------------------------
def _wire_type(value: Any) -> str:
    if isinstance(value, bool):
        return "mt:bool"
    if isinstance(value, int):
        return "mt:uint64"
    if isinstance(value, float):
        return "mt:float64"
    return "mt:wstr"


def encode_event(event: TelemetryEvent) -> bytes:
    params = "".join(f'<Param Name="{name}" Value={quoteattr(str(value))} T="{_wire_type(value)}" />'
                     for name, value in event.parameters)
    return f'<Event id="{event.event_id}"><![CDATA[{params}]]></Event>'.encode()


def telemetry_body(provider_id: str, encoded_events: bytes) -> str:
    return (f'<?xml version="1.0"?><TelemetryData version="1.0"><Provider id="{provider_id}">'
            f'{encoded_events.decode("utf-8")}</Provider></TelemetryData>')


@dataclass
class Batch:
    provider_id: str
    data: bytes
    items: list[Any]


def make_batches(items: list[tuple[Any, TelemetryEvent]]) -> tuple[list[Batch], list[tuple[Any, str]]]:
    """Group by provider, cut below MAX_BUFFER; returns (batches, dropped [(item, reason)]) ."""
    open_batches: dict[str, Batch] = {}
    done: list[Batch] = []
    dropped: list[tuple[Any, str]] = []
    for item, event in items:
        encoded = encode_event(event)
        if len(encoded) >= MAX_BUFFER:
            details = [f"{n}:{event.get(n)}" for n in ("Name", "Version", "Operation", "OperationSuccess")]
            reason = f"Single event too large: {details}, with the length: {len(encoded)} more than the limit({MAX_BUFFER})"
            log.periodic(1800, log.WARNING, "{0}", reason)
            dropped.append((item, reason))
            continue
        batch = open_batches.get(event.provider_id)
        if batch is not None and len(batch.data) + len(encoded) >= MAX_BUFFER:
            done.append(batch)
            batch = None
        if batch is None:
            batch = open_batches[event.provider_id] = Batch(event.provider_id, b"", [])
        batch.data += encoded
        batch.items.append(item)
    return done + list(open_batches.values()), dropped


# --- the pipeline ------------------------------------------------------------------------------------------
@dataclass
class Pending:
    path: str
    event: TelemetryEvent


class ErrorSummary:
    """Counts and the first few reasons, reported as one event per kind (upstream's debug info)."""

    def __init__(self, op: str, unicode_op: str):
        self.op, self.unicode_op = op, unicode_op
        self.errors: list[str] = []
        self.unicode_errors: list[str] = []
        self.count = self.unicode_count = 0

    def add(self, error: BaseException) -> None:
        text = f"{type(error).__name__}: {error}"
        if isinstance(error, UnicodeError):
            self.unicode_count += 1
            target = self.unicode_errors
        else:
            self.count += 1
            target = self.errors
        if len(target) < MAX_ERRORS_REPORTED and text not in target:
            target.append(text)

    def report(self, lib_dir: str) -> None:
        for op, count, reasons in ((self.op, self.count, self.errors),
                                   (self.unicode_op, self.unicode_count, self.unicode_errors)):
            if count:
                events.add_event(op, is_success=False, lib_dir=lib_dir,
                                 message=f"DroppedEventsCount: {count}\nReasons (first {MAX_ERRORS_REPORTED} "
                                         f"errors): {', '.join(reasons)}")


class TelemetryPipeline:
    """Shared by the collector and the sender threads of one ext-handler process."""

    def __init__(self, lib_dir: str, protocol: Any, *, read_retry_delay: float = READ_RETRY_DELAY,
                 sleep: Callable[[float], None] = time.sleep):
        self.lib_dir = lib_dir
        self.protocol = protocol
        self.read_retry_delay = read_retry_delay
        self.sleep = sleep
        self.queue: queue.Queue[Pending] = queue.Queue()
        self._in_flight: set[str] = set()
        self._send_failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self.stats = {"collected": 0, "sent": 0, "requests": 0, "failed_requests": 0, "dropped": 0,
                      "malformed": 0}

    @property
    def directory(self) -> str:
        return str(system.path(events.event_dir(self.lib_dir)))

    # -- collection --
    def _read(self, path: str) -> TelemetryEvent:
        attempt = 0
        while True:
            attempt += 1
            try:
                with open(path, "rb") as f:
                    data = f.read(4 * 1024 * 1024 + 1)
                if len(data) > 4 * 1024 * 1024:
                    raise EventParseError("event file larger than 4 MiB")
                return parse_event(data.decode("utf-8"))
            except UnicodeError:
                raise
            except (FileNotFoundError, EventParseError):
                if attempt >= READ_ATTEMPTS:
                    raise
            self.sleep(self.read_retry_delay)

    def collect(self) -> int:
        """Queue every event file not already in flight; returns how many were queued."""
        directory = self.directory
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return 0
        summary = ErrorSummary(events.WALAEventOperation.CollectEventErrors,
                               events.WALAEventOperation.CollectEventUnicodeErrors)
        queued = 0
        for name in names:
            match = EVENT_FILE.search(name)
            path = os.path.join(directory, name)
            if match is None or not os.path.isfile(path):
                continue
            with self._lock:
                if path in self._in_flight:
                    continue
            try:
                event = self._read(path)
                redact_message(event)
                if match.group("agent_event") is None:
                    complete_legacy_event(event, os.path.getmtime(path))
            except FileNotFoundError:
                continue
            except Exception as e:  # one bad file is reported, never blocks the rest
                summary.add(e)
                self.stats["malformed"] += 1
                log.verbose("Dropping unreadable event file {0}: {1}", name, e)
                _remove(path)
                continue
            with self._lock:
                self._in_flight.add(path)
            self.queue.put(Pending(path, event))
            queued += 1
        self.stats["collected"] += queued
        summary.report(self.lib_dir)
        return queued

    # -- sending --
    def take(self, first_wait: float = BATCH_WAIT, window: float = BATCH_WAIT,
             limit: int = BATCH_EVENTS) -> list[Pending]:
        """Wait up to ``first_wait`` for one event, then gather until ``limit`` events or ``window`` s."""
        try:
            items = [self.queue.get(timeout=first_wait) if first_wait > 0 else self.queue.get_nowait()]
        except queue.Empty:
            return []
        deadline = time.monotonic() + window
        while len(items) < limit:
            remaining = deadline - time.monotonic()
            try:
                items.append(self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait())
            except queue.Empty:
                break
        return items

    def send(self, items: list[Pending]) -> int:
        """Post ``items``; delete each file after its batch succeeded. Returns the number sent."""
        if not items:
            return 0
        summary = ErrorSummary(events.WALAEventOperation.ReportEventErrors,
                               events.WALAEventOperation.ReportEventUnicodeErrors)
        batches, dropped = make_batches([(p, p.event) for p in items])
        for pending, reason in dropped:
            summary.add(EventParseError(reason))
            self._finish(pending, delete=True)
            self.stats["dropped"] += 1
        sent = 0
        for batch in batches:
            self.stats["requests"] += 1
            try:
                self.protocol.post_telemetry(telemetry_body(batch.provider_id, batch.data))
            except Exception as e:
                self.stats["failed_requests"] += 1
                summary.add(e)
                for pending in batch.items:
                    self._failed(pending)
                continue
            for pending in batch.items:
                self._finish(pending, delete=True)
            sent += len(batch.items)
        self.stats["sent"] += sent
        summary.report(self.lib_dir)
        return sent

    def _failed(self, pending: Pending) -> None:
        with self._lock:
            n = self._send_failures.get(pending.path, 0) + 1
            self._send_failures[pending.path] = n
        if n >= MAX_SEND_ATTEMPTS:
            log.warn("Dropping event {0} after {1} failed sends", os.path.basename(pending.path), n)
            self.stats["dropped"] += 1
            self._finish(pending, delete=True)
        else:
            self._finish(pending, delete=False)  # stays on disk; the next collection queues it again

    def _finish(self, pending: Pending, delete: bool) -> None:
        if delete:
            _remove(pending.path)
            with self._lock:
                self._send_failures.pop(pending.path, None)
        with self._lock:
            self._in_flight.discard(pending.path)

    def send_pending(self, first_wait: float = BATCH_WAIT, window: float = BATCH_WAIT) -> int:
        return self.send(self.take(first_wait, window))

    def flush(self) -> int:
        """Collect and send everything now (tests, shutdown)."""
        self.collect()
        sent = 0
        while not self.queue.empty():
            sent += self.send(self.take(0, 0, limit=10_000))
        return sent


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.periodic(3600, log.WARNING, "Could not remove event file {0}: {1}", path, e)


def get_pipeline(ctx: ThreadContext) -> TelemetryPipeline:
    """One pipeline per ThreadContext (the two telemetry threads share it)."""
    if ctx.telemetry is None:
        ctx.telemetry = TelemetryPipeline(ctx.lib_dir, ctx.protocol)
    return ctx.telemetry


def collect_operations(ctx: ThreadContext) -> list[Operation]:
    """TelemetryEventsCollector: agent events every minute, extension (ETP) events every EtpCollectionPeriod."""
    pipeline = get_pipeline(ctx)
    ext_log_dir = ctx.config.extension_log_dir
    etp_period = ctx.config.debug_etp_collection_period
    return [Operation("CollectAndEnqueueEvents", pipeline.collect, COLLECT_PERIOD),
            Operation("ProcessExtensionEvents", lambda: extevents.collect(ext_log_dir, ctx.lib_dir), etp_period)]


def send_operations(ctx: ThreadContext) -> list[Operation]:
    """SendTelemetryHandler: block up to 5 s for an event, gather ≤ 30 events or 5 s, post."""
    pipeline = get_pipeline(ctx)
    return [Operation("SendTelemetryEvents", pipeline.send_pending, 0.5)]
