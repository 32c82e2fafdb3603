"""Fault injection, robustness against hostile clients, the control API and the ``guestagent fabric`` CLI."""

import http.client as httpclient
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from guestagent.fabric import cli

REPO = Path(__file__).resolve().parents[2]


def http(url, method="GET", body=None, headers=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_status_fault_with_count_then_recovery(fab):
    fab.faults.add("goalstate", status=503, count=2)
    url = f"{fab.base_url}/machine/?comp=goalstate"
    assert [http(url)[0] for _ in range(3)] == [503, 503, 200]
    assert [r.get("fault", {}).get("status") for r in fab.requests_of("goalstate")] == [503, 503, None]


def test_fault_with_raw_body_and_forever(fab):
    fab.faults.add("vmsettings", status=400, body="InvalidContainerConfiguration", count=0)
    for _ in range(3):
        assert http(f"http://127.0.0.1:{fab.hgap_port}/vmSettings") == (400, b"InvalidContainerConfiguration")
    fab.faults.clear()
    assert http(f"http://127.0.0.1:{fab.hgap_port}/vmSettings")[0] == 200


def test_delay_reset_truncated_malformed(fab):
    url = f"{fab.base_url}/machine/?comp=goalstate"
    fab.faults.add("goalstate", delay=0.5)
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        http(url, timeout=0.2)
    time.sleep(0.4)
    started = time.monotonic()
    fab.faults.add("goalstate", delay=0.2)
    assert http(url)[0] == 200 and time.monotonic() - started >= 0.2
    fab.faults.add("goalstate", reset=True)
    with pytest.raises((ConnectionError, urllib.error.URLError, httpclient.RemoteDisconnected)):
        http(url)
    assert fab.requests_of("goalstate")[-1]["status"] == "reset"
    fab.faults.add("goalstate", body="truncated")
    with pytest.raises(httpclient.IncompleteRead):
        http(url)
    fab.faults.add("goalstate", body="malformed")
    status, body = http(url)
    assert status == 200 and not body.rstrip().endswith(b"</GoalState>")
    fab.faults.add("goalstate", body="no_role_instance")
    status, body = http(url)
    assert status == 200 and b"RoleInstance" not in body and b"<Incarnation>" in body
    assert http(url)[0] == 200


def test_fault_validation(fab):
    for bad in (dict(kind="nope", status=500), dict(kind="goalstate"), dict(kind="goalstate", status=42),
                dict(kind="goalstate", delay=-1)):
        with pytest.raises(ValueError):
            fab.faults.add(**bad)


def test_garbage_never_kills_the_server(fab):
    for junk in (b"\x00\x01garbage\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                 b"PUT /status HTTP/1.1\r\nContent-Length: 999999999999\r\n\r\n",
                 b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n"):
        for port in (fab.wire_port, fab.hgap_port, fab.storage_port, fab.imds_port):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(junk)
                try:
                    s.recv(1024)
                except OSError:
                    pass
    assert http(f"{fab.base_url}/?comp=versions")[0] == 200


def test_control_api(fab):
    status, body = http(f"{fab.base_url}/fabric/state")
    assert status == 200 and json.loads(body)["step"] == 0
    assert json.loads(http(f"{fab.base_url}/fabric/advance", "POST", b"")[1])["incarnation"] == "2"
    assert json.loads(http(f"{fab.base_url}/fabric/step?n=0", "POST", b"")[1])["incarnation"] == "1"
    assert http(f"{fab.base_url}/fabric/step?n=99", "POST", b"")[0] == 400
    spec = json.dumps({"kind": "hgap_health", "status": 500, "count": 1}).encode()
    assert json.loads(http(f"{fab.base_url}/fabric/faults", "POST", spec)[1])["faults"][0]["status"] == 500
    assert http(f"{fab.base_url}/fabric/faults", "POST", b'{"kind": "x", "status": 500}')[0] == 400
    assert http(f"http://127.0.0.1:{fab.hgap_port}/health")[0] == 500


def test_wait_for(fab):
    with pytest.raises(TimeoutError):
        fab.wait_for(lambda: fab.health_reports, timeout=0.2)
    http(f"{fab.base_url}/?comp=versions")
    assert fab.wait_for(lambda: fab.requests_of("versions"), timeout=2)


def _upload_status(fab):
    status = {"version": "1.1", "timestampUTC": "2025-01-01T00:00:00Z", "guestOSInfo": {"computerName": "vm1"},
              "aggregateStatus": {
                  "guestAgentStatus": {"version": "2.15.0.1", "status": "Ready",
                                       "formattedMessage": {"lang": "en-US", "message": "Guest Agent is running"}},
                  "handlerAggregateStatus": [{
                      "handlerName": "GuestAgent.Fabric.Sample", "handlerVersion": "1.0.0", "status": "Ready",
                      "code": 0, "formattedMessage": {"lang": "en-US", "message": "Plugin enabled"},
                      "runtimeSettingsStatus": {"sequenceNumber": 0, "settingsStatus": {"status": {
                          "name": "GuestAgent.Fabric.Sample", "operation": "Enable", "status": "success", "code": 0,
                          "formattedMessage": {"lang": "en-US", "message": "Enable succeeded"}}}}}],
                  "vmArtifactsAggregateStatus": {"goalStateAggregateStatus": {
                      "inSvdSeqNo": "1", "status": "Success", "code": 0,
                      "formattedMessage": {"lang": "en-US", "message": "GoalState executed successfully"}}}}}
    data = json.dumps(status).encode()
    assert http(fab.status_blob_url(), "PUT", data, {"x-ms-blob-type": "BlockBlob"})[0] == 201
    health = (b"<Health><GoalStateIncarnation>1</GoalStateIncarnation><Container><RoleInstanceList><Role><Health>"
              b"<State>Ready</State></Health></Role></RoleInstanceList></Container></Health>")
    assert http(f"{fab.base_url}/machine?comp=health", "POST", health)[0] == 200
    tel = (b'<TelemetryData version="1.0"><Provider id="69B669B9-4AF8-4C50-BDC4-6006FA76E975"><Event id="1">'
           b'<![CDATA[<Param Name="Name" Value="GuestAgent.Fabric.Sample" T="mt:wstr" />]]></Event></Provider>'
           b"</TelemetryData>")
    assert http(f"{fab.base_url}/machine?comp=telemetrydata", "POST", tel)[0] == 200


def test_cli_status_and_requests(fab, capsys):
    state = str(fab.state_dir)
    assert cli.main(["status", "--state-dir", state]) == 1
    _upload_status(fab)
    capsys.readouterr()
    assert cli.main(["status", "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert "Agent       2.15.0.1  Ready  Guest Agent is running" in out
    assert "Health      Ready (incarnation 1)" in out
    assert "Goal state  inSvdSeqNo 1  Success" in out
    row = next(line for line in out.splitlines() if line.startswith("GuestAgent.Fabric.Sample"))
    assert row.split()[:4] == ["GuestAgent.Fabric.Sample", "1.0.0", "Ready", "0"] and row.split()[-1] == "1"
    assert "└ GuestAgent.Fabric.Sample (seq 0)" in out and "Enable succeeded" in out
    assert cli.main(["requests", "--state-dir", state, "--kind", "health"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "health" in lines[0] and "200" in lines[0]
    assert cli.main(["requests", "--state-dir", state, "--json", "--tail", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "telemetrydata"


def test_cli_check_and_ovf(tmp_path, capsys):
    assert cli.main(["check", "default"]) == 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"steps": [{"extensions": [{"version": "1"}]}]}')
    assert cli.main(["check", str(bad)]) == 2
    assert "steps[0].extensions[0].name: is required" in capsys.readouterr().err
    assert cli.main(["ovf", "--state-dir", str(tmp_path)]) == 0
    first = capsys.readouterr().out
    assert cli.main(["ovf", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == first  # thumbprints stable through the certificate cache
    assert cli.main(["ovf", "--state-dir", str(tmp_path), "--iso", str(tmp_path / "ovf.iso")]) == 0
    assert oct((tmp_path / "ovf.iso").stat().st_mode & 0o777) == "0o600"


def test_cli_serve_process(tmp_path):
    state = tmp_path / "serve"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "guestagent.tools", "fabric", "serve", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (state / "fabric.json").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        info = json.loads((state / "fabric.json").read_text())
        assert http(f"http://127.0.0.1:{info['wire_port']}/machine/?comp=goalstate")[0] == 200
        assert http(f"http://127.0.0.1:{info['wire_port']}/fabric/advance", "POST", b"")[0] == 200
        assert json.loads((state / "fabric.json").read_text())["incarnation"] == "2"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "WireServer   http://127.0.0.1:" in out
    assert "goalstate" in out and "200" in out
