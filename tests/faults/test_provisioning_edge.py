"""Fault-matrix row D6 in its own sandbox (provisioning happens once per VM): an ovf-env UserName of
``../x``: refused at the edge (ProvisioningFailed with a description, no user, no home outside /home).
Before the edge-validation branch the VM reported Ready with a home /x (a strict xfail until it merged)."""

from __future__ import annotations

import json

import pytest
from faultlab import FaultAgent

from guestagent.lab.sandbox import SandboxUnavailable
from tests.sandbox.agentlab import FABRIC_STATE


@pytest.mark.fault("D6 ovf-env UserName ../x")
def test_hostile_username_is_refused(tmp_path, row):
    doc = {"name": "fault-d6", "ovf": {"username": "../x", "password": "Fabric-Passw0rd!",
                                       "disable_ssh_password_auth": False}, "steps": [{"extensions": []}]}
    path = tmp_path / "d6.json"
    path.write_text(json.dumps(doc))
    try:
        agent = FaultAgent(tmp_path, path)
    except SandboxUnavailable as e:
        pytest.skip(str(e))
    try:
        agent.baseline = agent.sb.snapshot()
        agent.tmp_baseline = agent.tmp_entries()
        agent.lab._start_daemon(agent.sb)

        def health() -> list:
            text = agent.text(f"{FABRIC_STATE}/health.jsonl") or ""
            return [json.loads(line) for line in text.splitlines() if line.strip()]

        def final() -> dict:
            return next((r for r in health() if r.get("state") == "Ready" or "Failed" in str(r.get("substatus"))),
                        {})

        report = agent.wait(final, 60, "the provisioning outcome in a health report")
        row.note(f"health {report.get('state')} {report.get('substatus') or ''}")
        assert report.get("state") == "NotReady", report
        assert not agent.sb.host_path("/x").exists(), "a home /x was made"
        passwd = agent.sb.read_text("/etc/passwd")
        assert "\n../x:" not in "\n" + passwd and "\nx:" not in "\n" + passwd
        assert "ProvisioningFailed" in json.dumps(report)
    finally:
        agent.close()
