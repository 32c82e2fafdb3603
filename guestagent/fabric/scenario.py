"""Scenario files: what the emulated platform asks of the VM, step by step.

A scenario is JSON (format in docs/fabric.md). It is parsed once at the edge into the dataclasses
below; errors name the file and the JSON path of the offending value so a typo is found at once.
Handler folders are given relative to the scenario file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

BUILTIN_DIR = Path(__file__).resolve().parent / "scenarios"
STATES = ("enabled", "disabled", "uninstall")
BLOB_TYPES = ("BlockBlob", "PageBlob")
SIGNATURE_MODES = ("valid", "tampered", "wrong_signer")
VMSETTINGS_MODES = ("supported", "not_supported", "error", "parse_error", "old_version", "no_etag")


class ScenarioError(ValueError):
    """The scenario file is unusable; the message says where and why."""


@dataclass
class SettingsSpec:
    """One settings item: the handler's (single-config) or one extension's (multi-config)."""

    seq_no: int
    name: Optional[str] = None           # multi-config extension name
    state: str = "enabled"                # multi-config extension state
    public: Any = None
    protected: Any = None
    dependency_level: Optional[int] = None
    depends_on: List[Dict[str, str]] = field(default_factory=list)


@dataclass
class ExtensionSpec:
    name: str
    version: str
    state: str = "enabled"
    multi_config: bool = False
    settings: List[SettingsSpec] = field(default_factory=list)
    encoded_signature: str = ""
    signature: Optional[str] = None      # the fabric signs the package it serves: valid|tampered|wrong_signer
    #: Fault option: raw JSON fields laid over this extension's vmSettings item as they are (hostile types
    #: such as ``"isMultiConfig": "false"`` or a float ``settingsSeqNo``); the ExtensionsConfig is unchanged.
    vm_settings_fields: Dict[str, Any] = field(default_factory=dict)


@dataclass
class RemoteUser:
    name: str
    password: str
    expiration: str
    groups: List[str] = field(default_factory=list)


@dataclass
class Step:
    incarnation: str
    fast_track: bool = False
    status_blob_type: str = "BlockBlob"
    on_hold: bool = False
    required_features: List[str] = field(default_factory=lambda: ["MultipleExtensionsPerHandler"])
    extensions: List[ExtensionSpec] = field(default_factory=list)
    vm_settings: Optional[str] = None     # overrides Scenario.vm_settings for this step
    remote_access: Optional[List[RemoteUser]] = None
    container_id: Optional[str] = None
    certificates: bool = True             # advertise the Certificates document
    extensions_config: bool = True        # advertise ExtensionsConfig
    extra_plugins: int = 0                # filler plugins (disabled, never installed): a huge plugin list


@dataclass
class HandlerPackage:
    name: str
    version: str
    path: Path                            # a handler folder, or a ready-made .zip served as it is


@dataclass
class SshKey:
    path: str
    value: Optional[str] = None           # literal public key
    certificate: Optional[str] = None     # tenant certificate name (by thumbprint)


@dataclass
class OvfSpec:
    hostname: str = "guestagent-vm"
    username: str = "azureuser"
    password: Optional[str] = None
    disable_ssh_password_auth: bool = True
    public_keys: List[SshKey] = field(default_factory=list)
    key_pairs: List[SshKey] = field(default_factory=list)
    custom_data: Optional[str] = None     # plain text; ovf.py base64-encodes it
    provision_guest_agent: bool = True
    preprovisioned_vm: bool = False
    preprovisioned_vm_type: Optional[str] = None   # PreprovisionedVMType: Running, Savable, PreprovisionedOSDisk
    version: str = "1.0"


@dataclass
class PoolSpec:
    """A pre-provisioning pool: ``ovf`` is the placeholder on the DVD; IMDS ``reprovisiondata`` answers
    404 until the VM is claimed, then the customer's document (``customer``), or ``body`` verbatim."""

    customer: OvfSpec = field(default_factory=OvfSpec)
    body: Optional[str] = None


@dataclass
class Scenario:
    name: str = "default"
    description: str = ""
    container_id: str = "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2"
    role_instance_id: str = "b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0"
    role_name: str = "MachineRole"
    deployment_name: str = "db00a7755a5e4e8a8fe4b19bc3b330c3"
    vm_name: str = "MachineRole_IN_0"
    location: str = "eastus"
    hgap_version: str = "1.0.8.159"
    vm_settings: str = "supported"
    artifacts_profile: bool = True
    ovf: OvfSpec = field(default_factory=OvfSpec)
    handlers: List[HandlerPackage] = field(default_factory=list)
    imds: Optional[Dict[str, Any]] = None
    pps: Optional[PoolSpec] = None
    steps: List[Step] = field(default_factory=list)
    source: Optional[Path] = None
    _tenant: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.steps:
            self.steps = [Step(incarnation="1")]
        _number_incarnations(self)

    def key_pair_names(self) -> List[str]:
        names: List[str] = []
        customer = self.pps.customer if self.pps else OvfSpec()
        for key in self.ovf.public_keys + self.ovf.key_pairs + customer.public_keys + customer.key_pairs:
            if key.certificate and key.certificate not in names:
                names.append(key.certificate)
        return names

    def tenant_certs(self, cache_dir: Optional[Path] = None):
        """Generated once per scenario object (optionally persisted), shared by ovf-env and fabric."""
        if self._tenant is None:
            from guestagent.fabric.crypto import make_tenant_certs

            self._tenant = make_tenant_certs(self.key_pair_names(), cache_dir)
        return self._tenant

    def tenant_cert(self, name: str):
        for cert in self.tenant_certs():
            if cert.name == name:
                return cert
        raise KeyError(name)

    def handler_versions(self, name: str) -> List[HandlerPackage]:
        return [h for h in self.handlers if h.name.lower() == name.lower()]


# ------------------------------------------------------------------ parsing

class _Reader:
    def __init__(self, origin: str):
        self.origin = origin

    def fail(self, where: str, why: str) -> ScenarioError:
        return ScenarioError(f"{self.origin}: {where}: {why}")

    def obj(self, value: Any, where: str, allowed: tuple) -> Dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected an object, got {type(value).__name__}")
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise self.fail(where, f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(allowed)})")
        return value

    def lst(self, value: Any, where: str) -> list:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {type(value).__name__}")
        return value

    def string(self, value: Any, where: str, required: bool = False, default: Optional[str] = None) -> Optional[str]:
        if value is None:
            if required:
                raise self.fail(where, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(where, f"expected a string, got {type(value).__name__}")
        return str(value)

    def boolean(self, value: Any, where: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {value!r}")
        return value

    def integer(self, value: Any, where: str, default: Optional[int] = None) -> Optional[int]:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected an integer, got {value!r}")
        return value

    def choice(self, value: Any, where: str, choices: tuple, default: str) -> str:
        if value is None:
            return default
        if value not in choices:
            raise self.fail(where, f"{value!r} is not one of {', '.join(choices)}")
        return value


_SETTINGS_KEYS = ("name", "seqNo", "state", "settings", "protected_settings", "dependency_level", "depends_on")
_EXT_KEYS = ("name", "version", "state", "multi_config", "seqNo", "settings", "protected_settings",
             "dependency_level", "depends_on", "extensions", "encoded_signature", "no_settings", "signature",
             "vm_settings_fields")
#: vmSettings item fields a scenario may overwrite with raw (possibly ill-typed) JSON.
_VM_SETTINGS_FIELDS = ("name", "version", "state", "isMultiConfig", "settingsSeqNo", "settings")
_STEP_KEYS = ("incarnation", "fast_track", "status_blob_type", "on_hold", "required_features", "extensions",
              "vm_settings", "remote_access", "container_id", "certificates", "extensions_config", "comment",
              "extra_plugins")
_OVF_KEYS = ("hostname", "username", "password", "disable_ssh_password_auth", "ssh_public_keys", "ssh_key_pairs",
             "custom_data", "provision_guest_agent", "preprovisioned_vm", "preprovisioned_vm_type", "version")
PPS_TYPES = ("Running", "Savable", "PreprovisionedOSDisk", "None")
_TOP_KEYS = ("name", "description", "container_id", "role_instance_id", "role_name", "deployment_name", "vm_name",
             "location", "hgap_version", "vm_settings", "artifacts_profile", "ovf", "handlers", "imds", "pps", "steps",
             "comment", "lab")  # "lab": options for `guestagent lab` (resource disk, swap); ignored here


def _settings(r: _Reader, raw: dict, where: str, multi: bool) -> SettingsSpec:
    r.obj(raw, where, _SETTINGS_KEYS + (("multi_config", "version", "extensions", "encoded_signature", "no_settings",
                                         "signature", "vm_settings_fields")
                                        if not multi else ()))
    depends = []
    for j, dep in enumerate(r.lst(raw.get("depends_on"), f"{where}.depends_on")):
        r.obj(dep, f"{where}.depends_on[{j}]", ("handler", "extension"))
        depends.append({k: str(v) for k, v in dep.items()})
    return SettingsSpec(
        seq_no=r.integer(raw.get("seqNo"), f"{where}.seqNo", 0),
        name=r.string(raw.get("name"), f"{where}.name", required=multi),
        state=r.choice(raw.get("state"), f"{where}.state", ("enabled", "disabled"), "enabled") if multi else "enabled",
        public=raw.get("settings"), protected=raw.get("protected_settings"),
        dependency_level=r.integer(raw.get("dependency_level"), f"{where}.dependency_level"),
        depends_on=depends)


def _extension(r: _Reader, raw: Any, where: str) -> ExtensionSpec:
    r.obj(raw, where, _EXT_KEYS)
    multi = r.boolean(raw.get("multi_config"), f"{where}.multi_config", False)
    ext = ExtensionSpec(name=r.string(raw.get("name"), f"{where}.name", required=True),
                        version=r.string(raw.get("version"), f"{where}.version", required=True),
                        state=r.choice(raw.get("state"), f"{where}.state", STATES, "enabled"),
                        multi_config=multi,
                        encoded_signature=r.string(raw.get("encoded_signature"), f"{where}.encoded_signature",
                                                   default="") or "",
                        signature=(r.choice(raw.get("signature"), f"{where}.signature", SIGNATURE_MODES, "valid")
                                   if raw.get("signature") is not None else None),
                        vm_settings_fields=dict(r.obj(raw.get("vm_settings_fields") or {},
                                                      f"{where}.vm_settings_fields", _VM_SETTINGS_FIELDS)))
    if ext.signature and ext.encoded_signature:
        raise r.fail(where, "give either 'signature' (the fabric signs) or 'encoded_signature' (literal), not both")
    if multi:
        if any(k in raw for k in ("seqNo", "settings", "protected_settings")):
            raise r.fail(where, "a multi_config extension takes its settings from 'extensions', not seqNo/settings")
        items = r.lst(raw.get("extensions"), f"{where}.extensions")
        ext.settings = [_settings(r, item, f"{where}.extensions[{i}]", True) for i, item in enumerate(items)]
    elif raw.get("extensions"):
        raise r.fail(f"{where}.extensions", "only multi_config extensions have per-extension settings")
    elif not r.boolean(raw.get("no_settings"), f"{where}.no_settings", False):
        ext.settings = [_settings(r, {k: v for k, v in raw.items() if k in _SETTINGS_KEYS and k not in ("name",
                                                                                                        "state")},
                                  where, False)]
    return ext


def _step(r: _Reader, raw: Any, where: str, index: int) -> Step:
    r.obj(raw, where, _STEP_KEYS)
    users = None
    if raw.get("remote_access") is not None:
        users = []
        for j, u in enumerate(r.lst(raw["remote_access"], f"{where}.remote_access")):
            w = f"{where}.remote_access[{j}]"
            r.obj(u, w, ("name", "password", "expiration", "groups"))
            users.append(RemoteUser(r.string(u.get("name"), f"{w}.name", required=True),
                                    r.string(u.get("password"), f"{w}.password", required=True),
                                    r.string(u.get("expiration"), f"{w}.expiration",
                                             default="Mon, 01 Jan 2029 00:00:00 GMT"),
                                    [str(g) for g in r.lst(u.get("groups"), f"{w}.groups")]))
    features = raw.get("required_features")
    return Step(
        incarnation=r.string(raw.get("incarnation"), f"{where}.incarnation", default="") or "",
        fast_track=r.boolean(raw.get("fast_track"), f"{where}.fast_track", False),
        status_blob_type=r.choice(raw.get("status_blob_type"), f"{where}.status_blob_type", BLOB_TYPES, "BlockBlob"),
        on_hold=r.boolean(raw.get("on_hold"), f"{where}.on_hold", False),
        required_features=(["MultipleExtensionsPerHandler"] if features is None
                           else [str(x) for x in r.lst(features, f"{where}.required_features")]),
        extensions=[_extension(r, e, f"{where}.extensions[{i}]")
                    for i, e in enumerate(r.lst(raw.get("extensions"), f"{where}.extensions"))],
        vm_settings=(None if raw.get("vm_settings") is None
                     else r.choice(raw.get("vm_settings"), f"{where}.vm_settings", VMSETTINGS_MODES, "supported")),
        remote_access=users,
        container_id=r.string(raw.get("container_id"), f"{where}.container_id"),
        certificates=r.boolean(raw.get("certificates"), f"{where}.certificates", True),
        extensions_config=r.boolean(raw.get("extensions_config"), f"{where}.extensions_config", True),
        extra_plugins=_non_negative(r, raw.get("extra_plugins"), f"{where}.extra_plugins"),
    )


def _non_negative(r: _Reader, value: Any, where: str) -> int:
    number = r.integer(value, where, 0) or 0
    if number < 0:
        raise r.fail(where, f"expected a non-negative integer, got {number}")
    return number


def _pps(r: _Reader, raw: Any) -> Optional[PoolSpec]:
    if raw is None:
        return None
    r.obj(raw, "pps", ("customer", "body", "comment"))
    return PoolSpec(customer=_ovf(r, raw.get("customer"), "pps.customer"), body=r.string(raw.get("body"), "pps.body"))


def _ovf(r: _Reader, raw: Any, where: str = "ovf") -> OvfSpec:
    if raw is None:
        return OvfSpec()
    r.obj(raw, where, _OVF_KEYS)

    def keys(name: str, need_value: bool) -> List[SshKey]:
        out = []
        for i, k in enumerate(r.lst(raw.get(name), f"{where}.{name}")):
            w = f"{where}.{name}[{i}]"
            r.obj(k, w, ("path", "value", "certificate"))
            key = SshKey(r.string(k.get("path"), f"{w}.path", required=True), r.string(k.get("value"), f"{w}.value"),
                         r.string(k.get("certificate"), f"{w}.certificate"))
            if need_value and not (key.value or key.certificate):
                raise r.fail(w, "needs 'value' (a public key) or 'certificate' (a tenant certificate name)")
            if not need_value and not key.certificate:
                raise r.fail(w, "a key pair needs 'certificate' (the name of a generated tenant certificate)")
            out.append(key)
        return out

    d = OvfSpec()
    return OvfSpec(
        hostname=r.string(raw.get("hostname"), f"{where}.hostname", default=d.hostname),
        username=r.string(raw.get("username"), f"{where}.username", default=d.username),
        password=r.string(raw.get("password"), f"{where}.password"),
        disable_ssh_password_auth=r.boolean(raw.get("disable_ssh_password_auth"), f"{where}.disable_ssh_password_auth",
                                            raw.get("password") is None),
        public_keys=keys("ssh_public_keys", True), key_pairs=keys("ssh_key_pairs", False),
        custom_data=r.string(raw.get("custom_data"), f"{where}.custom_data"),
        provision_guest_agent=r.boolean(raw.get("provision_guest_agent"), f"{where}.provision_guest_agent", True),
        preprovisioned_vm=r.boolean(raw.get("preprovisioned_vm"), f"{where}.preprovisioned_vm", False),
        preprovisioned_vm_type=(None if raw.get("preprovisioned_vm_type") is None else r.choice(
            raw.get("preprovisioned_vm_type"), f"{where}.preprovisioned_vm_type", PPS_TYPES, "None")),
        version=r.string(raw.get("version"), f"{where}.version", default="1.0"),
    )


def parse_scenario(data: Any, base_dir: Optional[Path] = None, origin: str = "<scenario>") -> Scenario:
    """Validate a decoded scenario document and build the model."""
    r = _Reader(origin)
    r.obj(data, "scenario", _TOP_KEYS)
    base = Path(base_dir) if base_dir else Path.cwd()
    handlers = []
    for i, h in enumerate(r.lst(data.get("handlers"), "handlers")):
        w = f"handlers[{i}]"
        r.obj(h, w, ("name", "version", "path"))
        path = (base / r.string(h.get("path"), f"{w}.path", required=True)).resolve()
        ready_made = path.suffix == ".zip" and path.is_file()  # served as it is (a hostile package)
        if not ready_made and not (path / "HandlerManifest.json").is_file():
            raise r.fail(f"{w}.path", f"{path} is not a handler folder (no HandlerManifest.json) nor a .zip")
        handlers.append(HandlerPackage(r.string(h.get("name"), f"{w}.name", required=True),
                                       r.string(h.get("version"), f"{w}.version", required=True), path))
    imds = data.get("imds")
    if imds is not None and not isinstance(imds, dict):
        raise r.fail("imds", "expected an object (the /metadata/instance document)")
    d = Scenario()
    sc = Scenario(
        name=r.string(data.get("name"), "name", default=d.name),
        description=r.string(data.get("description"), "description", default="") or "",
        container_id=r.string(data.get("container_id"), "container_id", default=d.container_id),
        role_instance_id=r.string(data.get("role_instance_id"), "role_instance_id", default=d.role_instance_id),
        role_name=r.string(data.get("role_name"), "role_name", default=d.role_name),
        deployment_name=r.string(data.get("deployment_name"), "deployment_name", default=d.deployment_name),
        vm_name=r.string(data.get("vm_name"), "vm_name", default=d.vm_name),
        location=r.string(data.get("location"), "location", default=d.location),
        hgap_version=r.string(data.get("hgap_version"), "hgap_version", default=d.hgap_version),
        vm_settings=r.choice(data.get("vm_settings"), "vm_settings", VMSETTINGS_MODES, "supported"),
        artifacts_profile=r.boolean(data.get("artifacts_profile"), "artifacts_profile", True),
        ovf=_ovf(r, data.get("ovf")), handlers=handlers, imds=imds, pps=_pps(r, data.get("pps")),
        steps=[_step(r, s, f"steps[{i}]", i) for i, s in enumerate(r.lst(data.get("steps"), "steps"))],
        source=Path(origin) if origin != "<scenario>" else None,
    )
    for i, step in enumerate(sc.steps):
        for j, ext in enumerate(step.extensions):
            if ext.state == "enabled" and not sc.handler_versions(ext.name):
                raise r.fail(f"steps[{i}].extensions[{j}]", f"no handler folder for {ext.name!r} in 'handlers'")
    return sc


def _number_incarnations(sc: Scenario) -> None:
    """Unset incarnations count up from the previous WireServer step; FastTrack steps keep it."""
    current = 0
    for step in sc.steps:
        if step.incarnation:
            try:
                current = int(step.incarnation)
            except ValueError:
                pass
            continue
        if not step.fast_track or current == 0:
            current += 1
        step.incarnation = str(current)


def builtin_scenarios() -> list[str]:
    """The names a bare ``--scenario`` argument may give (the files in :data:`BUILTIN_DIR`)."""
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


def load_scenario(path) -> Scenario:
    """Load a scenario file; a bare name (``default``) means a built-in scenario."""
    p = Path(path)
    if not p.exists() and (BUILTIN_DIR / f"{path}.json").is_file():
        p = BUILTIN_DIR / f"{path}.json"
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        # a typo in a built-in name is the likely cause: say which names exist
        raise ScenarioError(f"{p}: cannot read scenario: no such file, nor a built-in scenario of that name "
                            f"(built-in: {', '.join(builtin_scenarios())})") from None
    except OSError as exc:
        raise ScenarioError(f"{p}: cannot read scenario: {exc.strerror or exc}") from None
    if len(text) > 4 * 1024 * 1024:
        raise ScenarioError(f"{p}: scenario file larger than 4 MiB")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{p}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    return parse_scenario(data, p.parent, str(p))


def default_scenario() -> Scenario:
    return load_scenario(BUILTIN_DIR / "default.json")
