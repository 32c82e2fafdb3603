"""Extension governance against the fabric over loopback (issue 15): the policy allow-list (allowed,
disallowed, invalid policy, a dependent of a disallowed extension) and package signatures (the fabric signs
the packages it serves under its own root, trusted here through the test-only setting): valid, tampered,
wrong signer, unsigned, signingInfo mismatch — warned about as upstream 2.15 does, and enforced when the
policy says signatureRequired."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import pytest

import guestagent.protocol.wire
from guestagent.conf import Config
from guestagent.exthandler.extensions import signing
from guestagent.exthandler.extensions.manager import ExtensionsManager
from guestagent.fabric.scenario import parse_scenario
from guestagent.fabric.server import Fabric
from guestagent.protocol.status import build_vm_status
from guestagent.protocol.wire import WireProtocol

SAMPLE = Path(__file__).resolve().parents[2] / "guestagent" / "fabric" / "scenarios" / "handlers" / "sample"
NAME, OTHER = "GuestAgent.Fabric.Sample", "GuestAgent.Fabric.Other"


def signed_handler(tmp_path: Path, publisher: str = "GuestAgent.Fabric", version: str = "1.0.0") -> Path:
    """The sample handler whose HandlerManifest carries ``signingInfo``."""
    folder = tmp_path / f"handler-{publisher}-{version}"
    shutil.copytree(SAMPLE, folder)
    manifest = json.loads((folder / "HandlerManifest.json").read_text())
    manifest[0]["signingInfo"] = {"type": "Sample", "publisher": publisher, "version": version}
    (folder / "HandlerManifest.json").write_text(json.dumps(manifest))
    return folder


class Run:
    """One goal state processed by the extensions manager against a fabric playing ``extensions``."""

    def __init__(self, tmp_path: Path, monkeypatch, extensions: list, *, policy: Optional[object] = None,
                 conf: Optional[dict] = None, handlers: Optional[list] = None):
        monkeypatch.setattr(guestagent.protocol.wire, "_direct_is_primary", True)
        self.lib = str(tmp_path / "lib")
        os.makedirs(self.lib)
        handlers = handlers or [{"name": n, "version": "1.0.0", "path": str(SAMPLE)} for n in (NAME, OTHER)]
        scenario = parse_scenario({"name": "governance", "handlers": handlers, "steps": [{"extensions": extensions}]},
                                  base_dir=tmp_path)
        values = {"Lib.Dir": self.lib, **(conf or {})}
        if policy is not None:
            path = tmp_path / "waagent_policy.json"
            path.write_text(policy if isinstance(policy, str) else json.dumps(policy))
            values.update({"Debug.EnableExtensionPolicy": "y", "Policy.PolicyFilePath": str(path)})
        with Fabric(scenario, state_dir=tmp_path / "fabric") as fab:
            monkeypatch.setenv(signing.TEST_ROOT_ENV, str(tmp_path / "fabric" / "signing-root.pem"))
            protocol = WireProtocol("127.0.0.1", self.lib, wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                                    sleep=lambda s: None)
            manager = ExtensionsManager(Config(values), protocol, log_root=str(tmp_path / "log"),
                                        event=lambda *a, **k: None, dependency_poll=0.05)
            gs = protocol.update_goal_state()
            manager.process(gs)
            self.history = protocol.history.current
            protocol.upload_status(build_vm_status(Config(), gs, manager.handler_statuses(),
                                                   goal_state_status=manager.goal_state_status(), computer_name="vm",
                                                   os_name="linux", os_version="0"))
            self.status = fab.status_blob

    def handler(self, name: str) -> dict:
        return next(h for h in self.status["aggregateStatus"]["handlerAggregateStatus"] if h["handlerName"] == name)

    def ran(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.lib, f"{name}-1.0.0", "operations.log"))

    def events(self, op: str) -> list:
        folder = os.path.join(self.lib, "events")
        out = []
        for entry in sorted(os.listdir(folder)):
            params = {p["name"]: p["value"] for p in json.load(open(os.path.join(folder, entry)))["parameters"]}
            if params["Operation"] == op:
                out.append(params)
        return out


def ext(name: str = NAME, **kw) -> dict:
    return {"name": name, "version": "1.0.0", "seqNo": 0, "settings": {"n": 1}, **kw}


ALLOW_OTHER = {"policyVersion": "0.1.0", "extensionPolicies": {"allowListedExtensionsOnly": True,
                                                                "extensions": {OTHER.lower(): {}}}}


def test_an_allow_listed_extension_runs_and_the_policy_is_kept_in_the_history(tmp_path, monkeypatch):
    run = Run(tmp_path, monkeypatch, [ext(OTHER)], policy=ALLOW_OTHER)
    assert run.handler(OTHER)["status"] == "Ready" and run.ran(OTHER)
    assert json.load(open(os.path.join(run.history, "waagent_policy.json"))) == ALLOW_OTHER
    assert [e["Message"] for e in run.events("Policy")][:1] == ["Policy enforcement is enabled."]


def test_a_disallowed_extension_is_not_run_and_gets_a_terminal_error(tmp_path, monkeypatch):
    run = Run(tmp_path, monkeypatch, [ext(NAME), ext(OTHER)], policy=ALLOW_OTHER)
    h = run.handler(NAME)
    msg = (f"Extension will not be processed: failed to run extension '{NAME}' because it is not specified as an "
           f"allowed extension. To run, add the extension to the list of allowed extensions in the policy file "
           f"('{tmp_path / 'waagent_policy.json'}').")
    assert (h["status"], h["code"], h["formattedMessage"]["message"]) == ("NotReady", 1009, msg)
    st = h["runtimeSettingsStatus"]["settingsStatus"]["status"]
    assert (st["status"], st["code"], st["operation"], st["name"]) == ("error", 1009, None, NAME)
    assert not run.ran(NAME) and run.ran(OTHER)
    event = run.events("ExtensionPolicy")[0]
    assert (event["Name"], event["OperationSuccess"], event["Message"]) == (NAME, False, msg)


def test_an_invalid_policy_blocks_every_extension(tmp_path, monkeypatch):
    bad = {"policyVersion": "0.1.0", "extensionPolicies": {"allowListedExtensionOnly": True}}
    run = Run(tmp_path, monkeypatch, [ext(NAME), ext(OTHER)], policy=bad)
    for name in (NAME, OTHER):
        h = run.handler(name)
        assert h["status"] == "NotReady" and h["code"] == 1009 and not run.ran(name)
        assert h["formattedMessage"]["message"] == (
            f"Extension will not be processed: [InvalidPolicyError] Customer-provided policy file "
            f"('{tmp_path / 'waagent_policy.json'}') is invalid, please correct the following error: unrecognized "
            "attribute 'allowListedExtensionOnly' in extensionPolicies")
    assert len(run.events("ExtensionPolicy")) == 2


def test_a_dependent_of_a_disallowed_extension_is_blocked(tmp_path, monkeypatch):
    run = Run(tmp_path, monkeypatch, [ext(NAME, dependency_level=1),
                                      ext(OTHER, dependency_level=2, depends_on=[{"handler": NAME}])],
              policy=ALLOW_OTHER)
    assert run.handler(NAME)["code"] == 1009
    h = run.handler(OTHER)
    assert h["status"] == "NotReady" and not run.ran(OTHER) and not run.ran(NAME)
    assert h["formattedMessage"]["message"] == (
        f"Skipping processing of extensions since execution of dependent extension {NAME} failed")


REQUIRE = {"policyVersion": "0.1.0", "extensionPolicies": {"signatureRequired": True}}


@pytest.mark.parametrize("mode, publisher, reason", [
    ("valid", "GuestAgent.Fabric", None),
    ("tampered", "GuestAgent.Fabric", "message digest mismatch"),
    ("wrong_signer", "GuestAgent.Fabric", "does not chain to the trusted root"),
    (None, "GuestAgent.Fabric", "the goal state has no signature for the package"),
    ("valid", "Someone.Else", "expected extension publisher 'GuestAgent.Fabric' does not match downloaded package "
                              "publisher 'Someone.Else'"),
])
def test_signature_required_by_the_policy(tmp_path, monkeypatch, mode, publisher, reason):
    handlers = [{"name": NAME, "version": "1.0.0", "path": str(signed_handler(tmp_path, publisher))}]
    run = Run(tmp_path, monkeypatch, [ext(NAME, **({"signature": mode} if mode else {}))], policy=REQUIRE,
              handlers=handlers)
    h = run.handler(NAME)
    validated = os.path.exists(os.path.join(run.lib, f"{NAME}-1.0.0", signing.VALIDATED_FILE))
    assert [e["OperationSuccess"] for e in run.events("ExtensionSigned")] == [mode is not None]
    if reason is None:
        assert h["status"] == "Ready" and run.ran(NAME) and validated
        assert [e["OperationSuccess"] for e in run.events("PackageSignatureResult")] == [True]
        assert [e["OperationSuccess"] for e in run.events("PackageSigningInfoResult")] == [True]
        return
    assert h["status"] == "NotReady" and h["code"] == 1009 and not run.ran(NAME) and not validated
    assert reason in h["formattedMessage"]["message"]
    assert h["formattedMessage"]["message"].startswith(
        f"Extension will not be processed: the extension policy ('{tmp_path / 'waagent_policy.json'}') requires a "
        f"valid signature for '{NAME}'")
    assert h["runtimeSettingsStatus"]["settingsStatus"]["status"]["status"] == "error"
    assert not os.path.exists(os.path.join(run.lib, f"{NAME}__1.0.0.zip"))


def test_without_the_policy_a_bad_signature_is_only_a_warning_as_in_2_15(tmp_path, monkeypatch):
    handlers = [{"name": NAME, "version": "1.0.0", "path": str(signed_handler(tmp_path))}]
    run = Run(tmp_path, monkeypatch, [ext(NAME, signature="tampered")], handlers=handlers,
              conf={"Debug.EnableSignatureValidation": "y"})
    assert run.handler(NAME)["status"] == "Ready" and run.ran(NAME)
    [result] = run.events("PackageSignatureResult")
    assert result["OperationSuccess"] is False and result["Message"].startswith(
        f"[WARNING] Signature validation failed for package '{NAME}-1.0.0'")
    assert result["Message"].endswith("This failure can be safely ignored; will continue processing the package.")
    messages = [e["Message"] for e in run.events("SignatureValidation")]
    assert messages[0] == f"Validating signature for package '{NAME}-1.0.0'"
    assert messages[1].startswith("Package encoded signature: '")
    assert not os.path.exists(os.path.join(run.lib, f"{NAME}-1.0.0", signing.VALIDATED_FILE))


def test_validation_off_checks_nothing(tmp_path, monkeypatch):
    run = Run(tmp_path, monkeypatch, [ext(NAME, signature="wrong_signer")])
    assert run.handler(NAME)["status"] == "Ready"
    assert run.events("PackageSignatureResult") == [] and [e["OperationSuccess"]
                                                            for e in run.events("ExtensionSigned")] == [True]
