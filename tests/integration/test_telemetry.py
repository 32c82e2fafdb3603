"""Telemetry, health signals and log upload against the fabric emulator over loopback HTTP.

Events go to disk, through the pipeline, over real HTTP to the fabric, which parses them with its own
code; the test compares what was stored with what was sent. Also: a telemetry outage loses nothing,
the monitor's minute costs at most 2 requests, and the log archive reaches /vmAgentLog.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from guestagent import events
from guestagent.conf import Config
from guestagent.errors import HttpError
from guestagent.exthandler import extevents, monitor, telemetry
from guestagent.protocol import activity
from guestagent.protocol.http import HttpClient
from guestagent.protocol.imds import ImdsClient
from guestagent.protocol.wire import detect

LIB = "/var/lib/waagent"


@pytest.fixture
def proto(tmp_root, fab):
    proto = detect(Config(), LIB, endpoint_ip="127.0.0.1", wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                   sleep=lambda s: None)
    shutil.rmtree(tmp_root / LIB.lstrip("/") / "events", ignore_errors=True)  # detection's own events
    return proto


def _pipeline(proto):
    return telemetry.TelemetryPipeline(LIB, proto, read_retry_delay=0, sleep=lambda s: None)


def test_events_round_trip_through_fabric(tmp_root, fab, proto):
    events.update_common_from_goal_state(proto.goal_state)
    events.add_event("RoundTrip", message="héllo wörld ✓ <xml> & \"quotes\"", duration=7, lib_dir=LIB)
    events.add_event("Failing", is_success=False, message="boom", log_event=False, lib_dir=LIB)
    events.add_metric("CPU", "% Processor Time", "walinuxagent.service", 3.5, lib_dir=LIB)
    events.add_log_event("WARNING", "from the log", lib_dir=LIB)
    assert _pipeline(proto).flush() == 4
    assert os.listdir(tmp_root / "var/lib/waagent/events") == []
    got = {(e.get("params") or {}).get("Operation") or (e.get("params") or {}).get("EventName")
           or (e.get("params") or {}).get("Counter"): e for e in fab.telemetry}
    rt = got["RoundTrip"]["params"]
    assert rt["Message"] == "héllo wörld ✓ <xml> & \"quotes\""
    assert str(rt["Duration"]) == "7" and str(rt["OperationSuccess"]).lower() == "true"
    assert rt["ContainerId"] == proto.goal_state.container_id
    assert rt["RoleInstanceName"] == proto.goal_state.role_instance_id
    assert str(got["Failing"]["params"]["OperationSuccess"]).lower() == "false"
    assert float(got["% Processor Time"]["params"]["Value"]) == 3.5
    assert got["Log"]["params"]["Context1"] == "from the log"
    assert {str(e.get("provider")).upper() for e in fab.telemetry} == {events.PROVIDER_ID, events.LOG_PROVIDER_ID}


def test_outage_loses_nothing(tmp_root, fab, proto):
    for i in range(5):
        events.add_event("Durable", message=str(i), lib_dir=LIB)
    fab.faults.add("telemetrydata", status=500, count=3)  # one whole send (3 tries) fails
    pipe = _pipeline(proto)
    pipe.flush()
    assert not [e for e in fab.telemetry if e["params"].get("Operation") == "Durable"]
    assert len([n for n in os.listdir(tmp_root / "var/lib/waagent/events") if n.endswith(".tld")]) >= 5
    telemetry.TelemetryPipeline(LIB, proto, read_retry_delay=0).flush()  # "after a restart"
    sent = sorted(e["params"]["Message"] for e in fab.telemetry if e["params"].get("Operation") == "Durable")
    assert sent == ["0", "1", "2", "3", "4"]


def test_upstream_event_samples_through_fabric(tmp_root, fab, proto, upstream):
    src = upstream / "events"
    dst = tmp_root / "var/lib/waagent/events"
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    (dst / "event_from_extension.tld").write_bytes((upstream / "ext/event_from_extension.xml").read_bytes())
    _pipeline(proto).flush()
    _pipeline(proto).flush()  # the error summaries written by the first run
    ops = [e["params"].get("Operation") for e in fab.telemetry]
    assert "CollectEventErrors" in ops and "CollectEventUnicodeErrors" in ops
    names = {e["params"].get("Name") for e in fab.telemetry}
    assert {"Microsoft.Azure.Extensions.CustomScript", "Microsoft.OSTCExtensions.VMAccessForLinux",
            "WALinuxAgent"} <= names
    assert not any("sig=" in str(e["params"].get("Message", "")).lower() and "<redacted>" not in
                   str(e["params"].get("Message")) for e in fab.telemetry)


def test_etp_events_reach_fabric(tmp_root, fab, proto, upstream):
    d = tmp_root / "var/log/azure/Microsoft.Test.Ext/events"
    d.mkdir(parents=True)
    for f in (upstream / "events/extension_events/well_formed_files").iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    result = extevents.collect("/var/log/azure", LIB, sleep=lambda s: None)
    assert result.captured["Microsoft.Test.Ext"] > 0 and os.listdir(d) == []
    _pipeline(proto).flush()
    etp = [e for e in fab.telemetry if str(e["params"].get("EventName", "")).startswith("Microsoft.Test.Ext-")]
    assert len(etp) == result.captured["Microsoft.Test.Ext"]
    assert all(e["params"]["Context1"] for e in etp)


def test_health_minute_costs_at_most_two_requests(tmp_root, fab, proto):
    activity.reset()
    imds = ImdsClient("127.0.0.1", fab.imds_port, http=HttpClient(sleep=lambda s: None))
    health = monitor.HealthSignals(proto, imds, LIB)
    activity.install(proto.http)
    before = len(fab.requests)
    health.run()  # cold: HGAP /health (+ /versions once), IMDS, one HealthService post
    first = [r["kind"] for r in fab.requests[before:]]
    assert first.count("healthservice") == 1 and "imds" in first
    proto.host_plugin.health()  # HGAP just answered (as /status or /vmSettings would)
    before = len(fab.requests)
    health.run()
    kinds = [r["kind"] for r in fab.requests[before:]]
    assert sorted(kinds) == ["healthservice", "imds"], kinds
    assert health.probes["hgap_skipped"] == 1
    posted = fab.records["healthservice"][-1]
    names = {o["ObservationName"] for o in posted.get("Observations", posted.get("observations", []))} \
        if isinstance(posted, dict) else set()
    assert not names or names == {"GuestAgentPluginHeartbeat", "InstanceMetadataHeartbeat"}
    assert {o["ObservationName"] for o in fab.records["healthservice"][0]["Observations"]} == {
        "GuestAgentPluginVersions", "GuestAgentPluginHeartbeat", "InstanceMetadataHeartbeat"}


def test_log_archive_upload(tmp_root, fab, proto):
    from guestagent.exthandler.logcollector import LogCollector

    (tmp_root / "var/log").mkdir(parents=True, exist_ok=True)
    (tmp_root / "var/log/waagent.log").write_text("line\n")
    archive, _ = LogCollector(Config()).collect()
    data = (tmp_root / archive.lstrip("/")).read_bytes()
    proto.upload_logs(data)
    assert fab.vm_agent_logs[-1]["data"] == data


def _observations(fab) -> list:
    return [o for post in fab.records["healthservice"] for o in post.get("Observations", [])]


def test_health_service_reports_hgap_versions_and_status_as_upstream(tmp_root, fab, proto):
    """GuestAgentPluginVersions (the /versions call, with InitializeHostPlugin in telemetry) and
    GuestAgentPluginStatus (the status upload through HGAP: at most one a minute, unhealthy only after
    5 minutes of HGAP's own failures, the error as the value) go out with the minute's post."""
    clock = [1000.0]
    hp = proto.host_plugin
    hp.clock = lambda: clock[0]
    hp.is_initialized = False
    fab.faults.add("hgap_versions", status=500, count=50)
    assert not hp.ensure_initialized()
    fab.faults.clear()
    assert hp.ensure_initialized()
    sas = proto.goal_state.extensions_goal_state.status_upload_blob
    hp.put_status(sas, "{}")
    fab.faults.add("hgap_status", status=508, count=3)  # a 5xx the client does not retry (as upstream)
    for minutes in (0.5, 1.0, 6.5):  # within the minute: not reported; then failing 1 min; then 6.5 min
        clock[0] = 1000.0 + 60 * minutes
        with pytest.raises(HttpError):
            hp.put_status(sas, "{}")
    imds = ImdsClient("127.0.0.1", fab.imds_port, http=HttpClient(sleep=lambda s: None))
    monitor.HealthSignals(proto, imds, LIB).run()
    obs = [(o["ObservationName"], o["IsHealthy"], o["Value"][:30]) for o in _observations(fab)]
    failed = "[HTTP Failed] [508: Loop Detec"
    assert obs[:5] == [("GuestAgentPluginVersions", False, ""),  # retries exhausted: upstream's HttpError
                       ("GuestAgentPluginVersions", True, ""), ("GuestAgentPluginStatus", True, ""),
                       ("GuestAgentPluginStatus", True, failed), ("GuestAgentPluginStatus", False, failed)], obs
    _pipeline(proto).flush()
    sent = [(e["params"]["Operation"], str(e["params"]["OperationSuccess"]).lower(), e["params"]["Message"])
            for e in fab.telemetry if e["params"].get("Operation") in ("InitializeHostPlugin", "HealthObservation")]
    assert sent[:2] == [("InitializeHostPlugin", "false", ""), ("InitializeHostPlugin", "true", "")], sent
    unhealthy = [json.loads(m) for op, _, m in sent if op == "HealthObservation"]
    assert [o["ObservationName"] for o in unhealthy] == ["GuestAgentPluginVersions", "GuestAgentPluginStatus"]


def test_imds_observation_carries_the_error_as_its_value(tmp_root, fab, proto):
    imds = ImdsClient("127.0.0.1", fab.imds_port, http=HttpClient(sleep=lambda s: None))
    assert imds.heartbeat(single_attempt=True)["Value"] == ""
    fab.faults.add("imds", status=500)
    obs = imds.heartbeat(single_attempt=True)
    assert obs["Value"].startswith("IMDS error in /metadata/instance: ") and obs["IsHealthy"], obs
    fab.faults.add("imds", body="malformed", count=5)
    assert imds.heartbeat(single_attempt=True)["Value"].startswith("JSON parsing failed: ")
