"""The extension policy file (upstream 2.15 ga/policy/policy_engine.py): schema 0.1.0, its errors word for word,
defaults, case-folded names, and when enforcement is on."""

from __future__ import annotations

import json

import pytest

from guestagent.conf import Config
from guestagent.exthandler.extensions import policy
from guestagent.exthandler.extensions.policy import InvalidPolicyError, PolicyEngine, parse

PATH = "/etc/waagent_policy.json"
PREFIX = f"[InvalidPolicyError] Customer-provided policy file ('{PATH}') is invalid, please correct the following error: "


def error_of(document) -> str:
    with pytest.raises(InvalidPolicyError) as e:
        parse(document, PATH)
    return str(e.value)[len(PREFIX):]


def test_defaults_and_precedence():
    p = parse({"policyVersion": "0.1.0"}, PATH)
    assert (p.allow_listed_extensions_only, p.signature_required, p.extensions) == (False, False, {})
    engine = PolicyEngine(parse({"policyVersion": "0.1", "extensionPolicies": {
        "allowListedExtensionsOnly": True, "signatureRequired": True,
        "extensions": {"Microsoft.Azure.Extensions.CustomScript": {"signatureRequired": False},
                       "Other.Ext": {"runtimePolicy": {"any": ["thing"]}}}}}, PATH))
    assert engine.should_allow("microsoft.azure.extensions.customscript")  # CRP ignores case
    assert not engine.should_allow("Not.Listed")
    assert engine.signature_required("MICROSOFT.AZURE.EXTENSIONS.CUSTOMSCRIPT") is False  # its own rule wins
    assert engine.signature_required("Other.Ext") is True and engine.signature_required("Not.Listed") is True
    assert engine.policy.rule("other.ext").runtime_policy == {"any": ["thing"]}
    off = PolicyEngine()
    assert off.should_allow("x") and not off.signature_required("x") and not off.enabled


def test_not_allow_listed_only_allows_everything():
    engine = PolicyEngine(parse({"policyVersion": "0.1.0", "extensionPolicies": {"extensions": {}}}, PATH))
    assert engine.should_allow("Any.Thing")


@pytest.mark.parametrize("document, problem", [
    ([], "expected an object describing a Policy; got list."),
    ({"policyVersion": "0.1.0", "extra": 1}, "unrecognized attribute 'extra' in policy"),
    ({}, "missing required attribute 'policyVersion'"),
    ({"policyVersion": 1}, "invalid type int for attribute 'policyVersion'; must be 'string'"),
    ({"policyVersion": "v1"}, "invalid value for attribute 'policyVersion': 'v1'; it should be in format "
                              "'major[.minor[.patch]]' (e.g., '1', '1.0', '1.0.0')"),
    ({"policyVersion": "0.1.1"}, "policy version '0.1.1' is not supported. The agent supports policy versions up to "
                                 "'0.1.0'."),
    ({"policyVersion": "0.1.0", "extensionPolicies": []},
     "invalid type list for attribute 'extensionPolicies'; must be 'object'"),
    ({"policyVersion": "0.1.0", "extensionPolicies": {"allowListedExtensionsOnly": "true"}},
     "invalid type str for attribute 'extensionPolicies.allowListedExtensionsOnly'; must be 'boolean'"),
    ({"policyVersion": "0.1.0", "extensionPolicies": {"signatureRequired": 1}},
     "invalid type int for attribute 'extensionPolicies.signatureRequired'; must be 'boolean'"),
    ({"policyVersion": "0.1.0", "extensionPolicies": {"extensions": {"A.B": True}}},
     "invalid type bool for attribute 'extensionPolicies.extensions.A.B'; must be 'object'"),
    ({"policyVersion": "0.1.0", "extensionPolicies": {"extensions": {"A.B": {"runtimePolicies": {}}}}},
     "unrecognized attribute 'runtimePolicies' in extensionPolicies.extensions.A.B"),
    ({"policyVersion": "0.1.0", "extensionPolicies": {"extensions": {"A.B": {"signatureRequired": "y"}}}},
     "invalid type str for attribute 'extensionPolicies.extensions.A.BsignatureRequired'; must be 'boolean'"),
])
def test_invalid_documents(document, problem):
    assert error_of(document) == problem


def test_null_is_as_missing():
    assert parse({"policyVersion": "0.1.0", "extensionPolicies": {"signatureRequired": None}}, PATH).signature_required \
        is False


def _conf(tmp_path, enabled: bool) -> Config:
    return Config({"Lib.Dir": str(tmp_path / "lib"), "Debug.EnableExtensionPolicy": "y" if enabled else "n",
                   "Policy.PolicyFilePath": str(tmp_path / "policy.json")})


def test_enforcement_needs_the_switch_and_the_file(tmp_path):
    assert not policy.load(_conf(tmp_path, True)).enabled  # no file
    (tmp_path / "policy.json").write_text(json.dumps({"policyVersion": "0.1.0"}))
    assert not policy.load(_conf(tmp_path, False)).enabled  # switch off
    engine = policy.load(_conf(tmp_path, True))
    assert engine.enabled and engine.contents == json.dumps({"policyVersion": "0.1.0"})


@pytest.mark.parametrize("text, problem", [
    ("", "policy file does not conform to valid json syntax. File contents: "),
    ("{not json", "policy file does not conform to valid json syntax. File contents: {not json"),
])
def test_unreadable_files(tmp_path, text, problem):
    (tmp_path / "policy.json").write_text(text)
    with pytest.raises(InvalidPolicyError) as e:
        policy.load(_conf(tmp_path, True))
    path = tmp_path / "policy.json"
    assert str(e.value).startswith(f"[InvalidPolicyError] Customer-provided policy file ('{path}') is invalid, please "
                                   f"correct the following error: {problem}\nInner error: ")
