"""`guestagent fabric status` shows what the agent really sent: the HeartBeat event, the events by operation and
the last failures (through the agent's telemetry pipeline, over loopback HTTP), the HealthService signals, and
the collected-log uploads."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

from guestagent import conf, events
from guestagent.conf import Config
from guestagent.exthandler import telemetry
from guestagent.exthandler.main import ExtHandler
from guestagent.fabric import cli
from guestagent.fabric.server import Fabric
from guestagent.protocol.status import build_vm_status
from guestagent.protocol.wire import detect

LIB = "/var/lib/waagent"


def test_status_shows_heartbeat_events_errors_and_log_uploads(tmp_root, tmp_path, capsys):
    state = tmp_path / "fabric"
    with Fabric(host="127.0.0.1", state_dir=str(state)) as fab:
        proto = detect(Config(), LIB, endpoint_ip="127.0.0.1", wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                       sleep=lambda s: None)
        config = conf.parse(f"Lib.Dir={LIB}\n")
        proto.upload_status(build_vm_status(config, proto.goal_state, []))
        shutil.rmtree(tmp_root / LIB.lstrip("/") / "events")  # the protocol's own events: not this test's
        assert cli.main(["status", "--state-dir", str(state)]) == 0
        out = capsys.readouterr().out
        assert "Heartbeat   none received" in out and "Log upload  none received" in out
        # what the child sends: its heartbeat, extension command events, a failure, perf counters
        ExtHandler(SimpleNamespace(debug=False), config)._heartbeat()
        events.add_event("Enable", name="Contoso.Ext", message="enable succeeded", lib_dir=LIB)
        events.add_event("Enable", name="Contoso.Ext", message="enable succeeded", lib_dir=LIB)
        events.add_event("Download", name="Contoso.Ext", is_success=False, message="Failed to download: 404",
                         log_event=False, lib_dir=LIB)
        events.add_metric("CPU", "% Processor Time", "walinuxagent.service", 1.5, lib_dir=LIB)
        assert telemetry.TelemetryPipeline(LIB, proto, read_retry_delay=0, sleep=lambda s: None).flush() == 5
        proto.post_health_observations([{"ObservationName": "GuestAgentPluginHeartbeat", "IsHealthy": True,
                                         "Description": "", "Value": ""},
                                        {"ObservationName": "InstanceMetadataHeartbeat", "IsHealthy": False,
                                         "Description": "", "Value": ""}])
        proto.upload_logs(b"PK\x05\x06" + b"\0" * 18)
        fab.wait_for(lambda: fab.vm_agent_logs)

    assert cli.main(["status", "--state-dir", str(state)]) == 0
    out = capsys.readouterr().out
    lines = {line[:12].strip(): line[12:] for line in out.splitlines() if line[:12].strip()}
    assert "[HEARTBEAT] Agent WALinuxAgent-" in lines["Heartbeat"] and "HeartbeatCounter: 0" in lines["Heartbeat"]
    assert lines["Events"].startswith("5 telemetry events received: Enable 2, Download 1, HeartBeat 1, PerfCounter 1")
    error = next(line for line in out.splitlines() if line.strip().startswith("error"))
    assert "Download [Contoso.Ext]: Failed to download: 404" in error
    assert "GuestAgentPluginHeartbeat healthy, InstanceMetadataHeartbeat UNHEALTHY" in lines["Signals"]
    assert lines["Log upload"].startswith("1 archive(s), 22 bytes; last ") and "vmagentlog/0000.zip" in out

    assert cli.main(["status", "--state-dir", str(state), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["telemetry"]["by_operation"]["Enable"] == 2 and doc["telemetry"]["total"] == 5
    assert doc["telemetry"]["recent_errors"][0]["operation"] == "Download"
    assert doc["telemetry"]["heartbeat"]["operation"] == "HeartBeat"
    assert doc["log_uploads"][0]["size"] == 22 and doc["last_health_signals"]["Observations"][1]["IsHealthy"] is False
