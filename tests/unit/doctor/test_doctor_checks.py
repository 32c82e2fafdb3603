"""The doctor's checks against a temporary root: each fault shape gives its exact line; a clean state
gives none. No check here sends a request (no endpoint is recorded, or the check does not probe)."""

from __future__ import annotations

import json
import os
import time

import pytest

from guestagent import conf
from guestagent.doctor import agent, main, proxyagent
from guestagent.doctor.context import DoctorContext
from guestagent.doctor.report import FAIL, OK, WARN, Finding, exit_code, render_json, render_text
from guestagent.lab.doctorfaults import GPA_SHAPES, shape
from guestagent.osutil import gpa

LIB = "var/lib/waagent"


@pytest.fixture
def root(tmp_root):
    (tmp_root / LIB).mkdir(parents=True)
    (tmp_root / "etc").mkdir()
    (tmp_root / "etc/waagent.conf").write_text("Logs.Verbose=n\n")
    (tmp_root / "proc").mkdir()
    for name in ("filesystems", "self/mountinfo", "sys/kernel/osrelease"):
        (tmp_root / "proc" / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_root / "proc/filesystems").write_text("nodev\tcgroup\nnodev\tcgroup2\n")
    (tmp_root / "proc/self/mountinfo").write_text(
        "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n")
    (tmp_root / "proc/sys/kernel/osrelease").write_text("6.1.0-azure\n")
    return tmp_root


def ctx(text: str = "") -> DoctorContext:
    return DoctorContext(conf.parse(text or "Logs.Verbose=n\n", path="/etc/waagent.conf"))


def by_check(findings: list[Finding], check: str) -> Finding:
    found = [f for f in findings if f.check == check]
    assert found, f"no {check} finding in {findings}"
    return found[0]


def write_gpa(root, text: str, age: float = 0.0) -> None:
    path = root / gpa.STATUS_FILE.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if age:
        t = time.time() - age
        os.utime(path, (t, t))


@pytest.mark.parametrize("s", GPA_SHAPES, ids=lambda s: s.name)
def test_each_gpa_shape_names_its_problem_and_remedy(root, s):
    write_gpa(root, s.text)
    f = by_check(proxyagent.check_status(ctx()), s.check)
    assert s.expect in f.found + f.why + f.todo
    assert (f.level == OK) == (s.name == "gpa-healthy")
    if f.level != OK:
        assert f.why and f.todo  # every problem says why it matters and what to do


def test_key_latch_failure_points_to_the_key_reset(root):
    write_gpa(root, shape("gpa-key-latch").text)
    f = by_check(proxyagent.check_status(ctx()), "gpa.keyLatchStatus")
    assert "KeyIncarnationId" in f.todo


def test_gpa_absent_is_not_installed_not_an_error(root):
    findings = proxyagent.check_status(ctx()) + proxyagent.check_prerequisites(ctx())
    assert exit_code(findings) == 0
    assert "not installed" in by_check(findings, "gpa").found


def test_a_status_the_gpa_stopped_rewriting_is_stale(root):
    write_gpa(root, shape("gpa-healthy").text, age=3600)
    f = by_check(proxyagent.check_status(ctx()), "gpa.status")
    assert f.level == FAIL and "not rewritten for" in f.found


def test_prerequisites_matter_once_the_gpa_is_installed(root):
    write_gpa(root, shape("gpa-healthy").text)
    (root / "proc/sys/kernel/osrelease").write_text("5.4.0-1100-azure\n")
    (root / "proc/self/mountinfo").write_text("36 24 0:31 / /proc rw - proc proc rw\n")
    findings = proxyagent.check_prerequisites(ctx())
    assert by_check(findings, "gpa.kernel").level == WARN
    assert "not mounted" in by_check(findings, "gpa.cgroup2").found
    (root / "proc/filesystems").write_text("nodev\tcgroup\n")
    assert "not in /proc/filesystems" in by_check(proxyagent.check_prerequisites(ctx()), "gpa.cgroup2").found


@pytest.mark.parametrize("gpa_installed, version, msp, level, text", [
    (False, (23, 4), False, OK, "not installed"),
    (False, (24, 3), True, FAIL, "azure-proxy-agent not found"),
    (True, (23, 4), False, FAIL, "report ready before the GPA"),
    (True, (24, 3), False, OK, "waits for the GPA"),
])
def test_cloud_init_against_the_gpa_as_the_guide_tabulates(root, monkeypatch, gpa_installed, version, msp, level,
                                                           text):
    monkeypatch.setattr(proxyagent, "cloud_init_version", lambda: version)
    if gpa_installed:
        write_gpa(root, shape("gpa-healthy").text)
    if msp:
        (root / LIB / "ovf-env.xml").write_text("<wa:ProvisionGuestProxyAgent>true</wa:ProvisionGuestProxyAgent>")
    f = by_check(proxyagent.check_cloud_init(ctx()), "gpa.cloud-init")
    assert f.level == level and text in f.found + f.why


def test_provisioning_conflicts(root, monkeypatch):
    monkeypatch.setattr(agent.cloudinit, "cloud_init_is_enabled", lambda: True)
    f = by_check(agent.check_provisioning(ctx("Provisioning.Agent=waagent\n")), "provisioning.conflict")
    assert f.level == FAIL and "cloud-init is enabled" in f.found
    monkeypatch.setattr(agent.cloudinit, "cloud_init_is_enabled", lambda: False)
    f = by_check(agent.check_provisioning(ctx("Provisioning.Agent=cloud-init\n")), "provisioning.conflict")
    assert "not enabled" in f.found


def test_config_warnings_are_problems_unknown_keys_notes(root):
    findings = agent.check_config(ctx("OS.EnableFirewall=perhaps\nNot.AKey=1\n"))
    assert [f.level for f in findings] == [WARN, "info"]


def _status_doc(handlers: list[dict]) -> str:
    return json.dumps({"aggregateStatus": {"guestAgentStatus": {"status": "Ready"},
                                           "handlerAggregateStatus": handlers}})


def test_status_age_and_each_extension(root):
    folder = root / LIB / "history/2026-01-01T00-00-00__3"
    folder.mkdir(parents=True)
    failing = {"handlerName": "Microsoft.X.Y", "handlerVersion": "1.0", "status": "Ready", "runtimeSettingsStatus": {
        "settingsStatus": {"status": {"status": "error", "code": 12,
                                      "formattedMessage": {"message": "enable failed: exit 1"}}}}}
    (folder / "waagent_status.json").write_text(_status_doc([failing, {"handlerName": "A.B", "handlerVersion": "2",
                                                                       "status": "Ready"}]))
    findings = agent.check_status(ctx())
    assert by_check(findings, "status").level == OK
    bad = by_check(findings, "extension Microsoft.X.Y 1.0")
    assert bad.level == WARN and "error (code 12): enable failed: exit 1" in bad.found
    assert by_check(findings, "extension A.B 2").level == OK
    assert "last goal state 3" in by_check(agent.check_goal_state(ctx()), "goal-state").found
    old = time.time() - 1000
    os.utime(folder / "waagent_status.json", (old, old))
    stale = by_check(agent.check_status(ctx()), "status")
    assert stale.level == FAIL and "stale after 300 s" in stale.found


def test_no_recorded_endpoint_sends_nothing_and_says_so(root):
    from guestagent.doctor import network

    c = ctx()
    f = by_check(network.check_endpoint(c), "endpoint")
    assert f.level == FAIL and "no request was sent" in f.todo and c.endpoint is None
    assert network.check_hostplugin(c)[0].level == "skip"


def test_render_and_exit_codes():
    good = [Finding("a", OK, "fine")]
    bad = [*good, Finding("b", FAIL, "broken", "it matters", "fix it")]
    assert exit_code(good) == 0 and exit_code(bad) == 1
    text = render_text(bad)
    assert "[FAIL] b: broken\n       why: it matters\n       do:  fix it" in text and "1 problem(s) found" in text
    doc = json.loads(render_json(bad))
    assert doc["healthy"] is False and doc["findings"][1]["todo"] == "fix it"


def test_could_not_run_is_exit_2(root, capsys):
    assert main.main(["--conf", "/etc/missing.conf"]) == 2
    assert "could not run" in capsys.readouterr().err


def test_a_check_that_crashes_is_a_finding_not_a_crash(root):
    def broken(_ctx):
        raise RuntimeError("bug")

    findings = main.run_checks(ctx(), [("broken", broken)])
    assert findings[0].level == WARN and "RuntimeError: bug" in findings[0].found
