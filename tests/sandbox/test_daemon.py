"""The real ``waagent -daemon`` and its ext-handler child in a namespace sandbox, against the fabric
emulator running inside the sandbox (the lab's set-up: conf, DHCP lease, OVF DVD, fabric driver).

Every test starts from a pristine image and drives the processes from outside with real signals, a
broken configuration or fabric faults, then checks what the agent did: processes, pid files, the
sentinel, /var/log/waagent.log, the events directory and what the fabric received. Extensions.
GoalStatePeriod is 1 s so a "period" is short. Nothing here touches the host.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from guestagent.lab import main as lab
from guestagent.lab.sandbox import interpreter
from tests.sandbox.agentlab import FABRIC_STATE, LIB, PERIOD, RUN, Agent

pytestmark = pytest.mark.sandbox

PID_FILE = "/var/run/waagent.pid"
DAEMON_CMD = [interpreter(), "-u", "-m", "guestagent.cli", "-daemon"]


#: Modules the lean supervisor must not hold beyond what the interpreter itself loads (a .pth file may
#: import some): it imports os, select, time and _signal only.
LEAN_ABSENT = ["typing", "dataclasses", "subprocess", "json", "threading", "re", "signal", "datetime", "pathlib",
               "guestagent.conf", "guestagent.log", "guestagent.events", "guestagent.osutil.system",
               "guestagent.daemon.main", "guestagent.protocol", "guestagent.protocol.wire", "lxml", "cryptography", "asn1crypto"]


def switches(agent: Agent, pid: int) -> int:
    status = agent.text(f"/proc/{pid}/status") or ""
    return sum(int(n) for n in re.findall(r"^(?:non)?voluntary_ctxt_switches:\s+(\d+)", status, re.M))


# ------------------------------------------------------------------------------------ 1. start sequence
def test_start_sequence_pid_file_lib_dir_ready_lean_reexec_and_child(agent):
    assert agent.text(LIB) is None and not agent.sb.host_path(LIB).exists()  # the image has no agent state
    daemon, child = agent.start()
    log = agent.log()
    # pid file names the daemon; the lib dir was created 0700
    reexec = re.search(r"Re-executing the daemon as the lean supervisor \(pid (\d+), RSS (\d+) kB, peak (\d+) kB", log)
    assert daemon == int(reexec.group(1))
    assert int(reexec.group(3)) >= int(reexec.group(2)) > 0   # the peak the bench reports (lost at the exec)
    assert agent.sb.host_path(LIB).stat().st_mode & 0o777 == 0o700
    for pid in (daemon, child):  # the daemon changed into the directory it created; the child inherits it
        assert agent.sb.run(["readlink", f"/proc/{pid}/cwd"]).stdout.strip() == LIB
    # detection wrote the protocol files; provisioning reported Ready
    assert agent.text(f"{LIB}/WireServerEndpoint").strip() == lab.WIRE_HOST
    assert agent.text(f"{LIB}/Protocol").strip() == "WireProtocol"
    health = [json.loads(line) for line in agent.text(f"{FABRIC_STATE}/health.jsonl").splitlines()]
    assert health[-1]["state"] == "Ready"
    # same PID re-executed into the lean supervisor: same command line, marker in its initial environment
    cmdline = agent.sb.host_path(f"/proc/{daemon}/cmdline").read_bytes().split(b"\0")[:-1]
    assert [c.decode() for c in cmdline] == DAEMON_CMD
    environ = agent.sb.host_path(f"/proc/{daemon}/environ").read_bytes().split(b"\0")
    assert f"_GUESTAGENT_DAEMON_SUPERVISE_={daemon}".encode() in environ
    before = int(re.search(r"lean supervisor \(pid \d+, RSS (\d+) kB", log).group(1))
    after = agent.rss_kb(daemon)
    assert after < before * 0.8, f"supervisor RSS {after} kB vs {before} kB before the re-exec"
    # the re-exec landed in guestagent.daemon.supervisor before cli imported anything heavy
    modules = set(agent.wait_log(r"VERBOSE Daemon Daemon Lean supervisor modules: (.*)").group(1).split())
    assert "guestagent.daemon.supervisor" in modules
    floor = set(agent.sb.run([interpreter(), "-c", "import sys; print(' '.join(sys.modules))"]).stdout.split())
    assert not (modules - floor) & set(LEAN_ABSENT), sorted((modules - floor) & set(LEAN_ABSENT))
    # it sleeps in the kernel while the child works (the child polls every second here)
    woke = switches(agent, daemon)
    time.sleep(3)
    woke = switches(agent, daemon) - woke
    assert woke <= 2, f"the supervisor woke {woke} times in 3 s"
    # the child: -run-exthandlers, its pid file 0_waagent.pid, the daemon version in its environment
    child_env = agent.sb.host_path(f"/proc/{child}/environ").read_bytes().split(b"\0")
    assert b"_AZURE_GUEST_AGENT_DAEMON_VERSION_=2.15.0.1" in child_env
    assert not any(e.startswith(b"_GUESTAGENT_DAEMON_SUPERVISE_") for e in child_env)
    assert agent.child_pid_files() == {"0_waagent.pid": str(child)}
    print(f"daemon RSS before re-exec {before} kB, lean supervisor {after} kB, child {agent.rss_kb(child)} kB")
    # a second daemon: "already running", exit 0, the first one untouched
    res = agent.sb.run(DAEMON_CMD, timeout=30, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "already running" in res.stdout
    assert agent.daemon_pid() == daemon and agent.alive(daemon) and agent.children() == [child]


def test_sigterm_stops_both_and_a_restart_redetects_the_protocol(agent):
    daemon, child = agent.start()
    agent.kill(daemon, "TERM")
    assert agent.daemon.wait(10) == 0
    agent.wait(lambda: not agent.alive(child), 5, "the child to end with the daemon")
    assert agent.text(f"{RUN}/waagent.pid") is None
    assert agent.children() == []
    # stale protocol files are replaced by detection on the next start
    agent.sb.write_file(f"{LIB}/WireServerEndpoint", "10.255.255.1")
    agent.sb.write_file(f"{LIB}/Protocol", "StaleProtocol")
    mark = agent.mark()
    daemon2, child2 = agent.start()
    assert daemon2 != daemon and child2 != child
    assert agent.text(f"{LIB}/WireServerEndpoint").strip() == lab.WIRE_HOST
    assert agent.text(f"{LIB}/Protocol").strip() == "WireProtocol"
    assert "10.255.255.1" not in agent.log()[mark:]
    # the old child's pid file (left by SIGTERM) was superseded and removed
    assert agent.child_pid_files() == {"1_waagent.pid": str(child2)}


# ------------------------------------------------------------------------------------ 2. supervision
def test_killed_child_is_replaced_and_a_lost_pid_file_is_claimed_again(agent):
    daemon, child = agent.start()
    agent.kill(child, "KILL")
    t0 = time.monotonic()
    child2 = agent.wait_child(old=(child,), timeout=10)
    print(f"new child with its pid file {time.monotonic() - t0:.1f} s after kill -9")
    assert time.monotonic() - t0 < 5
    assert agent.child_pid_files() == {"1_waagent.pid": str(child2)}
    assert re.search(r"Agent WALinuxAgent-2\.15\.0\.1 was killed by signal 9 after [\d.]+ s; restarting it in 1 s",
                     agent.log())
    # someone deletes the daemon's pid file: the child leaves as an orphan, the daemon writes the file
    # again before the next launch, and the next child stays
    mark = agent.mark()
    agent.sb.run(["rm", PID_FILE])
    agent.wait_log(r"is an orphan -- exiting", mark, 10)
    child3 = agent.wait_child(old=(child, child2), timeout=10)
    assert agent.daemon_pid() == daemon
    assert re.search(r"pid file /var/run/waagent\.pid is missing; writing \d+ again", agent.log()[mark:])
    time.sleep(3 * PERIOD)
    assert agent.children() == [child3] and agent.alive(daemon)


def test_crash_loop_backs_off_reports_and_recovers(agent):
    daemon, child = agent.start()
    agent.sb.write_file("/etc/waagent.conf", "")  # every new child fails at start-up
    mark = agent.mark()
    agent.kill(child, "KILL")
    m = agent.wait_log(r"ERROR Daemon Daemon Event: name=WALinuxAgent, op=Enable, message=The extension handler is "
                       r"in a crash loop: 3 exits within 300 s, last exited with code 1; restarting it in (\d+) s",
                       mark, 20)
    assert m.group(1) == "4"
    delays = [int(d) for d in re.findall(r"after [\d.]+ s; restarting it in (\d+) s", agent.log()[mark:])]
    assert delays[:3] == [1, 2, 4], delays
    assert agent.alive(daemon)
    assert agent.event("Enable", "crash loop", success=False)
    assert agent.event("Enable", "-run-exthandlers' failed with return code: 1", success=False)
    # the configuration is fixed: the next launch (after the back-off) comes up and reports again
    agent.sb.write_file("/etc/waagent.conf", agent.conf_text)
    before = len(agent.uploads())
    child2 = agent.wait_child(old=(child,), timeout=20)
    agent.wait(lambda: len(agent.uploads()) > before, 20, "status uploads to resume")
    assert agent.daemon_pid() == daemon and agent.children() == [child2]


# ------------------------------------------------------------------------------------ 3. orphan
def test_child_exits_when_the_daemon_is_killed(agent):
    daemon, child = agent.start()
    mark = agent.mark()
    agent.kill(daemon, "KILL")
    t0 = time.monotonic()
    agent.wait(lambda: not agent.alive(child), 5 * PERIOD + 5, "the orphaned child to exit")
    print(f"orphan exited {time.monotonic() - t0:.1f} s after the daemon was killed")
    assert "Agent WALinuxAgent-2.15.0.1 is an orphan -- exiting" in agent.log()[mark:]
    assert agent.child_pid_files() == {}  # an orderly exit: its pid file is gone, no sentinel
    assert agent.text(f"{LIB}/current_version") is None
    assert agent.children() == []


# ------------------------------------------------------------------------------------ 5. sentinel
def test_unhandled_exception_leaves_the_sentinel_and_the_next_child_reports_it(agent):
    daemon, child = agent.start()
    mark = agent.mark()
    agent.kill(child, "INT")  # KeyboardInterrupt in the main thread: an exception nothing handles
    expected = "[WALinuxAgent-2.15.0.1] [Agent WALinuxAgent-2.15.0.1 failed with exception: KeyboardInterrupt]"
    agent.wait(lambda: agent.text(f"{LIB}/current_version") == expected or "did not terminate" in agent.log()[mark:],
               10, "the sentinel")
    child2 = agent.wait_child(old=(child,), timeout=10)
    agent.wait_log(re.escape(f"Agent did not terminate cleanly: {expected}"), mark, 10)
    assert "exited with code 1" in agent.log()[mark:]
    agent.wait(lambda: agent.text(f"{LIB}/current_version") is None, 5, "the sentinel to be removed")
    assert agent.event("Restart", "Agent did not terminate cleanly", success=False)
    assert agent.children() == [child2] and agent.alive(daemon)


# ------------------------------------------------------------------------------------ 4. faults
#: Faults that fail the goal-state update at once: (fault, what the error line must say).
HARD_FAULTS = [
    ({"status": 410}, r"ResourceGone"),
    ({"body": "malformed"}, r"invalid goal state\nInner error: \[XmlError\] Goal state is malformed"),
    ({"body": "no_role_instance", "count": 6}, r"without a RoleInstance"),  # re-read 6 times, 0.5 s apart
]


#: While vmSettings answers, the WireServer goal state is fetched only every 30 s (goalstate_updater.WIRE_SERVER_POLL);
#: the goal-state fault tests want it every period, as upstream polls it: no vmSettings for them.
WIRESERVER_EVERY_PERIOD = pytest.mark.parametrize("agent", [{"Debug.EnableFastTrack": "n"}], indirect=True,
                                                  ids=["no-vmsettings"])


@WIRESERVER_EVERY_PERIOD
def test_goal_state_errors_are_logged_and_the_loop_recovers(agent):
    daemon, child = agent.start()
    for spec, expected in HARD_FAULTS:
        mark = agent.mark()
        agent.fault("goalstate", **spec)
        line = agent.wait_log(r"ERROR ExtHandler ExtHandler Error fetching the goal state: (.*(\nInner error: .*)?)",
                              mark, 20)
        assert re.search(expected, line.group(1)), (spec, line.group(0))
        agent.wait_log(r"Fetching the goal state recovered from previous errors \(1 in a row\)", mark, 10)
        assert agent.event("FetchGoalState", line.group(1)[:60], success=False), spec
    assert agent.children() == [child] and agent.alive(daemon)
    # the loop still does its work: a new goal state is processed and its status uploaded
    agent.fabric("POST", "advance")
    agent.wait(lambda: '"sequenceNumber": 1' in json.dumps(agent.status()), 20, "the status of the next goal state")


def test_a_child_without_a_first_goal_state_waits_quietly_and_still_notices_the_daemon_is_gone(agent):
    daemon, child = agent.start()
    mark = agent.mark()
    agent.kill(child, "KILL")
    agent.fault("goalstate", status=410, count=0)  # every goal-state request fails from now on (before the next child starts)
    child2 = agent.wait(lambda: [p for p in agent.children() if p != child], 10, "a new child")[0]
    agent.wait(lambda: len(re.findall("Error fetching the goal state", agent.log()[mark:])) >= 3, 10, "3 errors")
    time.sleep(4 * PERIOD)  # still failing: no more lines
    assert len(re.findall("Error fetching the goal state", agent.log()[mark:])) == 3
    assert "Goal State Period" not in agent.log()[mark:] and agent.alive(child2)
    agent.fabric("DELETE", "faults")
    agent.wait_log(r"Fetching the goal state recovered from previous errors \(\d+ in a row\)", mark, 10)
    agent.wait_log(r"Goal State Period: 1 sec", mark, 10)
    # again without a goal state, and now the daemon dies: the child must not wait forever
    mark = agent.mark()
    agent.kill(child2, "KILL")
    agent.fault("goalstate", status=410, count=0)
    child3 = agent.wait(lambda: [p for p in agent.children() if p not in (child, child2)], 10, "a third child")[0]
    agent.wait_log("Error fetching the goal state", mark, 10)
    agent.kill(daemon, "KILL")
    agent.wait(lambda: not agent.alive(child3), 5 * PERIOD, "the child to leave as an orphan")
    assert "is an orphan -- exiting" in agent.log()[mark:]


#: Faults the HTTP policy absorbs with retries: (fault, the verbose retry line it leaves). One
#: goal-state request meets them in turn (back-off 2 s, then 1 s once throttled). The reset comes
#: after the truncated answer, which closes the connection: a reset of a kept connection is not
#: counted (the agent sends again at once on a new one, as for a server's idle close).
TRANSIENT_FAULTS = [
    ({"status": 500}, r"\[HTTP Retry\] GET \S+comp=goalstate -- Status Code 500 -- 1 attempts made"),
    ({"status": 429}, r"\[HTTP Retry\] GET \S+comp=goalstate -- Status Code 429 -- 2 attempts made"),
    ({"status": 503}, r"\[HTTP Retry\] GET \S+comp=goalstate -- Status Code 503 -- 3 attempts made"),
    ({"body": "truncated"}, r"\[HTTP Retry\] GET \S+comp=goalstate -- IncompleteRead\(\d+ bytes read, \d+ more "
                            r"expected\) -- 4 attempts made"),
    ({"reset": True}, r"\[HTTP Failed\] GET \S+comp=goalstate -- IOError .*Connection reset by peer -- 5 attempts"),
]
SLOW = ({"delay": 11.0}, r"\[HTTP Failed\] GET \S+comp=goalstate -- IOError .*timed out -- 1 attempts made")


@WIRESERVER_EVERY_PERIOD
def test_transient_goal_state_faults_are_retried_without_disturbing_the_loop(agent):
    daemon, child = agent.start()
    first = agent.mark()
    for faults in (TRANSIENT_FAULTS, [SLOW]):  # SLOW: beyond the 10 s timeout, then a good answer
        mark, seen = agent.mark(), len(agent.requests())
        for spec, _ in faults:
            agent.fault("goalstate", **spec)

        def recovered(seen: int = seen, count: int = len(faults)) -> bool:
            reqs = [r for r in agent.requests()[seen:] if r["kind"] == "goalstate"]
            hits = [i for i, r in enumerate(reqs) if r.get("fault")]
            return len(hits) == count and any(r["status"] == 200 for r in reqs[hits[-1] + 1:])

        agent.wait(recovered, 25, f"a good goal state after the faults {faults}")
        for spec, expected in faults:
            assert re.search(expected, agent.log()[mark:]), spec
    assert "Error fetching the goal state" not in agent.log()[first:]
    assert agent.children() == [child] and agent.alive(daemon)
    agent.fabric("POST", "advance")
    agent.wait(lambda: '"sequenceNumber": 1' in json.dumps(agent.status()), 20, "the status of the next goal state")


def test_a_failing_periodic_operation_is_logged_once_and_its_thread_lives(agent):
    # the events directory is a file: the event collector (TelemetryEventsCollector) fails from its first run
    agent.sb.write_file(f"{LIB}/events", "not a directory")
    agent.start()
    error = r"WARNING TelemetryEventsCollector ExtHandler Error in CollectAndEnqueueEvents: .*Not a directory.*"
    first = agent.wait_log(error, 0, 10)
    time.sleep(3.5)  # retried after 1 s and 3 s (back-off), failing again: still one line
    assert len(re.findall(error, agent.log())) == 1
    assert "[NOTE: Will not log the same error for the next hour]" in first.group(0)
    agent.sb.run(["sh", "-c", f"rm {LIB}/events && mkdir -m 0700 {LIB}/events"])
    agent.sb.python("from guestagent import events\n"
                    f"events.add_event('Unknown', message='probe after the repair', lib_dir='{LIB}')")
    # the same thread collects again at its next retry, and the event reaches the fabric
    agent.wait(lambda: agent.event("Unknown", "probe after the repair") and not list(
        agent.sb.host_path(f"{LIB}/events").glob("*.tld")), 20, "the probe event to be collected and sent")
    assert len(re.findall(error, agent.log())) == 1


# ------------------------------------------------------------------------------------ 6. status cadence
def _at(req: dict) -> float:
    from datetime import datetime

    return datetime.strptime(req["time"], "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()


def test_status_is_uploaded_on_change_and_refreshed_when_idle(agent):
    refresh = 10 * PERIOD  # exthandler.main: min(STATUS_REFRESH_PERIOD, 10 goal-state periods)
    agent.start()

    def settled() -> bool:
        st = json.dumps(agent.status())
        return '"status": "success"' in st and '"sequenceNumber": 0' in st

    agent.wait(settled, 20, "the first goal state to succeed")
    time.sleep(1.5 * PERIOD)
    last = agent.uploads()[-1]
    # idle: the next upload is the refresh, not one per goal-state iteration
    nxt = agent.wait(lambda: [u for u in agent.uploads() if _at(u) > _at(last)], refresh + 5,
                     "the idle refresh upload")[0]
    gap = _at(nxt) - _at(last)
    polls = [r for r in agent.requests("vmsettings") if _at(last) < _at(r) < _at(nxt)]  # the per-period poll
    print(f"idle: status re-uploaded after {gap:.1f} s, {len(polls)} vmSettings polls in between")
    assert refresh - 1.5 <= gap <= refresh + 3, gap
    assert len(polls) >= refresh - 3
    # a change goes out at once
    agent.fabric("POST", "advance")
    t0 = time.time()
    agent.wait(lambda: '"sequenceNumber": 1' in json.dumps(agent.status()), 10, "the status of the new goal state")
    changed = [u for u in agent.uploads() if _at(u) >= t0]
    print(f"change: uploaded {_at(changed[0]) - t0:.1f} s after the fabric moved on")
    assert _at(changed[0]) - t0 < 3 * PERIOD + 1


# ------------------------------------------------------------------------------------ 3. restart and update
SAMPLE = "GuestAgent.Fabric.Sample"
COMMAND = re.compile(r"\[" + re.escape(SAMPLE) + r"-([\d.]+)\] Executing command: \S*/bin/\S+ (\w+) "
                     r"with environment variables: (\{.*\})$", re.M)


def commands(agent: Agent, since: int = 0) -> list[tuple[str, str, str]]:
    """(verb, version, ConfigSequenceNumber) of every sample-handler command the agent ran."""
    return [(verb, version, json.loads(env)["ConfigSequenceNumber"])
            for version, verb, env in COMMAND.findall(agent.log()[since:])]


def test_restart_enables_the_unchanged_extension_once_and_an_update_uninstalls_with_the_new_seqno(agent):
    """Upstream keeps no record of processed goal states across a restart: its first goal state after a
    start runs enable again (extensions rely on it after a reboot), once; an update passes the old
    version's uninstall the new goal state's sequence number."""
    daemon, _ = agent.start()
    agent.wait(lambda: ("enable", "1.0.0", "0") in commands(agent), 30, "the sample extension enabled")
    assert commands(agent) == [("install", "1.0.0", "0"), ("enable", "1.0.0", "0")]
    agent.kill(daemon, "TERM")
    assert agent.daemon.wait(10) == 0
    mark = agent.mark()
    agent.start()  # a package upgrade or a reboot: same disk, same goal state
    agent.wait(lambda: commands(agent, mark), 30, "a command after the restart")
    time.sleep(4 * PERIOD)  # a few more periods of the same goal state: nothing more
    assert commands(agent, mark) == [("enable", "1.0.0", "0")]
    # next goal state (seqNo 1), then FastTrack's update to 1.1.0 (seqNo 2)
    mark = agent.mark()
    agent.fabric("POST", "advance")
    agent.wait(lambda: ("enable", "1.0.0", "1") in commands(agent, mark), 30, "enable of seqNo 1")
    agent.fabric("POST", "advance")
    agent.wait(lambda: ("enable", "1.1.0", "2") in commands(agent, mark), 30, "the update to 1.1.0")
    assert commands(agent, mark) == [("enable", "1.0.0", "1"), ("disable", "1.0.0", "2"), ("update", "1.1.0", "2"),
                                     ("uninstall", "1.0.0", "2"), ("install", "1.1.0", "2"), ("enable", "1.1.0", "2")]
