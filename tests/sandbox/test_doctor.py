"""`guestagent doctor` end to end: the real daemon and ext-handler in a sandbox against the fabric; the
doctor runs inside the sandbox (its requests go to the fabric on the sandbox's loopback) and must print
a clean report on the healthy VM, then name the exact problem for each fault the lab injects: every
Guest Proxy Agent failure shape, a missing firewall rule, a stale status (the ext-handler frozen), an
unreachable WireServer. Also: the KVP provisioning report read back from the pool file, and the
monitor's GPA health line and event. One sandbox, one daemon, the faults in turn (~40 s)."""

from __future__ import annotations

import json
import time

import pytest

from guestagent.lab import main as lab
from guestagent.lab.doctorfaults import GPA_SHAPES, shape
from guestagent.lab.sandbox import SandboxUnavailable, interpreter
from guestagent.osutil import gpa, kvp
from tests.sandbox.test_daemon import Agent

pytestmark = pytest.mark.sandbox


def doctor(agent: Agent, *args: str) -> tuple[int, dict, str]:
    """Run the doctor inside: (exit code, --json document, text report)."""
    res = agent.sb.run([interpreter(), "-m", "guestagent.tools", "doctor", "--json", *args], check=False, timeout=60)
    text = agent.sb.run([interpreter(), "-m", "guestagent.tools", "doctor", *args], check=False, timeout=60).stdout
    print(text)
    assert res.returncode in (0, 1), res.stderr
    return res.returncode, json.loads(res.stdout), text


def finding(doc: dict, check: str) -> dict:
    found = [f for f in doc["findings"] if f["check"] == check]
    assert found, f"no {check} in {[f['check'] for f in doc['findings']]}"
    return found[0]


def problems(doc: dict) -> list[str]:
    return [f"{f['check']}: {f['found']}" for f in doc["findings"] if f["level"] in ("warn", "fail")]


@pytest.fixture
def agent(tmp_path):
    try:
        a = Agent(tmp_path)
    except SandboxUnavailable as e:
        pytest.skip(str(e))
    try:
        yield a
    finally:
        a.close()


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
        sb.write_file(gpa.STATUS_FILE, s.text)
        code, doc, _ = doctor(agent)
        f = finding(doc, s.check)
        assert s.expect in f["found"] + f["why"] + f["todo"], (s.name, f)
        assert (f["level"] == "ok") == (s.name == "gpa-healthy")
    sb.run(["rm", "-rf", gpa.LOG_DIR])

    # healthy: a clean report, exit 0
    code, doc, text = doctor(agent)
    assert code == 0 and not problems(doc), text
    for check in ("processes", "endpoint", "hostgaplugin", "clock", "firewall", "goal-state", "status",
                  "provisioning.marker"):
        assert finding(doc, check)["level"] == "ok", (check, text)
    assert "no problems found" in text

    # a missing firewall rule
    if lab.firewall_tool() == "iptables":
        sb.run(["iptables", "-t", "security", "-D", "OUTPUT", "-d", f"{lab.WIRE_HOST}/32", "-p", "tcp", "-m",
                "conntrack", "--ctstate", "INVALID,NEW", "-j", "DROP", "-w"])
        code, doc, _ = doctor(agent)
        f = finding(doc, "firewall")
        assert code == 1 and f["level"] == "fail" and "WireServer rules incomplete" in f["found"] and "DROP" in f["found"]
    elif lab.firewall_tool() == "nft":
        sb.run(["nft", "delete", "table", "ip", "walinuxagent"])
        code, doc, _ = doctor(agent)
        assert code == 1 and "no nft rules" in finding(doc, "firewall")["found"]

    # a stale status: the ext-handler frozen
    agent.kill(child, "STOP")
    try:
        time.sleep(3)
        code, doc, _ = doctor(agent, "--stale-after", "2")
        assert code == 1
        assert finding(doc, "status")["level"] == "fail" and "stale after 2 s" in finding(doc, "status")["found"]
        assert f"ext-handler: pid {child} is stopped" in finding(doc, "processes")["found"]
    finally:
        agent.kill(child, "CONT")

    # an unreachable WireServer (the fabric resets every versions call)
    agent.fabric("POST", "faults", {"kind": "versions", "reset": True, "count": 0})
    code, doc, _ = doctor(agent)
    f = finding(doc, "endpoint")
    assert code == 1 and f["level"] == "fail" and f"WireServer {lab.WIRE_HOST} unreachable" in f["found"]
    assert finding(doc, "clock")["level"] == "skip"
