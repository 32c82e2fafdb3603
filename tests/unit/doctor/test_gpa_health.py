"""The Guest Proxy Agent's status.json as the agent reads it, and the monitor's change-only reporting."""

from __future__ import annotations

import json
import os

import pytest

from guestagent import events
from guestagent.exthandler.monitor import GpaHealth
from guestagent.lab.doctorfaults import GPA_SHAPES, gpa_status, shape
from guestagent.osutil import gpa


def test_healthy_status_as_the_gpa_writes_it():
    status = gpa.parse_status(gpa_status())
    assert status.healthy and status.overall == "SUCCESS"
    assert [c.name for c in status.components] == list(gpa.COMPONENTS)


@pytest.mark.parametrize("s", [s for s in GPA_SHAPES if s.name != "gpa-healthy"], ids=lambda s: s.name)
def test_each_failure_shape_is_unhealthy(s):
    status = gpa.parse_status(s.text)
    assert not status.healthy
    assert status.error or status.failing()


def test_fields_at_the_top_level_as_the_guide_shows_them():
    doc = {"proxyAgentStatus": "SUCCESS", **{c: {"status": "RUNNING", "message": ""} for c in gpa.COMPONENTS}}
    assert gpa.parse_status(json.dumps(doc)).healthy
    doc["keyLatchStatus"] = {"status": "STOPPED", "message": "no key"}
    assert gpa.parse_status(json.dumps(doc)).failing()[0].message == "no key"


def test_a_missing_component_is_not_healthy():
    doc = json.loads(gpa_status())
    del doc["proxyAgentStatus"]["proxyListenerStatus"]
    assert not gpa.parse_status(json.dumps(doc)).healthy


def test_summary_shortens_the_verifier_dump():
    long = gpa_status(ebpf={"status": "STOPPED", "message": "x" * 5000})
    assert len(gpa.parse_status(long).summary()) < 400


def test_prerequisite_parsers():
    assert gpa.kernel_version("5.15.0-1057-azure") == (5, 15)
    assert gpa.kernel_version("4.18.0") < gpa.MIN_KERNEL
    assert gpa.cgroup2_listed("nodev\tcgroup\nnodev\tcgroup2\n")
    assert not gpa.cgroup2_listed("nodev\tcgroup\n")
    line = "35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate"
    assert gpa.cgroup2_mounts(line + "\n36 24 0:31 / /proc rw - proc proc rw") == ["/sys/fs/cgroup"]


def _gpa_events(lib_dir):
    out = []
    for name in sorted(os.listdir(lib_dir / "events")) if (lib_dir / "events").is_dir() else []:
        doc = json.loads((lib_dir / "events" / name).read_text())
        params = {p["name"]: p["value"] for p in doc["parameters"]}
        if params.get("Operation") == events.WALAEventOperation.GuestProxyAgentHealth:
            out.append(params)
    return out


def test_monitor_reports_only_changes(tmp_path, log_lines):
    path = tmp_path / "status.json"
    lib = tmp_path / "lib"
    lib.mkdir()
    watch = GpaHealth(str(lib), str(path))
    watch.run()  # absent from the start: "not installed", nothing to say
    assert watch.changes == 0 and not _gpa_events(lib)
    path.write_text(gpa_status())
    watch.run()
    watch.run()
    path.write_text(shape("gpa-key-latch").text)
    watch.run()
    watch.run()
    path.write_text(gpa_status())
    watch.run()
    assert watch.changes == 3
    evs = _gpa_events(lib)
    assert [e["OperationSuccess"] for e in evs] == [True, False, True]
    assert "keyLatchStatus STOPPED: Failed to acquire key" in evs[1]["Message"]
    assert len(log_lines.matching("Guest Proxy Agent is unhealthy")) == 1
    path.unlink()
    watch.run()
    assert watch.changes == 4 and "is gone" in _gpa_events(lib)[-1]["Message"]
