"""The ext-handler child's main loop, wired: JIT users on a new incarnation and the agent memory check.

The loop runs for real (goal state from the fabric emulator over loopback, extensions manager, status upload)
and is ended by its own orphan check. The boundaries: the account commands (useradd/userdel would change this
host; the tmp-root stand-in of tests/unit/wiring/test_remote_access.py is reused, the sandbox test runs the real
ones) and the kernel's cgroup files (a memory.stat under the tmp root, read by the real cgroupfs code).
"""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest

from guestagent import conf, events
from guestagent.conf import Config
from guestagent.exthandler import cgroups, monitor
from guestagent.exthandler.extensions.manager import ExtensionsManager
from guestagent.exthandler.main import ExtHandler
from guestagent.exthandler.remoteaccess import COMMENT, RemoteAccessHandler
from guestagent.fabric import server
from guestagent.fabric.scenario import RemoteUser, Scenario, Step
from guestagent.osutil import cgroupfs, users
from guestagent.protocol.wire import detect
from tests.unit.wiring.accounts import Accounts

LIB = "/var/lib/waagent"
FUTURE = "Mon, 01 Jan 2029 00:00:00 GMT"


def _child(tmp_root, fab, text: str = "") -> ExtHandler:
    (tmp_root / "etc").mkdir(exist_ok=True)
    (tmp_root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    config = conf.parse(f"Lib.Dir={LIB}\nExtensions.GoalStatePeriod=1\n{text}")
    child = ExtHandler(SimpleNamespace(debug=False), config)
    child.protocol = detect(config, LIB, endpoint_ip="127.0.0.1", wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                            sleep=lambda s: None)
    child.extensions = ExtensionsManager(config, child.protocol, log_root="/var/log/azure")
    child.period = 0
    child._check_threads = lambda: None
    child._heartbeat = lambda: None
    return child


def _loop(child: ExtHandler, iterations: int = 1) -> int:
    """Run the real main loop for at most ``iterations`` passes (its orphan check ends it); returns the
    number of passes (goal-state iterations) made."""
    checks, passes = [], []
    iterate = ExtHandler.iterate.__get__(child)
    child.iterate = lambda: passes.append(1) or iterate()
    child._is_orphan = lambda: checks.append(1) or len(checks) > iterations
    child._main_loop()
    return len(passes)


def _jit() -> set:
    return {u.name for u in users.users() if u.gecos == COMMENT}


def test_main_loop_creates_and_removes_jit_users(tmp_root):
    sc = Scenario(steps=[Step(incarnation="1", remote_access=[RemoteUser("alice", "Fabric-Pa55!", FUTURE)]),
                         Step(incarnation="2", remote_access=[RemoteUser("alice", "Fabric-Pa55!", FUTURE),
                                                              RemoteUser("bob", "Other-Pa55!", FUTURE)]),
                         Step(incarnation="3")])
    with server.Fabric(sc) as fab:
        child = _child(tmp_root, fab)
        accounts = Accounts()
        child.remote_access = RemoteAccessHandler(child.config, LIB, ops=accounts)
        _loop(child)
        assert _jit() == {"alice"} and accounts.passwords == {"alice": "Fabric-Pa55!"}
        assert fab.status_blob is not None  # status was reported in that pass
        assert "alice ALL=(ALL) ALL" in (tmp_root / "etc/sudoers.d/waagent").read_text()
        _loop(child)  # same incarnation: nothing happens
        assert [c for c in accounts.calls if c[0] == "useradd"] == [("useradd", "alice", "2029-01-02", COMMENT)]
        fab.advance()
        _loop(child)
        assert _jit() == {"alice", "bob"} and accounts.passwords["bob"] == "Other-Pa55!"
        fab.advance()  # no RemoteAccessInfo any more: every JIT user goes
        _loop(child)
        assert _jit() == set()
        assert "alice" not in (tmp_root / "etc/sudoers.d/waagent").read_text()


def _memory_configurator(tmp_root, anon: int) -> cgroups.CGroupConfigurator:
    path = tmp_root / "sys/fs/cgroup/azure.slice/walinuxagent.service"
    path.mkdir(parents=True)
    (path / "memory.stat").write_text(f"anon {anon}\nfile 1048576\nkernel 4096\n")
    c = cgroups.CGroupConfigurator(Config())
    c.initialized = c.agent_enabled = c.extensions_enabled = True
    c.agent_cgroup = cgroups.TrackedCgroup(cgroups.AGENT_TELEMETRY_NAME, str(path), cgroupfs.V2)
    return c


def _events(tmp_root, op: str) -> list:
    folder = tmp_root / LIB.lstrip("/") / "events"
    out = []
    for name in sorted(os.listdir(folder)) if folder.is_dir() else []:
        doc = json.loads((folder / name).read_text())
        params = {p["name"]: p["value"] for p in doc.get("parameters", [])}
        if params.get("Operation") == op:
            out.append(params)
    return out


@pytest.mark.parametrize("anon,exits", [(40 * 1024 * 1024, True), (10 * 1024 * 1024, False)])
def test_memory_check_ends_the_loop_when_the_agent_exceeds_its_quota(tmp_root, anon, exits):
    events.set_lib_dir(LIB)
    with server.Fabric(Scenario(steps=[Step(incarnation="1")])) as fab:
        child = _child(tmp_root, fab, "Debug.EnableAgentMemoryUsageCheck=y\nDebug.CgroupCheckPeriod=60\n")
        now = [1000.0]
        check = monitor.AgentMemoryCheck(child.config, _memory_configurator(tmp_root, anon), LIB,
                                         clock=lambda: now[0])
        child.memory_check = check
        assert _loop(child, 2) == 2 and check.checks == 0  # not in the first 5 minutes
        now[0] += monitor.MEMORY_CHECK_FIRST_DELAY
        passes = _loop(child, 3)
        assert check.checks == 1 and check._last_error_report is None
        assert passes == (1 if exits else 3)  # exceeded: the loop returned (run() then exits 0)
        found = _events(tmp_root, "AgentMemory")
        if exits:
            assert len(found) == 1 and "The agent memory limit 31457280 bytes exceeded" in found[0]["Message"]
        else:
            assert found == []
            assert check.next_check == now[0] + 60  # then every Debug.CgroupCheckPeriod


def test_memory_check_waits_for_convergence_and_is_off_by_default(tmp_root):
    with server.Fabric(Scenario(steps=[Step(incarnation="1")])) as fab:
        child = _child(tmp_root, fab)
        assert not child.memory_check.enabled
        config = conf.parse("Debug.EnableAgentMemoryUsageCheck=y\n")
        now = [10_000.0]
        check = monitor.AgentMemoryCheck(config, _memory_configurator(tmp_root, 64 * 1024 * 1024), LIB,
                                         clock=lambda: now[0])
        now[0] += monitor.MEMORY_CHECK_FIRST_DELAY
        assert not check.exceeded(SimpleNamespace(converged=lambda: False)) and check.checks == 0
        assert check.exceeded(SimpleNamespace(converged=lambda: True)) and check.checks == 1
