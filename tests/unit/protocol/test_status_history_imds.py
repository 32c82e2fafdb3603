"""Status JSON shape, blob request layout, goal-state history housekeeping and the IMDS probe rules."""

import json
import os
import time
import zipfile

from guestagent import timestamps
from guestagent.conf import Config
from guestagent.protocol import history, hostplugin, imds, status
from guestagent.protocol.extconfig import empty_goal_state
from guestagent.protocol.goalstate import GoalState, parse_goal_state, parse_on_hold

GOAL_STATE = ("<GoalState><Incarnation>{0}</Incarnation><Container><ContainerId>c</ContainerId>"
              "<RoleInstanceList><RoleInstance><InstanceId>i</InstanceId><Configuration>"
              "<ConfigName>d1.2.x.xml</ConfigName></Configuration></RoleInstance></RoleInstanceList>"
              "</Container></GoalState>")


def test_vm_status_shape_and_wire_form():
    gs = GoalState(parse_goal_state(GOAL_STATE.format("7")), empty_goal_state("7"), fast_track_supported=True)
    doc = status.build_vm_status(Config(), gs, [], computer_name="vm", os_name="debian",
                                 os_version="12", now=0)
    assert list(doc) == ["version", "timestampUTC", "aggregateStatus", "guestOSInfo", "supportedFeatures"]
    assert doc["timestampUTC"] == "1970-01-01T00:00:00Z"
    agg = doc["aggregateStatus"]
    assert agg["guestAgentStatus"] == {"version": "2.15.0.1", "status": "Ready",
                                       "formattedMessage": {"lang": "en-US", "message": "Guest Agent is running"}}
    assert agg["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]["inSvdSeqNo"] == "7"
    assert doc["guestOSInfo"] == {"computerName": "vm", "osName": "debian", "osVersion": "12", "version": "2.15.0.1"}
    # no VersioningGovernance: this agent does not run the platform's agent packages (issue 15)
    assert [f["Key"] for f in doc["supportedFeatures"]] == ["MultipleExtensionsPerHandler", "FastTrack"]
    text = status.to_json(status.build_vm_status(Config(), None, [{"m": "é"}], computer_name="vm", os_name="d",
                                                 os_version="1"))
    assert '"m": "\\u00e9"' in text and '"version": "1.1", ' in text
    assert "vmArtifactsAggregateStatus" not in text and "FastTrack" not in text


def test_sas_redaction_in_messages():
    assert status.redact_sas("x https://a.blob/c/d?sv=2020&sig=abc y") == "x https://a.blob/c/d?<redacted> y"
    assert status.redact_sas("no url") == "no url"


def test_block_and_page_blob_requests():
    reqs = hostplugin.blob_requests("http://s/b?sv=1", b"x" * 1000, "PageBlob", now=0)
    assert [r.uri for r in reqs] == ["http://s/b?sv=1", "http://s/b?sv=1&comp=page"]
    assert reqs[0].headers == [("Content-Length", "0"), ("x-ms-blob-content-length", "1024"),
                               ("x-ms-blob-type", "PageBlob"), ("x-ms-date", "1970-01-01T00:00:00Z"),
                               ("x-ms-version", "2014-02-14")]
    assert dict(reqs[1].headers)["x-ms-range"] == "bytes=0-1023" and reqs[1].content.endswith(b"\0" * 24)
    big = hostplugin.blob_requests("http://s/b", b"y" * (4 * 1024 * 1024 + 10), "PageBlob")
    assert len(big) == 3 and big[1].uri == "http://s/b?comp=page"
    assert dict(big[2].headers)["x-ms-range"] == "bytes=4194304-4194815"
    block = hostplugin.blob_requests("http://s/b", b"abc", "BlockBlob", now=0)
    assert block[0].headers[0] == ("Content-Length", "3") and block[0].content == b"abc"


def test_ticks_to_timestamp_float_path():
    assert timestamps.ticks_to_timestamp(637726657706205217) == "2021-11-16T13:22:50.620522Z"
    assert timestamps.ticks_to_timestamp(0) == "0001-01-01T00:00:00.000000Z"
    assert timestamps.ticks_to_timestamp("junk") == "0001-01-01T00:00:00.000000Z"


def test_on_hold_values():
    assert parse_on_hold('{"onHold": true}') and parse_on_hold('{"onHold": "TRUE"}')
    for text in ('{"onHold": false}', '{"onHold": 1}', "", "not json", "[]", None):
        assert not parse_on_hold(text)


def test_goal_state_model_properties():
    doc = parse_goal_state(GOAL_STATE.format("3"))
    gs = GoalState(document=doc, extensions_goal_state=empty_goal_state("3"))
    assert (gs.incarnation, gs.container_id, gs.role_instance_id, doc.deployment_id) == ("3", "c", "i", "d1")
    assert doc.extensions_config_uri is None and doc.certificates_uri is None


def test_history_names_purge_and_archive(tmp_root):
    h = history.History("/var/lib/waagent")
    assert history.folder_name("5", now=0) == "1970-01-01T00-00-00__5"
    for i in range(55):
        h.start(f"{i}", now=1_000_000 + i)
        h.save("GoalState.xml", "<x/>")
    root = tmp_root / "var/lib/waagent/history"
    assert len(os.listdir(root)) == 50
    h.archive()
    names = sorted(os.listdir(root))
    zips = [n for n in names if n.endswith(".zip")]
    assert len(zips) == 49 and len(names) == 50 and "1970-01-12T13-47-34__54" in names
    with zipfile.ZipFile(root / zips[0]) as zf:
        assert zf.namelist() == ["GoalState.xml"]


def test_legacy_goal_state_copies_of_an_older_agent_are_purged(tmp_root):
    """What 2.7.3 (Debian's waagent) left beside the state when this agent took over, as seen in the VM
    tier's takeover: upstream's ext-handler deletes these copies at start, keeping SharedConfig.xml
    (other tools read it), the GoalState.1.xml placeholder and everything else."""
    lib = tmp_root / "var/lib/waagent"
    legacy = ["ExtensionsConfig.1.xml", "GoalState.3.xml", "Prod.1.manifest.xml", "HostingEnvironmentConfig.xml",
              "GuestAgent.Fabric.Sample.1.manifest.xml", "VmSettings.639320995438515048.json",
              "waagent_status.3.json", "RemoteAccess.xml", "WALinuxAgent.2.agentsManifest"]
    kept = ["GoalState.1.xml", "SharedConfig.xml", "Certificates.xml", "Certificates.pem", "Incarnation",
            "ovf-env.xml", "provisioned", "waagent_status.json", "TransportCert.pem", "Protocol"]
    (lib / "GuestAgent.Fabric.Sample-1.0.0").mkdir(parents=True)
    (lib / "Odd.1.xml").mkdir()   # a folder is never removed
    for name in legacy + kept:
        (lib / name).write_text("x")
    history.purge_legacy("/var/lib/waagent")
    assert sorted(os.listdir(lib)) == sorted([*kept, "GuestAgent.Fabric.Sample-1.0.0", "Odd.1.xml"])
    history.purge_legacy("/var/lib/waagent/missing")   # logged, never raises


def test_history_disabled_and_errors_never_raise(tmp_root):
    h = history.History("/var/lib/waagent", enabled=False)
    assert h.start("1") is None
    h.save("x", "y")
    h2 = history.History("/var/lib/waagent")
    (tmp_root / "var/lib/waagent").mkdir(parents=True)
    (tmp_root / "var/lib/waagent/history").write_text("a file where the folder should be")
    h2.start("1")
    h2.save("GoalState.xml", "<x/>")


def test_redaction_helpers():
    xml_text = ('<StatusUploadBlob statusBlobType="BlockBlob">https://a/b.status?sv=1&amp;sig=S</StatusUploadBlob>'
                '<InVMArtifactsProfileBlob>https://a/p?sig=Q</InVMArtifactsProfileBlob>'
                '{"protectedSettings":"PPP", "x": 1}')
    out = history.redact_extensions_config(xml_text)
    assert "sig=" not in out and "PPP" not in out and out.count("***REDACTED***") == 3
    vm = json.dumps({"statusUploadBlob": {"statusBlobType": "PageBlob", "value": "https://a/b?sv=1&sig=S"},
                     "settings": [{"protectedSettings": "PPP"}]})
    out = history.redact_vm_settings(vm)
    assert "sig=" not in out and "PPP" not in out


def test_imds_probe_rules():
    ok = json.dumps({"network": {"interface": [{"macAddress": "000D3A", "ipv4": {"ipAddress": [
        {"privateIpAddress": "10.0.0.4"}]}}]}})
    assert imds.probe_result(200, ok, "")[0]
    assert not imds.probe_result(200, "{}", "")[0] and not imds.probe_result(200, "junk", "")[0]
    assert not imds.probe_result(500, ok, "")[0] and not imds.probe_result(410, ok, "")[0]
    assert imds.probe_result(404, "", "")[0]
    c = imds.parse_compute('{"location": "westus", "vmId": "v", "subscriptionId": "s", "resourceGroupName": "r"}')
    assert (c.location, c.vm_id, c.subscription_id, c.resource_group_name) == ("westus", "v", "s", "r")


def test_imds_heartbeat_over_loopback():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append(dict(self.headers))
            self.send_response(500)
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    now = [0.0]
    from guestagent.protocol.http import HttpClient

    client = imds.ImdsClient("127.0.0.1", srv.server_address[1], http=HttpClient(sleep=lambda s: None),
                             clock=lambda: now[0])
    try:
        assert client.heartbeat()["IsHealthy"]
        now[0] = 200.0
        obs = client.heartbeat()
        assert obs["ObservationName"] == "InstanceMetadataHeartbeat" and not obs["IsHealthy"]
        assert seen[0]["Metadata"] == "True" and seen[0]["User-Agent"].endswith("+health")
    finally:
        srv.shutdown()
        srv.server_close()
    assert time.time() > 0


def test_history_names_from_the_fabric_stay_inside_the_history_folder(tmp_root):
    """Issue 13: the folder's tag is the incarnation / ETag and a saved file may carry a handler name —
    fabric data; nothing may be written outside <lib>/history."""
    (tmp_root / "var/lib/waagent").mkdir(parents=True)
    h = history.History("/var/lib/waagent")
    h.start("../../../../../escape", now=0)
    h.save("GoalState.xml", "<x/>")
    h.start("1", now=1)
    h.save("../../../../escape.manifest.xml", "<x/>")
    written = sorted(str(p.relative_to(tmp_root)) for p in tmp_root.rglob("*") if p.is_file())
    assert all(p.startswith("var/lib/waagent/history/") for p in written), written
