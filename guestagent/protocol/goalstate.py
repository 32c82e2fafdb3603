"""Goal-state models (spec 01 §4-§8) and the parsers that build them from WireServer XML.

Raw XML stops here: downstream code sees these dataclasses plus the extensions goal state built by
extconfig.py (``extconfig.empty_goal_state`` when the goal state has no ExtensionsConfig).
Fetching and polling them is goalstate_updater.py's job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from guestagent.errors import ProtocolError, XmlError
from guestagent.osutil import system
from guestagent.protocol import xml
from guestagent.protocol.certificates import CertificatesJob, CertSummary
from guestagent.protocol.extconfig import ExtensionsGoalState


@dataclass
class GoalStateDocument:
    """The ?comp=goalstate document."""

    incarnation: str
    container_id: str
    role_instance_id: str
    role_config_name: str
    hosting_env_uri: Optional[str]
    shared_config_uri: Optional[str]
    extensions_config_uri: Optional[str]
    certificates_uri: Optional[str]
    remote_access_uri: Optional[str]
    xml_text: str = field(repr=False, default="")

    @property
    def deployment_id(self) -> str:
        """Config name up to the first '.' (HGAP x-ms-vmagentlog-deploymentid)."""
        return self.role_config_name.split(".", 1)[0]


def _required(root, tag: str, what: str) -> str:
    value = xml.findtext(root, tag)
    if value is None or not value.strip():
        raise ProtocolError(f"{what} has no {tag}")
    return value.strip()


def _optional(root, tag: str) -> Optional[str]:
    value = xml.findtext(root, tag)
    return value.strip() if value and value.strip() else None


def parse_goal_state(text: str) -> GoalStateDocument:
    try:
        root = xml.parse(text, what="Goal state")
    except XmlError as e:
        raise ProtocolError("Goal state is not valid XML", e) from None
    if xml.find(root, "RoleInstance") is None:
        raise ProtocolError("Fetched goal state without a RoleInstance")
    config = xml.find(root, "Configuration")
    return GoalStateDocument(
        incarnation=_required(root, "Incarnation", "Goal state"),
        container_id=_required(root, "ContainerId", "Goal state"),
        role_instance_id=_required(xml.find(root, "RoleInstance"), "InstanceId", "Goal state"),
        role_config_name=_optional(config, "ConfigName") or "",
        hosting_env_uri=_optional(config, "HostingEnvironmentConfig"),
        shared_config_uri=_optional(config, "SharedConfig"),
        extensions_config_uri=_optional(config, "ExtensionsConfig"),
        certificates_uri=_optional(config, "Certificates"),
        remote_access_uri=_optional(xml.find(root, "Container"), "RemoteAccessInfo"),
        xml_text=text,
    )


@dataclass
class HostingEnvironment:
    vm_name: Optional[str]
    role_name: Optional[str]
    deployment_name: Optional[str]
    xml_text: str = field(repr=False, default="")


def parse_hosting_env(text: str) -> HostingEnvironment:
    root = xml.parse(text, what="HostingEnvironmentConfig")
    return HostingEnvironment(vm_name=xml.attr(xml.find(root, "Incarnation"), "instance"),
                              role_name=xml.attr(xml.find(root, "Role"), "name"),
                              deployment_name=xml.attr(xml.find(root, "Deployment"), "name"),
                              xml_text=text)


@dataclass
class SharedConfigInstance:
    id: Optional[str]
    address: Optional[str]
    rdma_ipv4_address: Optional[str]
    rdma_mac_address: Optional[str]


@dataclass
class SharedConfig:
    """Kept as text (also written to <lib>/SharedConfig.xml); the RDMA attributes parsed for convenience."""

    instances: list[SharedConfigInstance]
    xml_text: str = field(repr=False, default="")

    def rdma(self) -> tuple[Optional[str], Optional[str]]:
        """(rdmaIPv4Address, rdmaMacAddress) of the first instance that has them."""
        for inst in self.instances:
            if inst.rdma_ipv4_address or inst.rdma_mac_address:
                return inst.rdma_ipv4_address, inst.rdma_mac_address
        return None, None


def parse_shared_config(text: str) -> SharedConfig:
    root = xml.parse(text, what="SharedConfig")
    instances = [SharedConfigInstance(xml.attr(i, "id"), xml.attr(i, "address"), xml.attr(i, "rdmaIPv4Address"),
                                      xml.attr(i, "rdmaMacAddress"))
                 for i in xml.findall(root, "Instance")]
    return SharedConfig(instances=instances, xml_text=text)


@dataclass
class RemoteAccessUser:
    name: str
    encrypted_password: str = field(repr=False)
    expiration: str


@dataclass
class RemoteAccess:
    version: Optional[str]
    incarnation: Optional[str]
    users: list[RemoteAccessUser]
    xml_text: str = field(repr=False, default="")


def parse_remote_access(text: str) -> RemoteAccess:
    root = xml.parse(text, what="RemoteAccess document")
    users = [RemoteAccessUser(name=(xml.findtext(u, "Name") or "").strip(),
                              encrypted_password=(xml.findtext(u, "Password") or "").strip(),
                              expiration=(xml.findtext(u, "Expiration") or "").strip())
             for u in xml.findall(root, "User")]
    return RemoteAccess(version=_optional(root, "Version"), incarnation=_optional(root, "Incarnation"),
                        users=users, xml_text=text)


@dataclass
class CertificatesDocument:
    """The Certificates XML envelope (01 §7.2); the crypto lives in certificates.py."""

    format: Optional[str]
    data: Optional[str] = field(repr=False, default=None)

    @property
    def usable(self) -> bool:
        return bool(self.data) and (not self.format or self.format == "Pkcs7BlobWithPfxContents")


def parse_certificates_document(text: str) -> CertificatesDocument:
    root = xml.parse(text, what="Certificates document")
    return CertificatesDocument(format=_optional(root, "Format"), data=_optional(root, "Data"))


def parse_on_hold(text: Optional[str]) -> bool:
    """InVMArtifactsProfileBlob body → on hold (03 §2.6): anything unexpected means "not on hold"."""
    if not text or not text.strip():
        return False
    try:
        value = json.loads(text)
    except ValueError:
        return False
    if not isinstance(value, dict):
        return False
    on_hold: Any = value.get("onHold")
    if isinstance(on_hold, bool):
        return on_hold
    if isinstance(on_hold, str):
        return on_hold.strip().lower() == "true"
    return False


@dataclass
class GoalState:
    """Everything one goal-state update produced. ``extensions_goal_state`` is what extensions act on."""

    document: GoalStateDocument
    extensions_goal_state: ExtensionsGoalState
    hosting_env: Optional[HostingEnvironment] = None
    shared_config: Optional[SharedConfig] = None
    certs: list[CertSummary] = field(default_factory=list)
    remote_access: Optional[RemoteAccess] = None
    history_folder: Optional[str] = None
    fast_track_supported: bool = False
    certificates_job: Optional[CertificatesJob] = field(default=None, repr=False, compare=False)

    def wait_for_certificates(self, timeout: Optional[float] = None) -> list[CertSummary]:
        """The certificate summary, once the helper that decrypts this goal state's bundle has finished.

        Only code that reads the tenant certificates calls this (a handler command whose protected settings
        name a ``<thumbprint>.prv`` not on disk yet, the history archive): nothing else waits for the helper."""
        job = self.certificates_job
        if job is not None and job.wait(timeout):
            self.certs = job.result
            self.certificates_job = None
        return self.certs

    def wait_for_certificates_named(self, thumbprints: Iterable[str], lib_dir: str) -> None:
        """Wait for the helper only when one of ``thumbprints`` has no ``<thumbprint>.prv`` on disk yet: a
        disable, or an update whose certificates are already there, goes on at once."""
        if not self.certificates_pending:
            return
        if any(not system.exists(f"{lib_dir}/{str(t).upper()}.prv") for t in thumbprints):
            self.wait_for_certificates()

    @property
    def certificates_pending(self) -> bool:
        job = self.certificates_job
        return job is not None and not job.done()

    @property
    def incarnation(self) -> str:
        return self.document.incarnation

    @property
    def container_id(self) -> str:
        return self.document.container_id

    @property
    def role_instance_id(self) -> str:
        return self.document.role_instance_id

    @property
    def role_config_name(self) -> str:
        return self.document.role_config_name

