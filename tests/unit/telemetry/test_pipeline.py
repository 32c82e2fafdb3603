"""The telemetry pipeline: event files → parse/complete/redact → batches → posts, and durability.

The POST itself is recorded by a small stand-in here (the HTTP round trip against the fabric is in
tests/integration/test_telemetry.py); everything else is the real code on real files.
"""

from __future__ import annotations

import json
import os
import re

import pytest

from guestagent import events
from guestagent.exthandler import telemetry
from guestagent.exthandler.telemetry import TelemetryEvent, TelemetryPipeline


class Recorder:
    def __init__(self, fail: int = 0):
        self.bodies: list[str] = []
        self.fail = fail

    def post_telemetry(self, body: str, flush: bool = False) -> None:
        if self.fail:
            self.fail -= 1
            raise OSError("connection refused")
        self.bodies.append(body)


def _params(body: str) -> list[dict[str, tuple[str, str]]]:
    out = []
    for ev in re.findall(r"<!\[CDATA\[(.*?)\]\]>", body, re.S):
        found = re.findall(r'<Param Name="([^"]*)" Value=("[^"]*"|\'[^\']*\') T="([^"]*)" />', ev)
        out.append({m[0]: (m[1][1:-1], m[2]) for m in found})
    return out


@pytest.fixture
def lib(tmp_path):
    d = tmp_path / "lib"
    d.mkdir()
    return str(d)


def _pipeline(lib, proto):
    return TelemetryPipeline(lib, proto, read_retry_delay=0, sleep=lambda s: None)


def test_agent_event_round_trip_and_file_deleted_after_send(lib):
    events.add_event("TestOp", message="hello <&> \"x\"", duration=12, lib_dir=lib)
    files = os.listdir(os.path.join(lib, "events"))
    assert len(files) == 1 and files[0].endswith(".waagent.tld")
    assert oct(os.stat(os.path.join(lib, "events", files[0])).st_mode & 0o777) == "0o600"
    proto = Recorder()
    assert _pipeline(lib, proto).flush() == 1
    assert os.listdir(os.path.join(lib, "events")) == []
    body = proto.bodies[0]
    assert body.startswith('<?xml version="1.0"?><TelemetryData version="1.0"><Provider id="69B669B9-')
    (p,) = _params(body)
    assert p["Operation"] == ("TestOp", "mt:wstr")
    assert p["OperationSuccess"] == ("True", "mt:bool")
    assert p["Duration"] == ("12", "mt:uint64")
    assert p["Message"][0] == 'hello &lt;&amp;&gt; "x"'  # quoteattr picks single quotes here
    assert p["GAVersion"][0].startswith("WALinuxAgent-")
    assert p["ExtensionType"] == ("", "mt:wstr") and p["IsInternal"] == ("False", "mt:bool")


def test_failed_post_keeps_files_then_sends_them(lib):
    for i in range(3):
        events.add_event("Op", message=f"m{i}", lib_dir=lib)
    proto = Recorder(fail=1)
    pipe = _pipeline(lib, proto)
    pipe.flush()
    kept = [n for n in os.listdir(os.path.join(lib, "events")) if n.endswith(".waagent.tld")]
    assert len(kept) == 3 + 1 - 1 or len(kept) >= 3  # the 3 events stay (+ a ReportEventErrors event)
    # a new pipeline (= a restart) sends them all
    proto2 = Recorder()
    assert _pipeline(lib, proto2).flush() >= 3
    ops = [p["Operation"][0] for b in proto2.bodies for p in _params(b)]
    assert ops.count("Op") == 3 and "ReportEventErrors" in ops


def test_poisonous_event_dropped_after_max_attempts(lib):
    events.add_event("Op", lib_dir=lib)
    pipe = _pipeline(lib, Recorder(fail=100))
    for _ in range(telemetry.MAX_SEND_ATTEMPTS):
        pipe.flush()
    names = os.listdir(os.path.join(lib, "events"))
    contents = [open(os.path.join(lib, "events", n)).read() for n in names]
    assert not any('"Op"' in c for c in contents)
    assert pipe.stats["dropped"] >= 1


def test_batches_stay_below_limit():
    big = "x" * 20000
    items = [(i, TelemetryEvent(1, events.PROVIDER_ID, [("Message", big)])) for i in range(7)]
    items.append((99, TelemetryEvent(7, events.LOG_PROVIDER_ID, [("Context1", "y")])))
    items.append((100, TelemetryEvent(1, events.PROVIDER_ID, [("Message", "z" * 70000)])))
    batches, dropped = telemetry.make_batches(items)
    assert [d[0] for d in dropped] == [100]
    assert all(len(b.data) < telemetry.MAX_BUFFER for b in batches)
    assert sorted(i for b in batches for i in b.items) == [0, 1, 2, 3, 4, 5, 6, 99]
    assert {b.provider_id for b in batches} == {events.PROVIDER_ID, events.LOG_PROVIDER_ID}
    assert len([b for b in batches if b.provider_id == events.PROVIDER_ID]) == 3


def test_wire_types_and_quoting():
    ev = TelemetryEvent(4, events.PROVIDER_ID, [("A", 1), ("B", True), ("C", 1.5), ("D", "it's \"q\"")])
    text = telemetry.encode_event(ev).decode()
    assert text.startswith('<Event id="4"><![CDATA[<Param Name="A" Value="1" T="mt:uint64" />')
    assert '<Param Name="B" Value="True" T="mt:bool" />' in text
    assert '<Param Name="C" Value="1.5" T="mt:float64" />' in text
    assert "Value='it&apos;s \"q\"'" in text or 'Value="it\'s &quot;q&quot;"' in text


def test_sas_redacted_in_message_and_on_disk(lib):
    sas = "https://acct.blob.core.windows.net/c/b?sv=2020&sig=SECRETSIG123"
    events.add_event("Op", message=f"download {sas}", lib_dir=lib)
    raw = "".join(open(os.path.join(lib, "events", n)).read() for n in os.listdir(os.path.join(lib, "events")))
    assert "SECRETSIG123" not in raw
    # a legacy file written by an extension with a SAS in it is redacted at collection
    legacy = {"eventId": 1, "providerId": events.PROVIDER_ID,
              "parameters": [{"name": "Name", "value": "Ext.Handler"}, {"name": "Message", "value": sas}]}
    with open(os.path.join(lib, "events", "123.tld"), "w") as f:
        json.dump(legacy, f)
    proto = Recorder()
    _pipeline(lib, proto).flush()
    assert "SECRETSIG123" not in "".join(proto.bodies)


def test_legacy_extension_event_trimmed_and_completed(lib):
    legacy = {"eventId": 1, "providerId": events.PROVIDER_ID, "parameters": [
        {"name": "Name", "value": "Ext.Handler"}, {"name": "Version", "value": "1.0"},
        {"name": "Operation", "value": "Enable"}, {"name": "OperationSuccess", "value": True},
        {"name": "Message", "value": "ok"}, {"name": "Duration", "value": 3},
        {"name": "GAVersion", "value": "spoofed"}, {"name": "RAM", "value": 1}]}
    os.makedirs(os.path.join(lib, "events"))
    path = os.path.join(lib, "events", "1478123456789000.tld")
    with open(path, "w") as f:
        json.dump(legacy, f)
    os.utime(path, (1_600_000_000, 1_600_000_000))
    proto = Recorder()
    _pipeline(lib, proto).flush()
    (p,) = _params(proto.bodies[0])
    assert p["GAVersion"][0].startswith("WALinuxAgent-") and p["RAM"][0] != "1"
    assert p["OpcodeName"][0] == "2020-09-13T12:26:40.000000Z"  # the file's mtime
    assert p["ExtensionType"][0] == "json"


def test_malformed_files_skipped_reported_and_deleted(lib):
    d = os.path.join(lib, "events")
    os.makedirs(d)
    with open(os.path.join(d, "1.tld"), "w") as f:
        f.write("{not json")
    with open(os.path.join(d, "2.tld"), "wb") as f:
        f.write('{"eventId": 1}'.encode("utf-16"))
    with open(os.path.join(d, "3.tmp"), "w") as f:
        f.write("ignored")
    events.add_event("Good", lib_dir=lib)
    proto = Recorder()
    pipe = _pipeline(lib, proto)
    assert pipe.collect() == 1
    left = os.listdir(d)
    assert "3.tmp" in left and "1.tld" not in left and "2.tld" not in left
    pipe.flush()
    ops = [p["Operation"][0] for b in proto.bodies for p in _params(b)]
    assert "Good" in ops and "CollectEventErrors" in ops and "CollectEventUnicodeErrors" in ops


def test_events_dir_capped(lib, monkeypatch):
    monkeypatch.setattr(events, "MAX_EVENT_FILES", 5)
    for i in range(8):
        events.add_event("Op", message=str(i), lib_dir=lib)
    names = sorted(os.listdir(os.path.join(lib, "events")))
    assert len(names) == 5
    assert '"7"' in open(os.path.join(lib, "events", names[-1])).read()


def test_periodic_and_report_status_dedup(lib):
    events.reset_periodic()
    assert events.add_periodic(3600, "Op", message="same", lib_dir=lib)
    assert not events.add_periodic(3600, "Op", message="same", lib_dir=lib)
    assert events.add_periodic(3600, "Op", message="other", lib_dir=lib)
    assert events.should_emit_event("H", "1.0", "ReportStatus", True, lib_dir=lib)
    events.mark_event_status("H", "1.0", "ReportStatus", True, lib_dir=lib)
    assert not events.should_emit_event("H", "1.0", "ReportStatus", True, lib_dir=lib)
    assert events.should_emit_event("H", "1.0", "ReportStatus", False, lib_dir=lib)
    assert json.load(open(os.path.join(lib, "event_status.json"))) == {"H-1.0-ReportStatus": True}


def test_metric_and_log_event_shapes(lib):
    events.add_metric("CPU", "% Processor Time", "walinuxagent.service", 1.25, lib_dir=lib)
    events.add_log_event("WARNING", "careful", lib_dir=lib)
    proto = Recorder()
    _pipeline(lib, proto).flush()
    by_provider = {b.split('Provider id="')[1][:8]: _params(b) for b in proto.bodies}
    (metric,) = by_provider["69B669B9"]
    assert metric["Value"] == ("1.25", "mt:float64") and "ExtensionType" not in metric
    (logev,) = by_provider["FFF0196F"]
    assert logev["EventName"][0] == "Log" and logev["Context1"][0] == "careful"


def test_sender_waits_for_batch_window(lib):
    pipe = _pipeline(lib, Recorder())
    assert pipe.take(first_wait=0.05) == []
    events.add_event("Op", lib_dir=lib)
    pipe.collect()
    assert len(pipe.take(first_wait=0.05, window=0.05)) == 1
