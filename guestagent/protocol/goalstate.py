"""Goal-state models (spec 01 §4-§8) and the parsers that build them from WireServer XML.

Raw XML stops here: downstream code sees these dataclasses plus the extensions goal state built by
extconfig.py. ``EmptyExtensionsGoalState`` stands in when the goal state has no ExtensionsConfig.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from guestagent.errors import ProtocolError, XmlError
from guestagent.protocol import xml

ZERO_GUID = "00000000-0000-0000-0000-000000000000"
MIN_TIMESTAMP = "0001-01-01T00:00:00.000000Z"
#: While vmSettings answers, the longest a change that reaches only the WireServer (new certificates, JIT
#: users: vmSettings does not move) goes unseen, in seconds (docs/benchmarks.md; upstream: one period).
WIRE_SERVER_POLL = 30.0


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


@dataclass
class EmptyExtensionsGoalState:
    """The extensions goal state of a goal state without ExtensionsConfig (03 §1 "Empty")."""

    incarnation: str
    id: str = ""
    source: str = "Empty"
    channel: str = "Empty"
    svd_sequence_number: str = ""
    status_upload_blob: Optional[str] = None
    status_upload_blob_type: str = "BlockBlob"
    extensions: list = field(default_factory=list)
    agent_families: list = field(default_factory=list)
    required_features: list = field(default_factory=list)
    on_hold: bool = False
    artifacts_profile_blob: Optional[str] = None
    created_on_ticks: int = 0
    created_on_timestamp: str = MIN_TIMESTAMP
    activity_id: str = ZERO_GUID
    correlation_id: str = ZERO_GUID
    is_outdated: bool = False

    def __post_init__(self) -> None:
        self.id = self.id or f"incarnation_{self.incarnation}"
        self.svd_sequence_number = self.svd_sequence_number or self.incarnation


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
    hosting_env: Optional[HostingEnvironment] = None
    shared_config: Optional[SharedConfig] = None
    certs: list = field(default_factory=list)
    remote_access: Optional[RemoteAccess] = None
    extensions_goal_state: Any = None
    history_folder: Optional[str] = None
    fast_track_supported: bool = False
    certificates_job: Any = field(default=None, repr=False, compare=False)

    def wait_for_certificates(self, timeout: Optional[float] = None) -> list:
        """The certificate summary, once the helper that decrypts this goal state's bundle has finished.

        Only code that reads the tenant certificates calls this (a handler command whose protected settings
        name a ``<thumbprint>.prv`` not on disk yet, the history archive): nothing else waits for the helper."""
        job = self.certificates_job
        if job is not None and job.wait(timeout):
            self.certs = job.result
            self.certificates_job = None
        return self.certs

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

    @property
    def extensions(self) -> Any:
        return self.extensions_goal_state


# --- the update cycle (01 §4.3, 02 §4) -------------------------------------------------------------------
def _timestamp_of(egs: Any) -> str:
    if egs is None:
        return MIN_TIMESTAMP
    stamp = getattr(egs, "created_on_timestamp", None)
    if isinstance(stamp, str) and stamp:
        return stamp
    from guestagent.protocol.hostplugin import ticks_to_timestamp

    return ticks_to_timestamp(getattr(egs, "created_on_ticks", 0) or 0)


def _parse_extensions_config(text: str, incarnation: str) -> Any:
    from guestagent.protocol.extconfig import parse_extensions_config

    return parse_extensions_config(text, incarnation=incarnation)


def _settings_thumbprints(egs: Any) -> set[str]:
    """Thumbprints named by settings that carry protected settings (02 §4.3)."""
    needed: set[str] = set()
    for ext in getattr(egs, "extensions", None) or []:
        for s in getattr(ext, "settings", None) or []:
            protected = getattr(s, "protected_settings", None) or getattr(s, "protectedSettings", None)
            thumb = getattr(s, "certificate_thumbprint", None) or getattr(s, "certificateThumbprint", None)
            if protected and thumb:
                needed.add(str(thumb).upper())
    return needed


class GoalStateUpdater:
    """Owns the "what changed" state between updates of one :class:`~guestagent.protocol.WireProtocol`.

    Polling (issue 3 item 10): while the HostGAPlugin serves vmSettings, each update asks it first
    (``If-None-Match`` → 304) and fetches ``?comp=goalstate`` only when the vmSettings ETag moved (any
    source: a Fabric goal state with new extensions changes ``inSvdSeqNo`` and the ETag), when forced, or
    when the last WireServer fetch is older than :data:`WIRE_SERVER_POLL` — changes that reach only the
    WireServer (tenant certificate rotation, JIT users) do not move vmSettings. Without vmSettings, or
    when the request fails, the WireServer is polled every update as upstream does.

    ``async_certificates`` (the ext-handler child sets it on the protocol): a new bundle is decrypted by a
    ``certificates.CertificatesJob``; only :meth:`GoalState.wait_for_certificates` waits for it.
    """

    def __init__(self, protocol: Any, clock: Optional[Callable[[], float]] = None):
        import time

        self.p = protocol
        self.clock = clock or time.monotonic
        self.gs: Optional[GoalState] = None
        self._vm_egs: Any = None
        self._vm_etag_used: Optional[str] = None
        self._vm_etag_seen: Optional[str] = None
        self._parse_error_etags: set[str] = set()
        self._last_ws_fetch: Optional[float] = None
        self._certificates_job: Any = None

    @property
    def async_certificates(self) -> bool:
        return bool(getattr(self.p, "async_certificates", False))

    def _fetch_ws(self) -> tuple[str, GoalStateDocument]:
        text = self.p.wire.fetch_goal_state_xml()
        doc = parse_goal_state(text)
        self.p.host_plugin.update_headers(doc.container_id, doc.role_config_name)
        self._last_ws_fetch = self.clock()
        return text, doc

    def _vm_settings_first(self, force: bool) -> bool:
        p = self.p
        return (not force and self.gs is not None and self._last_ws_fetch is not None and p.fast_track_enabled
                and p.host_plugin.supports_vm_settings and self._vm_etag_seen is not None
                and self.clock() - self._last_ws_fetch < WIRE_SERVER_POLL)

    def update(self, force: bool = False) -> GoalState:
        try:
            return self._update(force)
        except BaseException:
            self._vm_etag_seen = None  # a change seen in vmSettings but not applied: ask the WireServer next time
            raise

    def _update(self, force: bool) -> GoalState:
        from guestagent.errors import VmSettingsSupportStopped

        p = self.p
        if self._vm_settings_first(force):
            try:
                vm, vm_changed, vm_moved = self._vm_settings(False)
            except VmSettingsSupportStopped as e:
                text, doc = self._fetch_ws()
                return self._support_stopped(doc, text, e.timestamp)
            except Exception:
                self._fetch_ws()  # as before: the WireServer is polled, then the update fails this cycle
                raise
            if not vm_moved and p.host_plugin.supports_vm_settings and self.gs is not None:
                self.gs.fast_track_supported = True
                return self.gs
            text, doc = self._fetch_ws()
        else:
            text, doc = self._fetch_ws()
            vm, vm_changed = None, False
            if p.fast_track_enabled:
                try:
                    vm, vm_changed, _ = self._vm_settings(force)
                except VmSettingsSupportStopped as e:
                    return self._support_stopped(doc, text, e.timestamp)
        ws_changed = force or self.gs is None or doc.incarnation != self.gs.incarnation
        if not ws_changed and not vm_changed and self.gs is not None:
            self.gs.document = doc
            self.gs.fast_track_supported = p.host_plugin.supports_vm_settings
            return self.gs
        tag = doc.incarnation if vm is None else f"{doc.incarnation}-{self._vm_etag_used}"
        new = GoalState(document=doc, history_folder=p.history.start(tag))
        if ws_changed:
            p.history.save_goal_state(text)
        if vm_changed:
            p.history.save_vm_settings(p.host_plugin._vm_settings_cache.text)
        ws_egs = self._fetch_full(new) if ws_changed else None
        if not ws_changed and self.gs is not None:
            new.hosting_env, new.shared_config = self.gs.hosting_env, self.gs.shared_config
            new.certs, new.remote_access = self.gs.certs, self.gs.remote_access
            new.certificates_job = self.gs.certificates_job
        if ws_egs is not None and vm is not None:
            candidate = vm if _timestamp_of(vm) > _timestamp_of(ws_egs) else ws_egs
        else:
            candidate = ws_egs if ws_egs is not None else vm
        current = self.gs.extensions_goal_state if self.gs is not None else None
        if candidate is None or (current is not None and _timestamp_of(candidate) < _timestamp_of(current)):
            candidate = current
        new.extensions_goal_state = candidate
        new.fast_track_supported = p.host_plugin.supports_vm_settings
        if getattr(candidate, "source", None) == "FastTrack" and candidate is not current:
            self._check_fast_track_certs(new)
        self.gs = new
        return new

    def _vm_settings(self, force: bool) -> tuple[Any, bool, bool]:
        """(FastTrack extensions goal state or None, it changed, the vmSettings ETag moved — any source)."""
        from guestagent.errors import VmSettingsNotSupported, VmSettingsParseError, VmSettingsSupportStopped

        try:
            resp = self.p.fetch_vm_settings(force)
        except VmSettingsSupportStopped:
            self._vm_etag_seen = None
            raise
        except VmSettingsNotSupported:
            self._vm_etag_seen = None
            return None, False, False
        moved = resp.etag != self._vm_etag_seen
        self._vm_etag_seen = resp.etag
        if resp.source == "Fabric":
            return None, False, moved
        if self._vm_egs is None or resp.etag != self._vm_etag_used or (resp.updated and force):
            try:
                from guestagent.protocol.extconfig import parse_vm_settings

                egs = parse_vm_settings(resp.text, resp.etag)
            except Exception as e:
                self._vm_etag_seen = None  # not understood: the next update polls the WireServer too
                if resp.etag not in self._parse_error_etags:
                    self._parse_error_etags.add(resp.etag)
                    self.p.history.start(resp.etag)
                    self.p.history.save_vm_settings(resp.text)
                if isinstance(e, VmSettingsParseError):
                    raise
                raise VmSettingsParseError(f"Error parsing vmSettings [etag {resp.etag}]", e) from None
            changed = resp.etag != self._vm_etag_used or force
            self._vm_egs, self._vm_etag_used = egs, resp.etag
            return egs, changed, moved
        return self._vm_egs, False, moved

    def _support_stopped(self, doc: GoalStateDocument, text: str, fast_track_timestamp: str) -> GoalState:
        from guestagent import log

        log.info("HostGAPlugin stopped supporting vmSettings; using the WireServer goal state")
        new = GoalState(document=doc, history_folder=self.p.history.start(doc.incarnation))
        self.p.history.save_goal_state(text)
        egs = self._fetch_full(new)
        if _timestamp_of(egs) < (fast_track_timestamp or MIN_TIMESTAMP):
            try:
                egs.is_outdated = True
            except AttributeError:
                pass
        new.extensions_goal_state = egs
        self._vm_egs, self._vm_etag_used = None, None
        self.gs = new
        return new

    # --- the full WireServer goal state ------------------------------------------------------------------
    def _fetch_full(self, gs: GoalState) -> Any:
        """ExtensionsConfig (+ profile blob), HostingEnvironmentConfig, SharedConfig, Certificates,
        RemoteAccessInfo, in upstream's order; any failure but Certificates fails the update."""
        import os

        from guestagent.osutil import system

        p, doc = self.p, gs.document
        try:
            egs = self._fetch_extensions_config(doc)
            if doc.hosting_env_uri:
                gs.hosting_env = parse_hosting_env(p.wire.fetch(doc.hosting_env_uri))
                p.history.save("HostingEnvironmentConfig.xml", gs.hosting_env.xml_text)
            if doc.shared_config_uri:
                gs.shared_config = parse_shared_config(p.wire.fetch(doc.shared_config_uri))
                system.write_file(os.path.join(p.lib_dir, "SharedConfig.xml"), gs.shared_config.xml_text,
                                  fsync=False)
                p.history.save("SharedConfig.xml", gs.shared_config.xml_text)
            self._certificates(gs)
            if doc.remote_access_uri:
                from guestagent.protocol.wireserver import CIPHER_AES

                gs.remote_access = parse_remote_access(p.wire.fetch(doc.remote_access_uri,
                                                                    p.wire.encrypted_headers(CIPHER_AES)))
                p.history.save("RemoteAccess.xml", gs.remote_access.xml_text)
        except Exception as e:
            raise ProtocolError("Error fetching goal state", e) from None
        return egs

    def _fetch_extensions_config(self, doc: GoalStateDocument) -> Any:
        p = self.p
        if not doc.extensions_config_uri:
            from guestagent.protocol.extconfig import empty_goal_state

            return empty_goal_state(doc.incarnation)
        text = p.wire.fetch(doc.extensions_config_uri)
        egs = _parse_extensions_config(text, doc.incarnation)
        p.history.save_extensions_config(text)
        blob = getattr(egs, "artifacts_profile_blob", None)
        if blob:
            try:
                body = p.download_artifact([blob], is_text=True, verify=False, what="artifacts profile blob")
                on_hold = parse_on_hold(body.decode("utf-8-sig", errors="replace"))
            except Exception as e:
                from guestagent import log

                log.warn("Failed to fetch the InVMArtifactsProfileBlob (not on hold): {0}", e)
                on_hold = False
            try:
                egs.on_hold = on_hold
            except AttributeError:
                pass
        return egs

    def _certificates(self, gs: GoalState) -> None:
        """Certificates (01 §7.2): fetched now; decrypted now, or by a CertificatesJob (async_certificates)."""
        from guestagent.protocol.wireserver import CIPHER_AES

        if self._certificates_job is not None:
            self._certificates_job.wait()  # one bundle at a time: both would write the same files
            self._certificates_job = None
        doc = gs.document
        if not self.async_certificates or not doc.certificates_uri:
            gs.certs = self._fetch_certificates(doc)
            self.p.history.save_certificates(gs.certs)
            return
        try:  # the request stays on this thread, in upstream's order; only the decryption moves
            first: tuple = (CIPHER_AES, self.p.wire.fetch(doc.certificates_uri, self.p.wire.encrypted_headers(
                CIPHER_AES)))
        except Exception as e:
            first = (CIPHER_AES, e)
        from guestagent.protocol.certificates import CertificatesJob

        history = self.p.history
        folder = gs.history_folder

        def save(certs: list) -> None:
            if history.enabled and folder:
                from guestagent.protocol.history import History

                copy = History(history.lib_dir, enabled=True)
                copy.current = folder
                copy.save_certificates(certs)

        job = CertificatesJob(lambda: self._fetch_certificates(doc, first), save)
        job.history_folder = folder
        gs.certificates_job = self._certificates_job = job.start()

    def _fetch_certificates(self, doc: GoalStateDocument, first: Optional[tuple] = None) -> list:
        """The first cipher that decrypts (AES128_CBC, then DES_EDE3_CBC); ``first``: (cipher, text or the
        error) already fetched for the first cipher."""
        from guestagent import log
        from guestagent.protocol.wireserver import CIPHER_3DES, CIPHER_AES

        if not doc.certificates_uri:
            return []
        for cipher in (CIPHER_AES, CIPHER_3DES):
            try:
                if first is not None and first[0] == cipher:
                    if isinstance(first[1], Exception):
                        raise first[1]
                    text = first[1]
                else:
                    text = self.p.wire.fetch(doc.certificates_uri, self.p.wire.encrypted_headers(cipher))
                envelope = parse_certificates_document(text)
                from guestagent.protocol.certificates import process_certificates_isolated

                summary = process_certificates_isolated(text, self.p.lib_dir)
            except Exception as e:
                log.warn("Error fetching certificates with cipher {0}: {1}", cipher, e)
                continue
            if getattr(summary, "decrypt_failed", False) is False and (summary or not envelope.usable
                                                                       or hasattr(summary, "decrypt_failed")):
                return summary
            log.warn("Certificates requested with cipher {0} could not be decrypted", cipher)
        return []

    def _check_fast_track_certs(self, gs: GoalState) -> None:
        """02 §4.1 step 9 and §4.3: a FastTrack goal state needs its tenant certificates on disk."""
        import os

        from guestagent import log
        from guestagent.osutil import system

        needed = _settings_thumbprints(gs.extensions_goal_state)
        if gs.certificates_pending:
            if all(system.exists(os.path.join(self.p.lib_dir, f"{t}.prv")) for t in needed):
                return  # the running job rewrites every certificate of the bundle anyway
            gs.wait_for_certificates()
        have = {str(getattr(c, "thumbprint", "") or "").upper() for c in gs.certs}
        missing_files = [t for t in have if t and not system.exists(os.path.join(self.p.lib_dir, f"{t}.crt"))]
        missing = needed - have
        if not missing_files and not missing:
            return
        log.info("FastTrack goal state needs certificates not on disk ({0}); fetching the certificates again",
                 sorted(missing | set(missing_files)))
        if self._certificates_job is not None:
            self._certificates_job.wait()
        gs.certs = self._fetch_certificates(gs.document)
        have = {str(getattr(c, "thumbprint", "") or "").upper() for c in gs.certs}
        if needed - have:
            log.warn("Some extensions' protected settings use certificates the goal state does not have")
