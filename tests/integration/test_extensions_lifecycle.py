"""The handler lifecycle end to end: real packages built from a recording shell handler, served over loopback
HTTP by the fabric emulator, downloaded and driven by the real ExtensionsManager; every command and its environment is recorded
by the handler itself (tests/data/extensions/recorder)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import guestagent.protocol.wire
from guestagent.fabric.scenario import ExtensionSpec, SettingsSpec
from guestagent.kit.lab import ExtensionLab

REC = str(Path(__file__).resolve().parents[1] / "data" / "extensions" / "recorder")
NAME = "Test.Recorder"


class Calls:
    def __init__(self, path: Path):
        self.path = path

    def all(self) -> list:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            op, version, rest = line.split(" ", 2)
            out.append((op, version, dict(re.findall(r"(\w+)=(\S*)", rest))))
        return out

    def ops(self) -> list:
        return [f"{op} {v}" for op, v, _ in self.all()]

    def clear(self) -> None:
        if self.path.exists():
            self.path.unlink()


def make_lab(tmp_path, monkeypatch, config: str = "") -> ExtensionLab:
    monkeypatch.setattr(guestagent.protocol.wire, "_direct_is_primary", True)
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    monkeypatch.setenv("EXT_TEST_CALLS", str(tmp_path / "calls.log"))
    monkeypatch.setenv("EXT_TEST_CTRL", str(ctrl))
    lab = ExtensionLab(str(tmp_path / "w"), timeouts={"install": 2, "enable": 2, "disable": 2, "update": 2,
                                                      "uninstall": 2}, config=config)
    lab.calls = Calls(tmp_path / "calls.log")
    lab.ctrl = ctrl
    return lab


@pytest.fixture
def lab(tmp_path, monkeypatch):
    lab = make_lab(tmp_path, monkeypatch)
    yield lab
    lab.close()


def publish(lab, versions=("1.0.0", "1.1.0"), **manifest):
    lab.publish(NAME, {v: lab.prepare(REC, v, **manifest) for v in versions})


def spec(version="1.0.0", seq=0, state="enabled", public=None, name=NAME, **kw):
    return ExtensionSpec(name, version, state=state,
                         settings=[SettingsSpec(seq_no=seq, public=public or {"seq": seq}, **kw)])


def status_of(lab, name=NAME):
    return [e for e in lab.manager.handler_statuses() if e["handlerName"] == name]


def control(lab, what, text):
    (lab.ctrl / what).write_text(text)


def test_install_enable_reports_status_and_writes_contract_files(lab):
    publish(lab)
    lab.apply([spec()])
    assert lab.calls.ops() == ["install 1.0.0", "enable 1.0.0"]
    _, _, env = lab.calls.all()[1]
    base = os.path.join(lab.lib_dir, f"{NAME}-1.0.0")
    assert env["path"] == base and env["cwd"] == base and env["seq"] == "0" and env["uninstall"] == "NOT_RUN"
    assert env["wire"] == "127.0.0.1" and env["features"].startswith("[{")
    [entry] = status_of(lab)
    assert entry["status"] == "Ready" and entry["code"] == 0 and entry["handlerVersion"] == "1.0.0"
    assert entry["formattedMessage"] == {"lang": "en-US", "message": "Plugin enabled"}
    st = entry["runtimeSettingsStatus"]["settingsStatus"]["status"]
    assert st["status"] == "success" and st["code"] == "0" and st["name"] == NAME  # name ignored, code as written
    assert st["substatus"][0]["formattedMessage"]["message"] == "hello"
    # on-disk contract
    assert open(os.path.join(base, "config", "HandlerState")).read() == "Enabled"
    hs = json.load(open(os.path.join(base, "config", "HandlerStatus")))
    assert hs["status"] == "Ready" and hs["message"] == "Plugin enabled"
    settings = open(os.path.join(base, "config", "0.settings")).read()
    assert settings == ('{"runtimeSettings": [{"handlerSettings": {"publicSettings": {"seq": 0}, '
                        '"protectedSettings": null, "protectedSettingsCertThumbprint": null}}]}')
    assert os.stat(os.path.join(base, "config", "0.settings")).st_mode & 0o777 == 0o600
    for d in ("config", "status"):
        assert os.stat(os.path.join(base, d)).st_mode & 0o777 == 0o700
    henv = json.load(open(os.path.join(base, "HandlerEnvironment.json")))
    assert list(henv[0]["handlerEnvironment"]) == ["logFolder", "configFolder", "statusFolder", "heartbeatFile",
                                                   "eventsFolder", "eventsFolder_preview"]
    assert henv[0]["version"] == 1.0 and henv[0]["name"] == NAME
    assert os.stat(os.path.join(base, "bin", "handler.sh")).st_mode & 0o100
    assert not os.path.exists(os.path.join(lab.lib_dir, f"{NAME}__1.0.0.zip"))
    assert "Command: bin/handler.sh enable" in open(os.path.join(lab.log_root, NAME, "CommandExecution.log")).read()
    vm = lab.vm_status()
    assert vm["aggregateStatus"]["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]["status"] == "Success"


def test_new_sequence_number_runs_enable_only(lab):
    publish(lab)
    lab.apply([spec(seq=0)])
    lab.calls.clear()
    lab.apply([spec(seq=1)])
    assert lab.calls.ops() == ["enable 1.0.0"]
    assert status_of(lab)[0]["runtimeSettingsStatus"]["sequenceNumber"] == 1


@pytest.mark.parametrize("mode,expected", [
    ("UpdateWithInstall", ["disable 1.0.0", "update 1.1.0", "uninstall 1.0.0", "install 1.1.0", "enable 1.1.0"]),
    ("UpdateWithoutInstall", ["disable 1.0.0", "update 1.1.0", "uninstall 1.0.0", "enable 1.1.0"]),
])
def test_update_command_order_and_environment(lab, mode, expected):
    publish(lab, updateMode=mode)
    lab.apply([spec(seq=0)])
    (Path(lab.lib_dir) / f"{NAME}-1.0.0" / "mrseq").write_text("0")
    lab.calls.clear()
    lab.apply([spec("1.1.0", seq=1)])
    elapsed = lab.process_seconds
    assert lab.calls.ops() == expected
    calls = {op: env for op, _, env in lab.calls.all()}
    assert calls["update"]["VERSION"] == "1.1.0" and calls["update"]["from"] == "1.0.0"
    assert calls["update"]["disable"] == "0"
    assert calls["enable"]["uninstall"] == "0"
    # every command of the update gets the new goal state's sequence number, the old version's too (upstream)
    assert {op: env["seq"] for op, env in calls.items()} == {op.split()[0]: "1" for op in expected}
    assert not os.path.exists(os.path.join(lab.lib_dir, f"{NAME}-1.0.0"))
    new = Path(lab.lib_dir) / f"{NAME}-1.1.0"
    assert (new / "mrseq").read_text() == "0" and (new / "status" / "0.status").exists()
    [entry] = status_of(lab)
    assert entry["handlerVersion"] == "1.1.0" and entry["status"] == "Ready"
    assert elapsed < 1.0, f"update took {elapsed:.3f} s"


def test_downgrade_runs_old_update_command(lab):
    publish(lab)
    lab.apply([spec("1.1.0")])
    lab.calls.clear()
    lab.apply([spec("1.0.0", seq=1)])
    assert lab.calls.ops() == ["disable 1.1.0", "update 1.1.0", "uninstall 1.1.0", "install 1.0.0", "enable 1.0.0"]
    update_env = lab.calls.all()[1][2]
    assert update_env["VERSION"] == "1.0.0" and update_env["from"] == "1.0.0"


def test_failed_update_marks_failed_upgrade_and_reports_1008(lab):
    publish(lab)
    lab.apply([spec()])
    control(lab, "1.1.0.update", "fail 3")
    lab.calls.clear()
    lab.apply([spec("1.1.0", seq=1)])
    assert lab.calls.ops() == ["disable 1.0.0", "update 1.1.0"]
    new = Path(lab.lib_dir) / f"{NAME}-1.1.0"
    assert (new / "config" / "HandlerState").read_text() == "FailedUpgrade"
    [entry] = status_of(lab)
    assert entry["code"] == 1008 and entry["status"] == "NotReady"
    assert "Non-zero exit code: 3" in entry["formattedMessage"]["message"]
    # the next goal state retries the upgrade from scratch
    (lab.ctrl / "1.1.0.update").unlink()
    lab.calls.clear()
    lab.apply([spec("1.1.0", seq=2)])
    assert lab.calls.ops()[-1] == "enable 1.1.0"


def test_continue_on_update_failure(lab):
    publish(lab, continueOnUpdateFailure=True)
    lab.apply([spec()])
    control(lab, "1.0.0.disable", "fail 5")
    control(lab, "1.0.0.uninstall", "fail 6")
    lab.calls.clear()
    lab.apply([spec("1.1.0", seq=1)])
    assert lab.calls.ops() == ["disable 1.0.0", "update 1.1.0", "uninstall 1.0.0", "install 1.1.0", "enable 1.1.0"]
    envs = [env for _, _, env in lab.calls.all()]
    assert envs[1]["disable"] == "5" and envs[3]["uninstall"] == "6" and envs[4]["uninstall"] == "6"
    assert status_of(lab)[0]["status"] == "Ready"


def test_disable_then_uninstall_removes_everything(lab):
    publish(lab)
    lab.apply([spec()])
    lab.calls.clear()
    lab.apply([spec(state="disabled")])
    elapsed = lab.process_seconds
    assert lab.calls.ops() == ["disable 1.0.0"]
    assert elapsed < 0.3, f"disable took {elapsed:.3f} s"
    [entry] = status_of(lab)
    assert entry["formattedMessage"]["message"] == "Plugin disabled" and entry["status"] == "NotReady"
    lab.calls.clear()
    lab.apply([spec(state="uninstall")])
    assert lab.calls.ops() == ["uninstall 1.0.0"]
    assert not [d for d in os.listdir(lab.lib_dir) if d.startswith(NAME)]
    assert status_of(lab) == []


def test_uninstall_of_enabled_handler_disables_first(lab):
    publish(lab)
    lab.apply([spec()])
    lab.calls.clear()
    lab.apply([spec(state="uninstall")])
    assert lab.calls.ops() == ["disable 1.0.0", "uninstall 1.0.0"]


@pytest.mark.parametrize("op,code", [("install", 1007), ("enable", 1009)])
def test_command_failure_codes_and_output_in_status(lab, op, code):
    publish(lab)
    control(lab, op, "fail 42")
    lab.apply([spec()])
    [entry] = status_of(lab)
    msg = entry["formattedMessage"]["message"]
    assert entry["code"] == code and entry["status"] == "NotReady"
    assert msg.startswith("[ExtensionOperationError] Non-zero exit code: 42")  # upstream's wording
    assert f"failing {op} on purpose" in msg and f"stderr of {op}" in msg
    assert "[stdout]" in msg and "[stderr]" in msg
    if op == "install":
        assert (Path(lab.lib_dir) / f"{NAME}-1.0.0" / "config" / "HandlerState").read_text() == "NotInstalled"


def test_hung_command_is_killed_at_its_timeout(lab):
    publish(lab)
    control(lab, "enable", "hang")
    lab.manager.ctx.timeouts["enable"] = 0.5
    lab.apply([spec()])
    assert lab.process_seconds < 3
    [entry] = status_of(lab)
    assert entry["code"] == 1011 and entry["formattedMessage"]["message"].startswith("[ExtensionError] Timeout(0)")


def test_garbage_status_is_reported_not_fatal(lab):
    publish(lab)
    control(lab, "enable", "garbage")
    lab.apply([spec()])
    [entry] = status_of(lab)
    st = entry["runtimeSettingsStatus"]["settingsStatus"]["status"]
    assert entry["status"] == "Ready" and st["status"] == "error" and st["code"] == 1012
    json.dumps(lab.vm_status())


def test_missing_status_is_transitioning(lab):
    publish(lab)
    control(lab, "enable", "nostatus")
    lab.apply([spec()])
    st = status_of(lab)[0]["runtimeSettingsStatus"]["settingsStatus"]["status"]
    assert st["status"] == "transitioning" and st["code"] == 0
    assert not lab.manager.converged()


def test_restart_enables_an_unchanged_sequence_number_once_as_upstream(lab):
    publish(lab)
    lab.apply([spec(seq=3)])
    lab.calls.clear()
    lab.new_manager()  # a restarted ext-handler: no memory, same disk
    lab.apply([spec(seq=3)])
    assert lab.calls.ops() == ["enable 1.0.0"] and lab.calls.all()[0][2]["seq"] == "3"
    assert status_of(lab)[0]["runtimeSettingsStatus"]["sequenceNumber"] == 3


def test_handlers_not_in_goal_state_are_removed_without_commands(lab):
    publish(lab)
    lab.apply([spec()])
    Path(lab.lib_dir, "Orphan.Handler__1.0.zip").write_bytes(b"x")
    lab.calls.clear()
    lab.apply([])
    assert lab.calls.ops() == []
    assert not [d for d in os.listdir(lab.lib_dir) if d.startswith((NAME, "Orphan"))]


def test_version_not_in_manifest_is_reported(lab):
    publish(lab, versions=("1.0.0",))
    lab.apply([spec("9.9")])
    [entry] = status_of(lab)
    assert "Unable to find version 9.9 in manifest" in entry["formattedMessage"]["message"]
    assert entry["code"] == -1 and lab.calls.ops() == []


def test_manifest_download_failure_is_reported(lab):
    lab.apply([spec(name="Test.Unpublished")])
    [entry] = status_of(lab, "Test.Unpublished")
    assert "Failed to get ext handler pkgs" in entry["formattedMessage"]["message"]


def test_version_prefix_selects_highest_match(lab):
    publish(lab, versions=("1.0.0", "1.0.5", "1.1.0"))
    lab.apply([spec("1.0")])
    assert lab.calls.ops() == ["install 1.0.5", "enable 1.0.5"]


def test_protected_settings_are_copied_verbatim_0600_and_never_logged(lab, capsys):
    from guestagent import log

    lines: list = []

    class Capture(log.Appender):
        def write(self, line: str) -> None:
            lines.append(line)

    log.add_appender("capture", Capture(log.VERBOSE))
    try:
        publish(lab)
        ext = spec(protected={"password": "S3cret-Value-123"})
        lab.apply([ext])
    finally:
        log.remove_appender("capture")
    thumb, protected = lab.fabric.protected_settings(ext, ext.settings[0])  # what the fabric sent
    path = Path(lab.lib_dir) / f"{NAME}-1.0.0" / "config" / "0.settings"
    hs = json.loads(path.read_text())["runtimeSettings"][0]["handlerSettings"]
    assert hs["protectedSettings"] == protected and hs["protectedSettingsCertThumbprint"] == thumb
    assert path.stat().st_mode & 0o777 == 0o600
    from guestagent.protocol.certificates import decrypt_protected_settings

    assert json.loads(decrypt_protected_settings(protected, thumb, lab.lib_dir)) == {"password": "S3cret-Value-123"}
    text = "\n".join(map(str, lines)) + capsys.readouterr().out
    assert protected not in text and "S3cret-Value-123" not in text
