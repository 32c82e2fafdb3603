"""The customer's extension policy (upstream 2.15 ``ga/policy``): which extensions may run, which must be signed.

On when ``Debug.EnableExtensionPolicy=y`` and the file at ``Policy.PolicyFilePath`` exists. The file is read
once per extensions goal state; anything wrong with it is an :class:`InvalidPolicyError`, and the caller
then blocks *every* extension (an admin relying on an allow-list must never get everything run because of
a typo). Schema 0.1.0::

    {"policyVersion": "0.1.0",
     "extensionPolicies": {"allowListedExtensionsOnly": bool, "signatureRequired": bool,
                           "extensions": {"<Publisher.Type>": {"signatureRequired": bool,
                                                               "runtimePolicy": <anything>}}}}

Extension names are matched case-insensitively (CRP ignores their case).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from guestagent import events, log
from guestagent.conf import Config
from guestagent.osutil import system

#: The newest ``policyVersion`` this agent understands.
MAX_POLICY_VERSION = "0.1.0"
HISTORY_NAME = "waagent_policy.json"
_VERSION_FORMAT = re.compile(r"^\d+(\.\d+(\.\d+)?)?$")
JsonValue = Union[None, bool, int, float, str, list, dict]


class InvalidPolicyError(Exception):
    """The policy file is unusable; ``str()`` is upstream's ``[InvalidPolicyError] ...`` text."""

    def __init__(self, path: str, problem: str, inner: Optional[BaseException] = None):
        text = (f"[InvalidPolicyError] Customer-provided policy file ('{path}') is invalid, please correct the "
                f"following error: {problem}")
        if inner is not None:
            text += f"\nInner error: {inner}"
        super().__init__(text)


@dataclass(frozen=True)
class ExtensionRule:
    signature_required: Optional[bool] = None
    runtime_policy: JsonValue = None


@dataclass(frozen=True)
class ExtensionPolicy:
    """The parsed policy, defaults filled in. ``extensions`` is keyed by the case-folded extension name."""

    policy_version: str
    allow_listed_extensions_only: bool = False
    signature_required: bool = False
    extensions: dict = field(default_factory=dict)

    def rule(self, name: str) -> Optional[ExtensionRule]:
        return self.extensions.get(name.casefold())


class PolicyEngine:
    """The policy in force for one goal state (``policy`` is None when enforcement is off)."""

    def __init__(self, policy: Optional[ExtensionPolicy] = None, contents: Optional[str] = None):
        self.policy = policy
        self.contents = contents

    @property
    def enabled(self) -> bool:
        return self.policy is not None

    def should_allow(self, name: str) -> bool:
        if self.policy is None or not self.policy.allow_listed_extensions_only:
            return True
        return self.policy.rule(name) is not None

    def signature_required(self, name: str) -> bool:
        """The extension's own ``signatureRequired`` wins over the global one."""
        if self.policy is None:
            return False
        rule = self.policy.rule(name)
        if rule is not None and rule.signature_required is not None:
            return rule.signature_required
        return self.policy.signature_required


def _policy_event(message: str, lib_dir: str) -> None:
    log.info("{0}", message)
    events.add_event(events.WALAEventOperation.Policy, message=message, log_event=False, lib_dir=lib_dir)


def load(conf: Config) -> PolicyEngine:
    """The engine for this goal state; raises InvalidPolicyError (the caller blocks every extension)."""
    path = conf.policy_file_path
    if not conf.debug_enable_extension_policy or not system.exists(path):
        return PolicyEngine()
    _policy_event("Policy enforcement is enabled.", conf.lib_dir)
    contents: Optional[str] = None
    try:
        contents = system.read_text(path)
        _policy_event(f"Enforcing policy using policy file found at '{path}'.", conf.lib_dir)
        document = json.loads(contents)
    except ValueError as e:
        problem = "policy file does not conform to valid json syntax."
        if contents is not None:
            problem += f" File contents: {contents}"
        raise InvalidPolicyError(path, problem, e) from None
    except Exception as e:
        problem = "unable to read or load policy file."
        if contents is not None:
            problem += f" File contents: {contents}"
        raise InvalidPolicyError(path, problem, e) from None
    return PolicyEngine(parse(document, path), contents)


# --- the schema ------------------------------------------------------------------------------------------
def parse(document: JsonValue, path: str) -> ExtensionPolicy:
    """Check ``document`` against the schema and fill in the defaults (upstream's checks, in its order)."""
    p = _Parser(path)
    if not isinstance(document, dict):
        raise p.error(f"expected an object describing a Policy; got {_type(document)}.")
    p.only(document, "policy", ("policyVersion", "extensionPolicies"))
    version = p.value(document, "policyVersion", "", str, "string", optional=False)
    if not _VERSION_FORMAT.match(version):
        raise p.error(f"invalid value for attribute 'policyVersion': '{version}'; it should be in format "
                      "'major[.minor[.patch]]' (e.g., '1', '1.0', '1.0.0')")
    if _version_key(MAX_POLICY_VERSION) < _version_key(version):
        raise p.error(f"policy version '{version}' is not supported. The agent supports policy versions up to "
                      f"'{MAX_POLICY_VERSION}'.")
    ext_policies = p.value(document, "extensionPolicies", "", dict, "object") or {}
    p.only(ext_policies, "extensionPolicies", ("allowListedExtensionsOnly", "signatureRequired", "extensions"))
    allow_listed = p.value(ext_policies, "allowListedExtensionsOnly", "extensionPolicies.", bool, "boolean")
    signature = p.value(ext_policies, "signatureRequired", "extensionPolicies.", bool, "boolean")
    listed = p.value(ext_policies, "extensions", "extensionPolicies.", dict, "object") or {}
    rules: dict = {}
    for name, raw in listed.items():
        if not isinstance(raw, dict):
            raise p.error(f"invalid type {_type(raw)} for attribute 'extensionPolicies.extensions.{name}'; "
                          "must be 'object'")
        where = f"extensionPolicies.extensions.{name}"
        p.only(raw, where, ("signatureRequired", "runtimePolicy"))
        rules[name.casefold()] = ExtensionRule(p.value(raw, "signatureRequired", where, bool, "boolean"),
                                               raw.get("runtimePolicy"))
    return ExtensionPolicy(version, bool(allow_listed), bool(signature), rules)


class _Parser:
    def __init__(self, path: str):
        self.path = path

    def error(self, problem: str) -> InvalidPolicyError:
        return InvalidPolicyError(self.path, problem)

    def only(self, obj: dict, where: str, allowed: tuple) -> None:
        for key in obj:
            if key not in allowed:
                raise self.error(f"unrecognized attribute '{key}' in {where}")

    def value(self, obj: dict, attribute: str, prefix: str, kind: type, kind_name: str,
              optional: bool = True) -> JsonValue:
        """``obj[attribute]`` checked for type; a missing (or null) optional attribute is None."""
        value = obj.get(attribute)
        if value is None:
            if not optional:
                raise self.error(f"missing required attribute '{prefix}{attribute}'")
            return None
        if not isinstance(value, kind):
            raise self.error(f"invalid type {_type(value)} for attribute '{prefix}{attribute}'; "
                             f"must be '{kind_name}'")
        return value


def _type(value: JsonValue) -> str:
    """The type name upstream's messages show (Python's: dict, list, str, int, bool, NoneType)."""
    return type(value).__name__


def _version_key(version: str) -> tuple:
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))
