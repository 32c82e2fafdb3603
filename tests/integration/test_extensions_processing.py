"""Goal-state level behaviour: channels (direct, HostGAPlugin fallback, FastTrack), damaged packages,
dependencies, multi-config, gating (required features, Extensions.Enabled, on hold, invalid config) and
an ext-handler SIGKILLed in the middle of the lifecycle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_extensions_lifecycle import NAME, REC, make_lab, publish, spec, status_of

import guestagent.protocol.wire
from guestagent.fabric.scenario import ExtensionSpec, SettingsSpec


@pytest.fixture
def lab(tmp_path, monkeypatch):
    lab = make_lab(tmp_path, monkeypatch)
    yield lab
    lab.close()


def control(lab, what, text):
    (lab.ctrl / what).write_text(text)


def test_fast_track_goal_state_runs_the_same_lifecycle(lab):
    publish(lab)
    egs = lab.apply([spec(seq=4)], fast_track=True).extensions_goal_state
    assert egs.source == "FastTrack" and egs.id.startswith("etag_")
    assert lab.calls.ops() == ["install 1.0.0", "enable 1.0.0"]
    assert status_of(lab)[0]["runtimeSettingsStatus"]["sequenceNumber"] == 4


def test_package_falls_back_to_host_plugin_and_remembers_the_channel(lab):
    publish(lab)
    lab.fabric.faults.add("package", status=404, count=0)  # the direct channel only
    lab.apply([spec()])
    assert [r["status"] for r in lab.fabric.requests_of("package")] == [404]
    assert [r["status"] for r in lab.fabric.requests_of("extension_artifact")] == [200]
    assert lab.calls.ops() == ["install 1.0.0", "enable 1.0.0"]
    assert guestagent.protocol.wire._direct_is_primary is False


def test_corrupt_package_is_downloaded_again(lab):
    publish(lab)
    lab.fabric.faults.add("package", body="malformed")  # a cut-off zip, once
    lab.apply([spec()])
    assert [r["status"] for r in lab.fabric.requests_of("package")] == [200, 200]
    assert lab.calls.ops() == ["install 1.0.0", "enable 1.0.0"]


def test_always_corrupt_package_is_reported_and_nothing_half_installed(lab):
    publish(lab)
    for kind in ("package", "extension_artifact"):  # both channels, every time
        lab.fabric.faults.add(kind, body="malformed", count=0)
    lab.apply([spec()])
    [entry] = status_of(lab)
    assert entry["code"] == 1001 and "Failed to download artifacts" in entry["formattedMessage"]["message"]
    base = Path(lab.lib_dir) / f"{NAME}-1.0.0"
    assert sorted(os.listdir(base)) == ["config"] and lab.calls.ops() == []
    assert not [f for f in os.listdir(lab.lib_dir) if f.endswith(".zip") or f.endswith(".unpacking")]


def test_hostile_package_is_refused(lab, tmp_path):
    import zipfile

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("HandlerManifest.json", open(os.path.join(REC, "HandlerManifest.json")).read())
        zf.writestr("../../escaped.sh", "echo pwned")
    lab.publish(NAME, {"1.0.0": evil})
    lab.apply([spec()])
    assert "outside the package directory" in status_of(lab)[0]["formattedMessage"]["message"]
    assert not (Path(lab.lib_dir).parent / "escaped.sh").exists() and not (Path(lab.lib_dir) / "escaped.sh").exists()


def two_handlers(lab, second_state="enabled"):
    lab.publish("Test.First", {"1.0.0": lab.prepare(REC, "1.0.0")})
    lab.publish("Test.Second", {"2.0.0": lab.prepare(REC, "2.0.0")})
    return [ExtensionSpec("Test.Second", "2.0.0", state=second_state,
                          settings=[SettingsSpec(seq_no=0, public={}, dependency_level=1,
                                                 depends_on=[{"handler": "Test.First"}])]),
            ExtensionSpec("Test.First", "1.0.0", settings=[SettingsSpec(seq_no=0, public={})])]


def test_dependency_levels_order_enables(lab):
    lab.apply(two_handlers(lab))
    assert lab.calls.ops() == ["install 1.0.0", "enable 1.0.0", "install 2.0.0", "enable 2.0.0"]


def test_failed_dependency_skips_dependents(lab):
    control(lab, "1.0.0.enable", "error")
    lab.apply(two_handlers(lab))
    assert lab.calls.ops() == ["install 1.0.0", "enable 1.0.0"]
    [second] = status_of(lab, "Test.Second")
    assert second["code"] == -1 and "dependent extension Test.First failed" in second["formattedMessage"]["message"]
    sent = []  # upstream's telemetry of it: a failed ExtensionProcessing under the failed extension's name
    for f in sorted(os.listdir(os.path.join(lab.lib_dir, "events"))):
        p = {x["name"]: x["value"] for x in json.load(open(os.path.join(lab.lib_dir, "events", f)))["parameters"]}
        if p["Operation"] == "ExtensionProcessing" and not p["OperationSuccess"]:
            sent.append((p["Name"], p["Message"]))
    assert sent == [("Test.First", "Dependent Extension Test.First did not succeed. Status was error")]


def test_uninstall_runs_before_enables(lab):
    lab.apply(two_handlers(lab))
    lab.calls.clear()
    handlers = two_handlers(lab, second_state="uninstall")
    lab.apply(handlers)
    assert lab.calls.ops() == ["disable 2.0.0", "uninstall 2.0.0", "enable 1.0.0"]


def mc_spec(states=("enabled", "enabled"), seqs=(0, 0)):
    return ExtensionSpec(NAME, "1.0.0", multi_config=True, settings=[
        SettingsSpec(seq_no=seqs[i], public={"n": i}, name=f"Ext{i}", state=states[i]) for i in range(2)])


@pytest.mark.parametrize("fast_track", [False, True])
def test_multi_config_extensions(lab, fast_track):
    publish(lab, supportsMultipleExtensions=True)
    lab.apply([mc_spec()], fast_track=fast_track)
    assert lab.calls.ops() == ["install 1.0.0", "enable 1.0.0", "enable 1.0.0"]
    # the install runs for the extension that asked for it, as upstream's (its name in the environment)
    assert [env["ext"] for _, _, env in lab.calls.all()] == ["Ext0", "Ext0", "Ext1"]
    entries = status_of(lab)
    assert [e["runtimeSettingsStatus"]["extensionName"] for e in entries] == ["Ext0", "Ext1"]
    base = Path(lab.lib_dir) / f"{NAME}-1.0.0"
    assert (base / "config" / "Ext0.0.settings").exists() and (base / "status" / "Ext1.0.status").exists()
    assert (base / "config" / "Ext1.HandlerState").read_text() == "enabled"
    # deleting one extension: disable it, drop its files, stop reporting it
    lab.calls.clear()
    lab.apply([mc_spec(states=("enabled", "disabled"))], fast_track=fast_track)
    assert lab.calls.ops() == ["disable 1.0.0", "enable 1.0.0"]
    assert not (base / "config" / "Ext1.0.settings").exists() and not (base / "status" / "Ext1.0.status").exists()
    assert [e["runtimeSettingsStatus"]["extensionName"] for e in status_of(lab)] == ["Ext0"]


def test_multi_config_requires_manifest_support(lab):
    publish(lab)
    lab.apply([mc_spec()])
    entries = status_of(lab)
    assert "does not support MultiConfig" in entries[0]["formattedMessage"]["message"]
    # the agent wrote a placeholder error status for the extension
    assert entries[0]["runtimeSettingsStatus"]["settingsStatus"]["status"]["status"] == "error"


def test_unsupported_required_features_fail_the_goal_state(lab):
    publish(lab)
    lab.apply([spec()])
    lab.calls.clear()
    lab.apply([spec(seq=1)], required_features=["MultipleExtensionsPerHandler", "FutureThing"])
    assert lab.calls.ops() == []
    gs = lab.manager.goal_state_status()
    assert gs["status"] == "Failed" and gs["code"] == 2001 and "FutureThing" in gs["formattedMessage"]["message"]
    assert [e["handlerName"] for e in lab.manager.handler_statuses()] == [NAME]  # from disk


def test_extensions_disabled_reports_every_handler(tmp_path, monkeypatch):
    lab = make_lab(tmp_path, monkeypatch, config="Extensions.Enabled=n\n")
    try:
        publish(lab)
        lab.apply([spec()])
        [entry] = status_of(lab)
        assert entry["code"] == 1009 and "Extensions.Enabled=y" in entry["formattedMessage"]["message"]
        assert lab.calls.ops() == []
    finally:
        lab.close()


def test_on_hold_goal_state_is_not_processed(lab):
    publish(lab)
    gs = lab.apply([spec()], on_hold=True)
    assert gs.extensions_goal_state.on_hold and lab.calls.ops() == []


def test_invalid_handler_config_is_reported_and_others_run(lab):
    publish(lab)
    lab.publish("Test.Other", {"1.0.0": lab.prepare(REC, "1.0.0")})
    twice = spec()
    twice.settings.append(SettingsSpec(seq_no=1, public={}))  # two RuntimeSettings for one handler
    lab.apply([twice, ExtensionSpec("Test.Other", "1.0.0")])
    [entry] = status_of(lab)
    assert "Multiple RuntimeSettings found" in entry["formattedMessage"]["message"] and entry["code"] == -1
    assert lab.calls.ops() == ["install 1.0.0", "enable 1.0.0"]  # Test.Other only
    assert not (Path(lab.lib_dir) / "Test.Other-1.0.0" / "config" / "0.settings").read_text()


CHILD = """
import sys
from guestagent import conf
from guestagent.exthandler.extensions.manager import ExtensionsManager
from guestagent.protocol.wire import WireProtocol
lib, log_root, wire_port, hgap_port = sys.argv[1:5]
config = conf.parse(f"Lib.Dir={lib}\\n")
p = WireProtocol("127.0.0.1", lib, config, wire_port=int(wire_port), hgap_port=int(hgap_port), sleep=lambda s: None,
                 save_history=False)
m = ExtensionsManager(config, p, log_root=log_root, event=lambda *a, **k: None)
m.process(p.update_goal_state())
"""


def _kill_leftovers(marker: str) -> None:
    import psutil

    for proc in psutil.process_iter(["cmdline", "cwd"]):
        try:
            if marker in (proc.info.get("cwd") or "") and proc.pid != os.getpid():
                proc.kill()
        except (psutil.Error, OSError):
            pass


@pytest.mark.parametrize("hang_in", ["install", "enable"])
def test_sigkill_mid_lifecycle_then_next_child_finishes(lab, tmp_path, hang_in):
    publish(lab)
    lab.deliver([spec()])
    control(lab, hang_in, "hang")
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=root)
    args = [sys.executable, "-c", CHILD, lab.lib_dir, lab.log_root, str(lab.fabric.wire_port),
            str(lab.fabric.hgap_port)]
    child = subprocess.Popen(args, env=env, start_new_session=True)
    deadline = time.monotonic() + 20
    while not any(op == hang_in for op, _, _ in lab.calls.all()):
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    _kill_leftovers(lab.lib_dir)
    (lab.ctrl / hang_in).unlink()
    subprocess.run(args, env=env, check=True, timeout=60)
    ops = lab.calls.ops()
    if hang_in == "install":   # the interrupted step is redone, from a fresh download
        assert ops == ["install 1.0.0", "install 1.0.0", "enable 1.0.0"]
    else:                      # the finished install is not repeated
        assert ops == ["install 1.0.0", "enable 1.0.0", "enable 1.0.0"]
    base = Path(lab.lib_dir) / f"{NAME}-1.0.0"
    assert (base / "config" / "HandlerState").read_text() == "Enabled"
    lab.new_manager()
    lab.manager.egs = lab.protocol.update_goal_state().extensions_goal_state
    [entry] = status_of(lab)
    assert entry["status"] == "Ready" and entry["runtimeSettingsStatus"]["settingsStatus"]["status"]["status"] == "success"
