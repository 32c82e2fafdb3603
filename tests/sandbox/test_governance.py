"""Extension governance with the real ``waagent -daemon`` and its ext-handler against the fabric in a namespace
sandbox (issue 15): the policy at /etc/waagent_policy.json allows one extension, disallows another (error
status, ExtensionPolicy event, no command run) and so blocks its dependent; an invalid policy blocks all;
with ``signatureRequired`` the fabric-signed package runs and a tampered or unsigned one does not. The
agent trusts the fabric's signing root only through the test-only GUESTAGENT_TEST_SIGNING_ROOT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from guestagent.exthandler.extensions import signing
from guestagent.lab.sandbox import SandboxUnavailable
from tests.sandbox.agentlab import FABRIC_STATE, LIB, Agent

pytestmark = pytest.mark.sandbox

SAMPLE = Path(__file__).resolve().parents[2] / "guestagent" / "fabric" / "scenarios" / "handlers" / "sample"
ALLOWED, DISALLOWED, DEPENDENT = "Gov.Policy.Allowed", "Gov.Policy.Disallowed", "Gov.Policy.Dependent"
SIGNED, TAMPERED, UNSIGNED = "Gov.Signed.Valid", "Gov.Signed.Tampered", "Gov.Signed.Unsigned"
POLICY_FILE = "/etc/waagent_policy.json"


def _handler(workdir: Path, name: str) -> str:
    """The sample handler, its manifest's signingInfo naming ``name`` 1.0.0."""
    folder = workdir / "handlers" / name
    shutil.copytree(SAMPLE, folder)
    manifest = json.loads((folder / "HandlerManifest.json").read_text())
    publisher, kind = name.rsplit(".", 1)
    manifest[0]["signingInfo"] = {"type": kind, "publisher": publisher, "version": "1.0.0"}
    (folder / "HandlerManifest.json").write_text(json.dumps(manifest))
    return str(folder)


def _scenario(workdir: Path, extensions: list) -> str:
    names = [e["name"] for e in extensions]
    doc = {"name": "governance", "handlers": [{"name": n, "version": "1.0.0", "path": _handler(workdir, n)}
                                              for n in names],
           "steps": [{"extensions": [{"version": "1.0.0", "seqNo": 0, "settings": {"n": 1}, **e}
                                     for e in extensions]}]}
    path = workdir / "governance.json"
    path.write_text(json.dumps(doc))
    return str(path)


def _run(workdir: Path, extensions: list, policy: str, conf: dict) -> Agent:
    try:
        agent = Agent(workdir, {"Debug.EnableExtensionPolicy": "y", **conf}, scenario=_scenario(workdir, extensions))
    except SandboxUnavailable as e:
        pytest.skip(str(e))
    agent.sb.write_file(POLICY_FILE, policy)
    agent.lab.daemon_env[signing.TEST_ROOT_ENV] = f"{FABRIC_STATE}/signing-root.pem"
    agent.start_daemon()
    return agent


def _handlers(agent: Agent, names: list) -> dict:
    def terminal():
        found = {h["handlerName"]: h for h in agent.status().get("aggregateStatus", {}).get("handlerAggregateStatus", [])}
        done = all(n in found and (found[n]["status"] == "NotReady" or ("runtimeSettingsStatus" in found[n] and
                                   found[n]["runtimeSettingsStatus"]["settingsStatus"]["status"]["status"]
                                   in ("success", "error"))) for n in names)
        return found if done else None

    return agent.wait(terminal, 120, f"terminal statuses of {names}")


def _ran(agent: Agent, name: str) -> bool:
    return agent.text(f"{LIB}/{name}-1.0.0/operations.log") is not None


def test_policy_allows_disallows_and_blocks_the_dependent(tmp_path):
    policy = {"policyVersion": "0.1.0", "extensionPolicies": {
        "allowListedExtensionsOnly": True, "extensions": {ALLOWED.upper(): {}, DEPENDENT: {}}}}
    agent = _run(tmp_path, [{"name": ALLOWED}, {"name": DISALLOWED, "dependency_level": 1},
                            {"name": DEPENDENT, "dependency_level": 2, "depends_on": [{"handler": DISALLOWED}]}],
                 json.dumps(policy), {})
    try:
        found = _handlers(agent, [ALLOWED, DISALLOWED, DEPENDENT])
        assert found[ALLOWED]["status"] == "Ready" and _ran(agent, ALLOWED)
        bad = found[DISALLOWED]
        assert (bad["status"], bad["code"]) == ("NotReady", 1009)
        assert bad["formattedMessage"]["message"].startswith(
            f"Extension will not be processed: failed to run extension '{DISALLOWED}' because it is not specified as "
            f"an allowed extension.")
        assert bad["runtimeSettingsStatus"]["settingsStatus"]["status"]["status"] == "error"
        assert not _ran(agent, DISALLOWED) and agent.text(f"/var/log/azure/{DISALLOWED}/CommandExecution.log") is None
        assert agent.event("ExtensionPolicy", f"failed to run extension '{DISALLOWED}'", success=False)
        assert found[DEPENDENT]["formattedMessage"]["message"] == (
            f"Skipping processing of extensions since execution of dependent extension {DISALLOWED} failed")
        assert not _ran(agent, DEPENDENT)
        history = list(agent.sb.host_path(f"{LIB}/history").glob("*/waagent_policy.json"))
        assert history and json.loads(history[0].read_text()) == policy
        assert "Policy enforcement is enabled." in agent.log()
    finally:
        agent.close()


def test_an_invalid_policy_blocks_every_extension(tmp_path):
    agent = _run(tmp_path, [{"name": ALLOWED}, {"name": DISALLOWED}], '{"policyVersion": "0.2.0"}', {})
    try:
        found = _handlers(agent, [ALLOWED, DISALLOWED])
        for name in (ALLOWED, DISALLOWED):
            assert found[name]["status"] == "NotReady" and not _ran(agent, name)
            assert "[InvalidPolicyError]" in found[name]["formattedMessage"]["message"]
            assert "policy version '0.2.0' is not supported" in found[name]["formattedMessage"]["message"]
    finally:
        agent.close()


def test_signature_required_runs_only_the_validly_signed_package(tmp_path):
    policy = {"policyVersion": "0.1.0", "extensionPolicies": {"signatureRequired": True}}
    agent = _run(tmp_path, [{"name": SIGNED, "signature": "valid"}, {"name": TAMPERED, "signature": "tampered"},
                            {"name": UNSIGNED}], json.dumps(policy), {})
    try:
        found = _handlers(agent, [SIGNED, TAMPERED, UNSIGNED])
        assert found[SIGNED]["status"] == "Ready" and _ran(agent, SIGNED)
        assert agent.text(f"{LIB}/{SIGNED}-1.0.0/package_validated") is not None
        for name, reason in ((TAMPERED, "message digest mismatch"),
                             (UNSIGNED, "the goal state has no signature for the package")):
            h = found[name]
            assert h["status"] == "NotReady" and h["code"] == 1009 and not _ran(agent, name)
            assert reason in h["formattedMessage"]["message"]
        assert agent.text(f"{LIB}/microsoft_root_certificate.pem").startswith("-----BEGIN CERTIFICATE-----")
        assert agent.event("PackageSignatureResult", f"Successfully validated signature for package '{SIGNED}-1.0.0'")
        assert agent.event("ExtensionSigned", "", success=False) and agent.event("ExtensionSigned", "", success=True)
    finally:
        agent.close()
