"""`guestagent doctor` end to end: the real daemon and ext-handler in a sandbox against the fabric; the
doctor runs inside the sandbox (its requests go to the fabric on the sandbox's loopback) and must print
a clean report on the healthy VM, then name the exact problem for each fault the lab injects: every
Guest Proxy Agent failure shape, a missing firewall rule, a stale status (the ext-handler frozen), an
unreachable WireServer. Also: the KVP provisioning report read back from the pool file, and the
monitor's GPA health line and event. One sandbox, one daemon, the faults in turn (~40 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Optional

import pytest

from guestagent.lab import doctorfaults
from guestagent.lab import main as lab
from guestagent.lab.doctorfaults import GPA_SHAPES, shape
from guestagent.lab.sandbox import interpreter, project_root
from guestagent.osutil import gpa, kvp
from tests.sandbox.agentlab import Agent

pytestmark = pytest.mark.sandbox


def doctor(agent: Agent, fault: Optional[str] = None) -> tuple[int, dict]:
    """Inject ``fault`` as the lab does and run the doctor inside: (exit code, its --json document)."""
    code, out = doctorfaults.run_doctor(agent.sb, interpreter(), fault, lab.WIRE_HOST, lab.firewall_tool(),
                                        json_output=True)
    assert code in (0, 1), out
    doc = json.loads(out)
    print(fault, json.dumps([f for f in doc["findings"] if f["level"] != "ok"], indent=1))
    return code, doc


def assert_named(agent: Agent, fault: str) -> dict:
    """The doctor names ``fault`` on its check's line (exit 1 unless the fault is the healthy GPA)."""
    check, fragment = doctorfaults.expected(fault)
    code, doc = doctor(agent, fault)
    assert code == 1 or fault == "gpa-healthy"
    f = finding(doc, check)
    assert fragment in f["found"] + f["why"] + f["todo"], (fault, f)
    assert (f["level"] == "ok") == (fault == "gpa-healthy"), (fault, f)
    return doc


def finding(doc: dict, check: str) -> dict:
    found = [f for f in doc["findings"] if f["check"] == check]
    assert found, f"no {check} in {[f['check'] for f in doc['findings']]}"
    return found[0]


def problems(doc: dict) -> list[str]:
    return [f"{f['check']}: {f['found']}" for f in doc["findings"] if f["level"] in ("warn", "fail")]


def test_doctor_clean_then_names_each_injected_fault(agent):
    sb = agent.sb
    sb.run(["mkdir", "-p", "/var/lib/hyperv"])  # hv_kvp_daemon's folder: the agent reports there
    sb.write_file(gpa.STATUS_FILE, shape("gpa-key-latch").text)  # the GPA is failing when the agent starts
    _daemon, child = agent.start()

    # the monitor saw the GPA's health at its first pass: one line, one event, with the component
    agent.wait_log(r"Guest Proxy Agent is unhealthy: proxyAgentStatus ERROR; keyLatchStatus STOPPED")
    agent.wait(lambda: agent.event("GuestProxyAgentHealth", "keyLatchStatus STOPPED", success=False), 20,
               "the GPA health event")

    # KVP: the provisioning report, read back from the pool file
    records = kvp.decode_records(sb.host_path(kvp.POOL_FILE).read_bytes())
    (key, value), = records
    assert key == kvp.REPORT_KEY and value.startswith("result=success|agent=WALinuxAgent/2.15.0.1|timestamp=")

    # each GPA shape → its check and remedy
    for s in GPA_SHAPES:
        assert_named(agent, s.name)
    sb.run(["rm", "-rf", gpa.LOG_DIR])

    # healthy: a clean report, exit 0
    code, doc = doctor(agent)
    assert code == 0 and not problems(doc), problems(doc)
    for check in ("processes", "endpoint", "hostgaplugin", "clock", "firewall", "goal-state", "status",
                  "provisioning.marker"):
        assert finding(doc, check)["level"] == "ok", (check, doc)

    if lab.firewall_tool() is not None:
        doc = assert_named(agent, "firewall-rule")
        assert finding(doc, "firewall")["level"] == "fail"
    doc = assert_named(agent, "stale-status")
    assert f"ext-handler: pid {child} is stopped" in finding(doc, "processes")["found"]
    doc = assert_named(agent, "unreachable")
    assert f"WireServer {lab.WIRE_HOST} unreachable" in finding(doc, "endpoint")["found"]
    assert finding(doc, "clock")["level"] == "skip"


def test_lab_runs_the_doctor_after_a_fault():
    """`guestagent lab --fault NAME`: the lab's own run, then the doctor's report naming the fault."""
    env = dict(os.environ, PYTHONPATH=str(project_root()))
    res = subprocess.run([sys.executable, "-m", "guestagent.tools", "lab", "--until", "status", "--resource-disk-mb",
                          "0", "--timeout", "120", "--fault", "gpa-key-latch"], capture_output=True, text=True,
                         timeout=300, env=env, check=False)
    print(res.stdout[-4000:], res.stderr[-2000:])
    assert res.returncode == 0, res.stdout[-3000:]
    assert "guestagent doctor after fault 'gpa-key-latch' (exit 1):" in res.stdout
    assert "[FAIL] gpa.keyLatchStatus: STOPPED: Failed to acquire key" in res.stdout
    assert "lab success: status reached; doctor exit 1" in res.stdout
