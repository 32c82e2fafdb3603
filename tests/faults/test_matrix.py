"""The fault matrix (issue 13): one sandbox, one daemon and its child against a fabric that misbehaves,
one case per fault, in order. After each fault the case checks (FaultAgent): the agent's own error line,
the agent still processing a new goal state and reporting it, nothing written outside its directories
(overlay diff and /tmp), no fabric secret in clear in what it wrote, and peak RSS (VmHWM) bounded.

The cases share the agent to keep the tier within a few minutes; each leaves the fabric without faults.
The hostile-name rows (D1, D2, D5; D6 in its own sandbox) failed before the edge-validation branch
(written as strict xfails, they turned into XPASS when it merged).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from faultlab import FaultAgent
from hostile import write_all

from guestagent.fabric import faults as fabric_faults
from guestagent.fabric.scenario import BUILTIN_DIR
from guestagent.lab.sandbox import SandboxUnavailable
from tests.sandbox.agentlab import find_key

HERE = Path(__file__).resolve().parent
SAMPLE = "GuestAgent.Fabric.Sample"
SLOW, FORKING, HUNG = "Fabric.Faults.Slow", "Fabric.Faults.Forking", "Fabric.Faults.Hung"
HOSTILE = {"zipslip": "Fabric.Faults.ZipSlip", "symlink": "Fabric.Faults.Symlink", "bomb": "Fabric.Faults.Bomb",
           "corrupt": "Fabric.Faults.Corrupt"}
D1_NAME = "../../../../tmp/fault-d1"
D2_EXT = "../../../../../../tmp/fault-d2"  # from <lib>/<handler>/config up to /
HEALTH_STEPS = (1, 2)
STEP = {"slow": 3, "forking": 4, "hung": 5, "zipslip": 6, "symlink": 7, "bomb": 8, "corrupt": 9, "w2": 10,
        "d1": 11, "d2": 12, "d5": 13}
W2_SEQ = 7


def sample(seq: int = 0) -> dict:
    return {"name": SAMPLE, "version": "1.0.0", "seqNo": seq, "settings": {"message": f"seq {seq}"},
            "protected_settings": {"secret": "fabric-protected-value"}}


def plain(name: str) -> dict:
    return {"name": name, "version": "1.0.0", "seqNo": 0, "settings": {"n": 0}}


def scenario(folder: Path) -> Path:
    zips = write_all(folder / "packages")
    handlers = [{"name": SAMPLE, "version": "1.0.0", "path": str(BUILTIN_DIR / "handlers" / "sample")},
                {"name": SLOW, "version": "1.0.0", "path": str(HERE / "handlers" / "slow")},
                {"name": FORKING, "version": "1.0.0", "path": str(HERE / "handlers" / "forking")},
                {"name": HUNG, "version": "1.0.0", "path": str(HERE / "handlers" / "hung")},
                {"name": D1_NAME, "version": "1.0.0", "path": str(BUILTIN_DIR / "handlers" / "sample")},
                {"name": "Fabric.Faults.Multi", "version": "1.0.0", "path": str(BUILTIN_DIR / "handlers" / "sample")}]
    handlers += [{"name": HOSTILE[k], "version": "1.0.0", "path": str(p)} for k, p in zips.items()]
    steps = [{"extensions": [sample()]}] * 3
    steps += [{"extensions": [sample(), plain(name)]} for name in (SLOW, FORKING, HUNG)]
    steps += [{"extensions": [sample(), plain(HOSTILE[k])]} for k in ("zipslip", "symlink", "bomb", "corrupt")]
    steps += [{"extensions": [sample(W2_SEQ)]},
              {"extensions": [sample(), plain(D1_NAME)]},
              {"extensions": [sample(), {"name": "Fabric.Faults.Multi", "version": "1.0.0", "multi_config": True,
                                         "extensions": [{"name": D2_EXT, "seqNo": 0, "settings": {"n": 1}}]}]},
              {"extensions": [sample()], "extra_plugins": 20000}]
    doc = {"name": "fault-matrix", "ovf": {"username": "azureuser", "password": "Fabric-Passw0rd!",
                                           "disable_ssh_password_auth": False},
           "vm_settings": "not_supported", "handlers": handlers, "steps": steps}
    path = folder / "fault-matrix.json"
    path.write_text(json.dumps(doc, indent=1))
    return path


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    work = tmp_path_factory.mktemp("faults")
    try:
        a = FaultAgent(work, scenario(work), lib_mb=48)
    except SandboxUnavailable as e:
        pytest.skip(str(e))
    try:
        a.start()
        yield a
    finally:
        a.close()


_turn = iter(range(10**6))


def healthy(agent: FaultAgent, row) -> None:
    """The checks every case ends with (see the module docstring); the fabric's faults are cleared first."""
    agent.clear_faults()
    incarnation = agent.still_working(HEALTH_STEPS[next(_turn) % 2])
    agent.assert_contained()
    peaks = agent.peak_kb()
    row.note(f"then goal state {incarnation} processed; peak RSS daemon {peaks['daemon'] // 1024} MB, "
             f"child {peaks['child'] // 1024} MB")


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else text


# ------------------------------------------------------------------------------ fabric documents
GOAL_STATE_ERROR = r"ERROR ExtHandler ExtHandler Error fetching the goal state: (.*)"
XXE = ('<?xml version="1.0"?>\n<!DOCTYPE GoalState [<!ENTITY xxe SYSTEM "file:///etc/shadow">]>\n'
       "<GoalState><Version>&xxe;</Version></GoalState>")
LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
          + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
          + ']>\n<GoalState><Version>&lol9;</Version></GoalState>')


@pytest.mark.fault("XXE in the goal state")
def test_xxe(agent, row):
    mark = agent.mark()
    agent.fault("goalstate", body=XXE)
    line = agent.wait_log(GOAL_STATE_ERROR, mark)
    row.note(line.group(1))
    assert "root:" not in agent.log(mark)
    healthy(agent, row)


@pytest.mark.fault("billion laughs in the goal state")
def test_billion_laughs(agent, row):
    mark = agent.mark()
    agent.fault("goalstate", body=LAUGHS)
    row.note(agent.wait_log(GOAL_STATE_ERROR, mark).group(1))
    assert "lollollol" not in agent.log(mark)
    healthy(agent, row)


@pytest.mark.fault("garbage Certificates")
def test_garbage_certificates(agent, row):
    mark = agent.mark()
    agent.fault("certificates", body="MIIgarbage-not-a-cms-blob", count=2)
    agent.step(HEALTH_STEPS[next(_turn) % 2])  # a new incarnation fetches the Certificates document
    row.note(agent.wait_log(r"(?:ERROR|WARNING) .*[Cc]ertificate.*", mark).group(0).split(" ", 2)[-1])
    healthy(agent, row)


# ------------------------------------------------------------------------------ HTTP faults
TRANSIENT = [
    ("HTTP 500", {"status": 500}, r"\[HTTP Retry\] GET \S+comp=goalstate -- Status Code 500"),
    # a reset on a kept connection is replayed at once on a new one (RFC 9112 9.3.1), else retried
    ("connection reset", {"reset": True},
     r"GET \S+comp=goalstate(?: -- IOError .*reset|: the kept connection was closed by the server.*)"),
    ("HTTP 429 (throttled)", {"status": 429}, r"\[HTTP Retry\] GET \S+comp=goalstate -- Status Code 429"),
    ("HTTP 503 (throttled)", {"status": 503}, r"\[HTTP Retry\] GET \S+comp=goalstate -- Status Code 503"),
    ("HTTP 410 (goal state gone)", {"status": 410}, r"ResourceGone"),
    ("timeout (no answer for 11 s)", {"delay": 11.0}, r"\[HTTP (?:Retry|Failed)\] GET \S+comp=goalstate -- .*timed out"),
]


@pytest.mark.parametrize("what,spec,expected", [pytest.param(*t, marks=pytest.mark.fault(t[0]), id=t[0].split()[0]
                                                              + "-" + t[0].split()[1]) for t in TRANSIENT])
def test_http_fault_on_the_goal_state(agent, row, what, spec, expected):
    mark = agent.mark()
    agent.fault("goalstate", **spec)
    row.note(first_line(agent.wait_log(expected, mark, timeout=30).group(0)).split(" ", 2)[-1])
    healthy(agent, row)


@pytest.mark.fault("HostGAPlugin down")
def test_hostgaplugin_down(agent, row):
    mark = agent.mark()
    before = len([r for r in agent.requests() if r["kind"] == "status_blob"])
    for kind in ("hgap_status", "extension_artifact", "hgap_versions", "hgap_health"):
        agent.fault(kind, reset=True, count=0)
    agent.step(HEALTH_STEPS[next(_turn) % 2])
    # the status PUT to HostGAPlugin is retried with upstream's back-off (~30 s) before it goes to the blob
    agent.wait(lambda: len([r for r in agent.requests() if r["kind"] == "status_blob"]) > before, 60,
               "a status upload straight to the blob")
    line = agent.wait_log(r"\[HTTP Failed\] PUT \S+:32526/status -- .*", mark)
    row.note(first_line(line.group(0)).split(" ", 2)[-1] + "; then the status went straight to the blob")
    healthy(agent, row)


def _body_mode(mode: str):
    return pytest.mark.skipif(mode not in fabric_faults.BODY_MODES,
                              reason=f"the fabric's '{mode}' body fault lands with the HTTP stack branch")


def _body_fault(agent, row, body: str) -> None:
    """The goal state's body turned into ``body``: the agent names the cap it hit and stays healthy."""
    mark = agent.mark()
    agent.fault("goalstate", body=body)
    row.note(first_line(agent.wait_log(r"(?:ERROR|WARNING|HTTP).*(?:too large|cap|larger|exceed).*", mark, 60)
                        .group(0)).split(" ", 2)[-1])
    healthy(agent, row)


@_body_mode("huge")
@pytest.mark.fault("oversize body (200 MB goal state)")
def test_oversize_body(agent, row):
    _body_fault(agent, row, "huge")


@_body_mode("endless")
@pytest.mark.fault("endless chunked body")
def test_endless_body(agent, row):
    _body_fault(agent, row, "endless")


# ------------------------------------------------------------------------------ extension packages
PACKAGE_FAULTS = [
    ("zipslip", "zip-slip package (../ and absolute members)", r"outside the package directory|absolute path"),
    ("symlink", "symlink in a package", r"is a symbolic link"),
    ("bomb", "zip bomb (1 MB declaring 1.1 GiB)", r"unpacks to more than"),
    ("corrupt", "corrupt zip", r"[Cc]orrupt|BadZipFile|Bad CRC|not usable|Failed to unpack"),
]


@pytest.mark.parametrize("key,what,expected", [pytest.param(*t, marks=pytest.mark.fault(t[1]), id=t[0])
                                               for t in PACKAGE_FAULTS])
def test_hostile_package(agent, row, key, what, expected):
    mark = agent.mark()
    incarnation = agent.step(STEP[key])
    row.note(agent.wait_log(expected, mark, timeout=40).group(0))
    agent.wait(lambda: agent.processed(incarnation) and (agent.handler(HOSTILE[key]) or {}).get("status") == "NotReady",
               30, f"{HOSTILE[key]} reported NotReady")
    row.note(f"handler NotReady: {(agent.handler(HOSTILE[key]) or {}).get('formattedMessage', {}).get('message', '')}")
    assert not agent.sb.host_path("/fault-matrix-executed").exists()
    healthy(agent, row)


# ------------------------------------------------------------------------------ handlers
@pytest.mark.fault("forking handler (enable leaves daemons)")
def test_forking_handler(agent, row):
    t0 = time.monotonic()
    incarnation = agent.step(STEP["forking"])
    agent.wait(lambda: agent.processed(incarnation) and (agent.handler(FORKING) or {}).get("status") == "Ready", 30,
               f"{FORKING} enabled")
    row.note(f"enable returned and was reported in {time.monotonic() - t0:.1f} s with its daemons still running")
    agent.sb.run(["pkill", "-f", "^sleep 600$"], check=False)
    healthy(agent, row)


@pytest.mark.fault("hung handler (enable never returns)")
def test_hung_handler(agent, row):
    mark = agent.mark()
    agent.step(STEP["hung"])
    agent.wait_log(r"Executing command: \S+Fabric\.Faults\.Hung-1\.0\.0/bin/ext\.sh enable", mark)
    time.sleep(3)
    assert agent.daemon_pid() and agent.child(), "the agent died while a command hung"
    # The loop waits for the command (enable's timeout is 300 s, as upstream); its end, however it comes,
    # is reported and the loop goes on. The timeout itself is tests/unit (runner) territory.
    agent.sb.run(["pkill", "-KILL", "-f", "^sleep 100000$"], check=False)
    line = agent.wait_log(r"ERROR .*Fabric\.Faults\.Hung.*(?:Non-zero exit code|failed).*", mark)
    row.note("agent alive while it hung; ended from outside after 3 s: " + line.group(0).split(" ", 2)[-1])
    healthy(agent, row)


@pytest.mark.fault("SIGKILL of the child mid-install (W3: no overlap)")
def test_sigkill_child_mid_install_never_runs_two_installs(agent, row):
    record = "/var/log/azure/Fabric.Faults.Slow/installs.log"
    mark = agent.mark()
    child = agent.child()
    agent.step(STEP["slow"])
    agent.wait(lambda: "start" in (agent.text(record) or ""), 30, "the slow install to start")
    time.sleep(1)
    agent.sb.run(["kill", "-KILL", str(child)])
    agent.wait(lambda: agent.child() not in (None, child), 20, "a new ext-handler child")
    agent.wait(lambda: (agent.text(record) or "").count("end") >= 2, 40, "both installs to end")
    runs: dict = {}
    for word, stamp, pid in (line.split() for line in (agent.text(record) or "").splitlines()):
        runs.setdefault(pid, {})[word] = float(stamp)
    spans = sorted((r["start"], r["end"]) for r in runs.values())
    assert len(spans) == 2, runs
    (s1, e1), (s2, e2) = spans
    row.note(f"install 1 {s1 - s1:.1f}-{e1 - s1:.1f} s (orphaned), install 2 {s2 - s1:.1f}-{e2 - s1:.1f} s")
    assert s2 >= e1, f"the two installs overlapped: {spans}"
    line = agent.wait_log(r"Waiting for the extension command left by a previous ext-handler.*", mark)
    row.note(line.group(0).split(" ", 2)[-1])
    healthy(agent, row)


@pytest.mark.fault("disk full on a new sequence number (W2)")
def test_disk_full_is_reported_retried_and_recovers(agent, row):
    mark = agent.mark()
    # Full, and kept full: whatever the agent frees (events sent, history purged) is taken again at once.
    filler = agent.sb.spawn(["sh", "-c", "while :; do cat /dev/zero >> /var/lib/waagent/fault-filler 2>/dev/null; "
                                         "sleep 0.05; done"])
    agent.wait(lambda: "0%" in agent.sb.run(["df", "--output=avail,pcent", "/var/lib/waagent"]).stdout.split()[-1]
               or agent.sb.run(["df", "--output=avail", "/var/lib/waagent"]).stdout.split()[-1] == "0", 10,
               "/var/lib/waagent to be full")
    incarnation = agent.step(STEP["w2"])

    def reported() -> bool:
        h = agent.handler(SAMPLE) or {}
        settings = find_key(h, "settingsStatus")
        return (h.get("status") == "NotReady" and "disk is full" in json.dumps(h)
                and bool(settings) and settings[0]["status"]["status"] == "error"
                and find_key(h, "sequenceNumber") == [W2_SEQ])

    agent.wait(reported, 30, "the disk-full failure in the uploaded status")
    line = agent.wait_log(r"ERROR .*\[GuestAgent\.Fabric\.Sample\] The disk is full.*", mark)
    row.note("status: handler NotReady, extension error; log: " + line.group(0).split(" ", 2)[-1][:90])
    agent.wait_log(r"processed again in \d+ s", mark)
    filler.kill()
    filler.wait(5)
    agent.sb.run(["rm", "-f", "/var/lib/waagent/fault-filler"])
    agent.wait(lambda: (agent.handler(SAMPLE) or {}).get("status") == "Ready" and agent.processed(incarnation)
               and "success" in json.dumps(find_key(agent.handler(SAMPLE), "settingsStatus")), 40,
               "the retry to succeed once there is space")
    agent.wait(lambda: any(e.get("Operation") == "ExtensionProcessing" and "disk is full" in str(e.get("Message"))
                           for e in agent.events()), 20, "the disk-full event")
    settings = agent.text(f"/var/lib/waagent/{SAMPLE}-1.0.0/config/{W2_SEQ}.settings") or ""
    assert json.loads(settings)["runtimeSettings"][0]["handlerSettings"]["publicSettings"] == {"message": f"seq {W2_SEQ}"}
    row.note("event sent once there was space; retried and enabled")
    healthy(agent, row)


@_body_mode("trickle")
@pytest.mark.fault("trickled body (1 byte/s)")
def test_trickled_body(agent, row):
    mark = agent.mark()
    t0 = time.monotonic()
    agent.fault("goalstate", body="trickle")
    line = agent.wait_log(r"\[HTTP (?:Retry|Failed)\] GET \S+comp=goalstate -- .*", mark, timeout=90)
    row.note(f"given up after {time.monotonic() - t0:.0f} s: {first_line(line.group(0)).split(' ', 2)[-1]}")
    healthy(agent, row)


# ------------------------------------------------------------------------------ hostile names (edge validation)
def refused(agent: FaultAgent, row, step: int, outside: str) -> None:
    mark = agent.mark()
    incarnation = agent.step(step)
    agent.wait(lambda: agent.processed(incarnation) or agent.processed(incarnation, "Failed"), 30,
               f"goal state {incarnation} processed")
    assert not agent.sb.host_path(outside).exists(), f"{outside} was written"
    line = re.search(r"ERROR .*(?:invalid|Invalid|refus|Refus).*", agent.log(mark))
    assert line, "no error names the refused item"
    row.note(line.group(0).split(" ", 2)[-1])
    healthy(agent, row)


@pytest.mark.fault("D1 handler name with ../")
def test_hostile_handler_name(agent, row):
    refused(agent, row, STEP["d1"], "/tmp/fault-d1-1.0.0")


@pytest.mark.fault("D2 multi-config extension name with ../")
def test_hostile_extension_name(agent, row):
    refused(agent, row, STEP["d2"], "/tmp/fault-d2.0.settings")


@pytest.mark.fault("D5 20 000 plugins in ExtensionsConfig")
def test_huge_plugin_list(agent, row):
    t0 = time.monotonic()
    incarnation = agent.step(STEP["d5"])
    # 11-19 s on 2 quiet cores, over 30 s under heavy load; the quadratic parse took 99 s of CPU for the
    # parse alone. Linearity itself is asserted by bench/test_bench.py (a ratio, not a wall clock).
    agent.wait(lambda: agent.processed(incarnation), 75, "20 000 plugins processed within 75 s")
    row.note(f"processed in {time.monotonic() - t0:.1f} s")
    healthy(agent, row)
