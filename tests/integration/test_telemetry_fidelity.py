"""What the platform sees of extension processing, as upstream 2.15 sends it (issue 14): the per-command
telemetry (``Executing command: …`` then ``Command: …`` with the output and the duration), the operation
names (``UnInstall``), and the status ``code`` forwarded as the handler wrote it. The events go through the
real pipeline over loopback HTTP to the fabric, which records them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guestagent.exthandler import telemetry
from guestagent.fabric.packages import zip_folder
from tests.integration.test_extensions_lifecycle import NAME, REC, control, make_lab, publish, spec


@pytest.fixture
def lab(tmp_path, monkeypatch):
    lab = make_lab(tmp_path, monkeypatch)
    lab.manager.ctx.event = lab.manager._default_event  # the child's events: to disk, then to the fabric
    yield lab
    lab.close()


def sent(lab, name: str = NAME) -> list:
    """(Operation, OperationSuccess, Message, Duration) of every event of ``name`` the fabric received."""
    telemetry.TelemetryPipeline(lab.lib_dir, lab.protocol, read_retry_delay=0, sleep=lambda s: None).flush()
    out = []
    for e in lab.fabric.telemetry:
        p = e.get("params") or {}
        if p.get("Name", "").startswith(name):
            out.append((p["Operation"], str(p["OperationSuccess"]).lower() == "true", p["Message"],
                        int(p["Duration"])))
    return out


def test_each_command_sends_executing_then_command_with_output_and_duration(lab):
    publish(lab)
    ext = spec(protected={"password": "S3cret-Value-123"})
    lab.apply([ext])
    _, protected = lab.fabric.protected_settings(ext, ext.settings[0])
    lab.apply([spec(state="uninstall")])
    everything = repr(sent(lab)) + repr(sent(lab, "WALinuxAgent"))
    assert "S3cret-Value-123" not in everything and protected not in everything
    evs = [e for e in sent(lab) if e[0] not in ("ExtensionSigned", "Download")]
    ops = [op for op, *_ in evs]
    assert ops == ["Install", "Install", "Enable", "Enable", "Disable", "Disable", "UnInstall", "UnInstall"], evs
    base = f"{lab.lib_dir}/{NAME}-1.0.0"
    for i, cmd in enumerate(("install", "enable", "disable", "uninstall")):
        (_, ok1, executing, d1), (_, ok2, command, d2) = evs[2 * i], evs[2 * i + 1]
        head, _, env = executing.partition(" with environment variables: ")
        assert ok1 and ok2 and d1 == 0 and d2 >= 0
        assert head == f"Executing command: {base}/bin/handler.sh {cmd}"
        assert json.loads(env)["AZURE_GUEST_AGENT_EXTENSION_PATH"] == base
        assert command == f"Command: bin/handler.sh {cmd}\n[stdout]\n{cmd} done\n[stderr]"
    assert "S3cret-Value-123" not in repr(evs) and not [m for *_, m, _ in evs if "succeeded" in m]


def test_a_failed_command_sends_its_error_and_no_command_event(lab):
    publish(lab)
    control(lab, "enable", "fail 42")
    lab.apply([spec()])
    evs = [e for e in sent(lab) if e[0] == "Enable"]
    assert [(ok, m.split(" with ")[0].split("\n")[0]) for _, ok, m, _ in evs] == [
        (True, f"Executing command: {lab.lib_dir}/{NAME}-1.0.0/bin/handler.sh enable"),
        (False, f"[ExtensionOperationError] Non-zero exit code: 42, {lab.lib_dir}/{NAME}-1.0.0/bin/handler.sh enable")]
    assert "failing enable on purpose" in evs[1][2] and "stderr of enable" in evs[1][2]


def test_status_code_is_forwarded_as_the_handler_wrote_it(lab):
    publish(lab)
    lab.apply([spec()])
    st = lab.vm_status()["aggregateStatus"]["handlerAggregateStatus"][0]["runtimeSettingsStatus"]
    assert st["settingsStatus"]["status"]["code"] == "0"  # the recorder writes "0", as CustomScript does
    control(lab, "enable", "textcode")
    lab.apply([spec(seq=1)])
    st = lab.vm_status()["aggregateStatus"]["handlerAggregateStatus"][0]["runtimeSettingsStatus"]
    status = st["settingsStatus"]["status"]
    assert (status["status"], status["code"], status["substatus"][0]["code"]) == ("success", "E42", "7")


def test_agent_events_of_a_goal_state_as_upstream(lab):
    """GoalState, ArtifactsProfileBlob, GoalStateCertificates, ExtensionSigned, Download, ExtensionProcessing
    (started / completed with its duration) and RequestedStateDisabled, worded as upstream 2.15 words them."""
    publish(lab)
    lab.apply([spec(protected={"password": "S3cret-Value-123"})])
    lab.apply([spec(state="disabled")])
    agent = sent(lab, "WALinuxAgent")
    by_op: dict = {}
    for op, ok, message, ms in agent:
        by_op.setdefault(op, []).append((ok, message, ms))
    assert (True, "Fetched a new incarnation for the WireServer goal state [incarnation 2]", 0) in by_op["GoalState"]
    assert "ArtifactsProfileBlob" not in by_op  # fetched and understood: nothing to say
    thumb = next(c.thumbprint for c in lab.goal_state.certs if c.has_private_key)
    assert (True, f"Downloaded certificate {{'thumbprint': '{thumb}', 'hasPrivateKey': True}}", 0) in \
        by_op["GoalStateCertificates"]
    started = [m for ok, m, _ in by_op["ExtensionProcessing"] if m.startswith("ProcessExtensionsGoalState started [")]
    completed = [(m, ms) for ok, m, ms in by_op["ExtensionProcessing"] if ok and
                 m.startswith("ProcessExtensionsGoalState completed [") and m.endswith(" ms]\n")]
    assert len(started) == len(completed) == 2 and " channel: WireServer source: Fabric activity: " in started[0]
    assert completed[0][1] == int(completed[0][0].split()[-2])
    assert by_op["RequestedStateDisabled"] == [
        (True, f'Goal State is requesting "disabled" state on {NAME} [Activity ID: '
               f'{lab.goal_state.extensions_goal_state.activity_id}]', 0)]
    ext = sent(lab)
    assert [(op, ok, m) for op, ok, m, _ in ext if op in ("ExtensionSigned", "Download")][:2] == [
        ("ExtensionSigned", False, ""), ("Download", True, "Download succeeded")]


def test_an_unreachable_artifacts_profile_blob_is_reported(lab):
    lab.fabric.faults.add("artifacts_profile", status=404, count=20)  # direct
    lab.fabric.faults.add("extension_artifact", status=404, count=20)  # and through HGAP
    lab.apply([])
    [(ok, message)] = [(ok, m) for op, ok, m, _ in sent(lab, "WALinuxAgent") if op == "ArtifactsProfileBlob"]
    assert not ok and message.startswith("Can't download the artifacts profile blob; will assume the VM is not on "
                                         "hold. ")


def test_a_failed_download_is_a_failed_download_event(lab):
    publish(lab)
    lab.fabric.faults.add("package", status=404, count=50)
    lab.fabric.faults.add("extension_artifact", status=404, count=50)
    lab.apply([spec()])
    [(ok, message)] = [(ok, m) for op, ok, m, _ in sent(lab) if op == "Download"]
    assert not ok and message.startswith("Failed to download artifacts: ")


def test_an_existing_package_is_used_and_said_so(lab):
    publish(lab)
    lab.apply([spec()])
    lab.apply([spec(state="uninstall")])
    package = Path(lab.lib_dir) / f"{NAME}__1.0.0.zip"
    package.write_bytes(zip_folder(Path(lab.prepare(REC, "1.0.0"))))  # left behind by an interrupted install
    lab.apply([spec()])
    downloads = [m for op, ok, m, _ in sent(lab) if op == "Download"]
    assert downloads == ["Download succeeded", f"Using existing extension package: {lab.lib_dir}/{NAME}__1.0.0.zip"]
