"""The ext-handler child's main-loop iteration against the fabric emulator over loopback.

The real ExtHandler (goal state, extensions, status), the real protocol client and the fabric's fault
injection; time is only shortened where waiting would be the whole test (the refresh period and the 6 h
error throttle are moved by setting the child's own clocks, not by mocking anything).
"""

from __future__ import annotations

import json
import os
import threading
import time
from types import SimpleNamespace

import pytest

from guestagent import conf
from guestagent.exthandler import main as child_main
from guestagent.exthandler.extensions.manager import ExtensionsManager
from guestagent.periodic import Operation, PeriodicThread
from guestagent.protocol.certificates import ensure_transport_cert
from guestagent.protocol.wire import WireProtocol


@pytest.fixture
def lines(log_lines):
    return log_lines


@pytest.fixture
def child(fab, tmp_path):
    """An ExtHandler wired to the fabric (what run() does before its loop, minus threads and pid files)."""
    lib = str(tmp_path / "lib")
    os.makedirs(lib)
    ensure_transport_cert(lib)
    config = conf.parse(f"Lib.Dir={lib}\nExtensions.GoalStatePeriod=1\nPid.File={tmp_path}/waagent.pid\n")
    handler = child_main.ExtHandler(SimpleNamespace(debug=False), config)
    handler.protocol = WireProtocol("127.0.0.1", lib, config, wire_port=fab.wire_port,
                                    hgap_port=fab.hgap_port, sleep=lambda s: None)
    handler.extensions = ExtensionsManager(config, handler.protocol, log_root=str(tmp_path / "log"),
                                           event=lambda *a, **k: None)
    handler.protocol.update_goal_state()
    return handler


def uploads(fab) -> int:
    return len(fab.status_uploads)


def events(lib: str, op: str) -> list[dict]:
    out = []
    for name in sorted(os.listdir(os.path.join(lib, "events"))):
        doc = json.load(open(os.path.join(lib, "events", name)))
        params = {p["name"]: p["value"] for p in doc["parameters"]}
        if params["Operation"] == op:
            out.append(params)
    return out


def test_status_goes_out_on_change_and_on_refresh_only(child, fab):
    assert child.status_refresh == 10  # 10 goal-state periods of 1 s (60 s at the default 6 s)
    child.iterate()
    assert uploads(fab) == 1
    seq0 = fab.status_blob["aggregateStatus"]["handlerAggregateStatus"][0]["runtimeSettingsStatus"]
    assert seq0["sequenceNumber"] == 0
    for _ in range(5):
        child.iterate()
    assert uploads(fab) == 1, "an unchanged status was uploaded again before the refresh period"
    child.last_status_upload -= child.status_refresh  # the refresh period has passed
    child.iterate()
    assert uploads(fab) == 2
    child.iterate()
    assert uploads(fab) == 2
    fab.advance()
    child.iterate()
    assert uploads(fab) == 3
    seq = fab.status_blob["aggregateStatus"]["handlerAggregateStatus"][0]["runtimeSettingsStatus"]
    assert seq["sequenceNumber"] == 1


def test_default_refresh_is_a_minute_and_long_periods_do_not_stretch_it(tmp_path):
    for text, expected in (("", 60), ("Extensions.GoalStatePeriod=2\n", 20), ("Extensions.Enabled=n\n", 60)):
        handler = child_main.ExtHandler(SimpleNamespace(debug=False), conf.parse(f"Lib.Dir={tmp_path}\n{text}"))
        assert handler.status_refresh == expected, text


def test_goal_state_errors_logged_three_in_a_row_then_throttled_and_recovery_resets(child, fab, lines,
                                                                                   monkeypatch):
    from guestagent.protocol import goalstate_updater

    monkeypatch.setattr(goalstate_updater, "WIRE_SERVER_POLL", 0.0)  # the WireServer is asked every iteration here
    lib = child.lib_dir
    child.iterate()
    fab.faults.add("goalstate", status=410, count=5)
    for _ in range(5):
        child.iterate()
    errors = lines.matching("Error fetching the goal state: [ResourceGoneError]")
    assert len(errors) == 3 and all(" ERROR " in e for e in errors)
    assert not lines.matching("still failing")
    assert len(events(lib, "FetchGoalState")) == 3
    assert child.gs_errors == 5  # the heartbeat reports all of them
    child.iterate()  # the fault is gone
    assert lines.matching("Fetching the goal state recovered from previous errors (5 in a row)")
    # after a recovery the next error is news again
    fab.faults.add("goalstate", body="malformed", count=4)
    for _ in range(4):
        child.iterate()
    assert len(lines.matching("Error fetching the goal state: [ProtocolError] Fetched an invalid goal state")) == 3
    child.next_gs_error_log = 0.0  # 6 hours later
    fab.faults.add("goalstate", body="malformed", count=1)
    child.iterate()
    assert len(lines.matching("Fetching the goal state is still failing: [ProtocolError]")) == 1
    ops = [e["Message"] for e in events(lib, "FetchGoalState")]
    assert sum("recovered" in m for m in ops) == 1 and sum("still failing" in m for m in ops) == 1


def test_a_failed_status_upload_is_logged_once_and_retried_next_iteration(child, fab, lines):
    fab.faults.add("status_blob", status=500, count=0)
    fab.faults.add("hgap_status", status=500, count=0)
    child.iterate()
    child.iterate()
    assert uploads(fab) == 0
    assert len(lines.matching("Failed to report status")) == 1
    fab.faults.clear()
    child.iterate()  # not deferred to the refresh period: the last upload failed
    assert uploads(fab) == 1


def test_dead_worker_thread_is_restarted(child, lines):
    ran = threading.Event()

    def factory() -> PeriodicThread:
        return PeriodicThread("ProbeHandler", [Operation("Probe", ran.set, 0.05)], threading.Event())

    child.thread_factories = {"ProbeHandler": factory}
    child.threads = {"ProbeHandler": factory()}  # never started: as good as dead
    child._check_threads()
    assert lines.matching("ProbeHandler thread died, restarting")
    assert ran.wait(2) and child.threads["ProbeHandler"].is_alive()
    child.threads["ProbeHandler"].stop()


def test_orphan_check_follows_the_daemon_pid_file(child, tmp_path):
    pid_file = tmp_path / "waagent.pid"
    assert child._is_orphan()  # no pid file
    pid_file.write_text(str(os.getppid()))
    assert not child._is_orphan()
    pid_file.write_text("999999999")
    assert child._is_orphan()
    child.args.debug = True
    assert not child._is_orphan()


def test_sentinel_written_on_unhandled_exception_and_reported_by_the_next_child(tmp_path, monkeypatch, lines):
    config = conf.parse(f"Lib.Dir={tmp_path}\n")

    def boom(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(child_main.ExtHandler, "run", boom)  # stands for any failure inside the loop
    assert child_main.run_exthandlers(SimpleNamespace(debug=False), config) == 1
    sentinel = tmp_path / "current_version"
    expected = "[WALinuxAgent-2.15.0.1] [Agent WALinuxAgent-2.15.0.1 failed with exception: disk on fire]"
    assert sentinel.read_text() == expected
    assert oct(sentinel.stat().st_mode & 0o777) == "0o644"
    assert lines.matching("WARNING ExtHandler ExtHandler Agent WALinuxAgent-2.15.0.1 failed with exception: disk")
    assert lines.matching("RuntimeError: disk on fire")  # the traceback
    nxt = child_main.ExtHandler(SimpleNamespace(debug=False), config)
    nxt._check_sentinel()
    assert lines.matching(f"Agent did not terminate cleanly: {expected}")
    assert not sentinel.exists()
    restart = events(str(tmp_path), "Restart")
    assert len(restart) == 1 and restart[0]["OperationSuccess"] is False


def test_pid_file_index_and_older_handlers(tmp_path):
    config = conf.parse(f"Lib.Dir={tmp_path}\nPid.File={tmp_path}/run/waagent.pid\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "0_waagent.pid").write_text("999999999")  # a handler that is gone
    (tmp_path / "run" / "3_waagent.pid").write_text("not a pid")
    handler = child_main.ExtHandler(SimpleNamespace(debug=False), config)
    start = time.monotonic()
    handler._write_pid_file()
    assert time.monotonic() - start < 1  # nothing alive to wait for
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["4_waagent.pid"]
    assert (tmp_path / "run" / "4_waagent.pid").read_text() == str(os.getpid())
