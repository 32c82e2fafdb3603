"""The ext-handler's part of issue 15: the cloud-init wait (a stand-in ``cloud-init`` on PATH: this host has
no cloud-init, and the real one's wait cannot be staged here), auto-update told truthfully, the extensions
summary and the initial goal state, and the options in -show-configuration."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

from guestagent import conf
from guestagent.conf import Config
from guestagent.exthandler.cloudinitwait import CloudInitWait
from guestagent.exthandler.selfupdate import AgentUpdateReporter
from guestagent.exthandler.summary import GoalStateProgress
from guestagent.protocol.extconfig import AgentFamily


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """A ``cloud-init`` stand-in that records its arguments and behaves as told."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"

    def make(body: str):
        script = bindir / "cloud-init"
        script.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n{body}\n")
        script.chmod(0o755)
        return calls

    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return make


def _wait(tmp_path, **values) -> CloudInitWait:
    return CloudInitWait(Config({"Lib.Dir": str(tmp_path / "lib"), **values}), str(tmp_path / "lib"))


def test_cloud_init_wait_runs_once_and_only_when_asked(tmp_path, standin, log_lines):
    calls = standin('echo "status: done"')
    _wait(tmp_path).wait()
    assert not calls.exists()
    w = _wait(tmp_path, **{"Extensions.WaitForCloudInit": "y"})
    w.wait()
    w.wait()
    assert calls.read_text() == "status --wait\n"
    assert "cloud-init completed\nstatus: done" in "\n".join(log_lines.lines)


def test_cloud_init_wait_is_bounded_and_extensions_go_on(tmp_path, standin, log_lines):
    standin("sleep 30")
    w = _wait(tmp_path, **{"Extensions.WaitForCloudInit": "y", "Extensions.WaitForCloudInitTimeout": "1"})
    start = time.monotonic()
    w.wait()
    assert time.monotonic() - start < 10 and w.done
    assert "An error occurred while waiting for cloud-init; will proceed to execute VM extensions." in "\n".join(log_lines.lines)


def _goal_state(**family) -> SimpleNamespace:
    return SimpleNamespace(extensions_goal_state=SimpleNamespace(agent_families=[AgentFamily("Prod", **family)]))


def test_a_requested_agent_version_is_reported_not_applied(tmp_path, log_lines):
    r = AgentUpdateReporter(Config({"Lib.Dir": str(tmp_path)}), str(tmp_path))
    r.on_goal_state(_goal_state(version="9.9.9.9", is_version_from_rsm=True, is_vm_enabled_for_rsm_upgrades=True), True)
    st = r.update_status()
    assert (st["expectedVersion"], st["status"], st["code"]) == ("2.15.0.1", "Error", 1)
    assert st["formattedMessage"]["message"].startswith("[RSM]Agent version 9.9.9.9 requested by the goal state is "
                                                        "not applied")
    assert "9.9.9.9 requested" in "\n".join(log_lines.lines)
    r.on_goal_state(_goal_state(version="2.15.0.1", is_version_from_rsm=True, is_vm_enabled_for_rsm_upgrades=True), True)
    assert r.update_status()["status"] == "Success"
    r.on_goal_state(_goal_state(version="9.9.9.9", is_version_from_rsm=True, is_vm_enabled_for_rsm_upgrades=False), True)
    assert r.update_status() is None  # not RSM: upstream reports nothing
    off = AgentUpdateReporter(Config({"AutoUpdate.UpdateToLatestVersion": "n"}), str(tmp_path))
    off.on_goal_state(_goal_state(version="9.9.9.9", is_version_from_rsm=True, is_vm_enabled_for_rsm_upgrades=True),
                      True)
    assert off.update_status() is None
    assert r.heartbeat_fields() == "AutoUpdate: 1;UpdateMode: NoSelfUpdate;"
    assert off.heartbeat_fields() == "AutoUpdate: 0;UpdateMode: NoSelfUpdate;"


def _status(*entries) -> dict:
    return {"aggregateStatus": {"handlerAggregateStatus": list(entries)}}


def test_initial_goal_state_period_until_the_first_goal_state_converges(tmp_root, log_lines):
    p = GoalStateProgress("/var/lib/waagent", True, period=6.0, initial_period=1.0)
    assert p.initial and p.period == 1.0
    p.on_new_goal_state()
    p.on_status(_status({"handlerName": "A", "status": "NotReady", "runtimeSettingsStatus": {"settingsStatus": {
        "status": {"name": "A", "status": "transitioning"}}}}))
    assert p.period == 1.0 and not p.converged
    p.on_status(_status({"handlerName": "A", "status": "Ready", "runtimeSettingsStatus": {"settingsStatus": {
        "status": {"name": "A", "status": "success"}}}}))
    assert p.period == 6.0 and not p.initial
    assert (tmp_root / "var/lib/waagent/initial_goal_state").read_text() == "[('A', 'success')]"
    assert "Initial goal state completed, switched the goal state period to 6" in "\n".join(log_lines.lines)
    assert "All extensions in the goal state have reached a terminal state: [('A', 'success')]" in "\n".join(log_lines.lines)
    again = GoalStateProgress("/var/lib/waagent", True, period=6.0, initial_period=1.0)
    assert not again.initial and again.period == 6.0  # the marker survives restarts


def test_show_configuration_has_the_governance_options():
    out = conf.show_configuration(Config()).splitlines()
    for line in ("Debug.EnableExtensionPolicy = False", "Debug.EnableSignatureValidation = False",
                 "Policy.PolicyFilePath = /etc/waagent_policy.json", "Extensions.WaitForCloudInit = False",
                 "Extensions.WaitForCloudInitTimeout = 3600", "Extensions.InitialGoalStatePeriod = 6",
                 "Debug.EnableGAVersioning = True", "AutoUpdate.UpdateToLatestVersion = True"):
        assert line in out
