"""The goal-state update cycle (01 §4.3, 02 §4): when to poll the WireServer and vmSettings, what to fetch
on a change, and the certificate helper job a new bundle starts.

Kept apart from goalstate.py (the documents and their parsers) so that code needing only the models does
not carry the polling state machine; both stay on the ext-handler child's lean import footprint.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

from guestagent import events, log
from guestagent.errors import (
    ProtocolError,
    VmSettingsNotSupported,
    VmSettingsParseError,
    VmSettingsSupportStopped,
    disk_full,
)
from guestagent.osutil import system
from guestagent.protocol.certificates import (
    CertificateList,
    CertificatesJob,
    CertSummary,
    process_certificates_isolated,
)
from guestagent.protocol.extconfig import (
    ExtensionsGoalState,
    empty_goal_state,
    parse_extensions_config,
    parse_vm_settings,
)
from guestagent.protocol.goalstate import (
    GoalState,
    GoalStateDocument,
    parse_certificates_document,
    parse_goal_state,
    parse_hosting_env,
    parse_on_hold,
    parse_remote_access,
    parse_shared_config,
)
from guestagent.protocol.history import History
from guestagent.protocol.hostplugin import HostPluginClient, VmSettingsResponse
from guestagent.protocol.wireserver import CIPHER_3DES, CIPHER_AES, WireClient
from guestagent.timestamps import MIN_TIMESTAMP

#: While vmSettings answers, the longest a change that reaches only the WireServer (new certificates, JIT
#: users: vmSettings does not move) goes unseen, in seconds (docs/benchmarks.md; upstream: one period).
WIRE_SERVER_POLL = 30.0


def _settings_thumbprints(egs: ExtensionsGoalState) -> set[str]:
    """Thumbprints named by settings that carry protected settings (02 §4.3)."""
    return {s.certificate_thumbprint.upper() for ext in egs.extensions for s in ext.settings
            if s.protected_settings and s.certificate_thumbprint}


def _thumbprints(certs: list[CertSummary]) -> set[str]:
    return {c.thumbprint.upper() for c in certs}


class GoalStateUpdater:
    """Owns the "what changed" state between updates of one :class:`~guestagent.protocol.wire.WireProtocol`.

    Polling (issue 3 item 10): while the HostGAPlugin serves vmSettings, each update asks it first
    (``If-None-Match`` → 304) and fetches ``?comp=goalstate`` only when the vmSettings ETag moved (any
    source: a Fabric goal state with new extensions changes ``inSvdSeqNo`` and the ETag), when forced, or
    when the last WireServer fetch is older than :data:`WIRE_SERVER_POLL` — changes that reach only the
    WireServer (tenant certificate rotation, JIT users) do not move vmSettings. Without vmSettings, or
    when the request fails, the WireServer is polled every update as upstream does.

    Collaborators: the WireServer and HostGAPlugin clients, the history, ``fetch_vm_settings(force)`` (one
    /vmSettings request with the facade's 410 → refresh) and ``download_text(uri)`` (an artifact through
    the facade's channels: the InVMArtifactsProfileBlob). ``async_certificates`` (the ext-handler child sets
    it once its first goal state is in): a new bundle is decrypted by a ``certificates.CertificatesJob``;
    only :meth:`GoalState.wait_for_certificates` waits for it.
    """

    __slots__ = ("_certificates_job", "_last_ws_fetch", "_parse_error_etags", "_vm_egs", "_vm_etag_seen",
                 "_vm_etag_used", "_vm_response", "async_certificates", "clock", "download_text", "fast_track_enabled",
                 "fetch_vm_settings", "gs", "history", "host_plugin", "lib_dir", "wire")

    def __init__(self, wire: WireClient, host_plugin: HostPluginClient, history: History, lib_dir: str, *,
                 fetch_vm_settings: Callable[[bool], VmSettingsResponse], download_text: Callable[[str], bytes],
                 fast_track_enabled: bool, async_certificates: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.wire = wire
        self.host_plugin = host_plugin
        self.history = history
        self.lib_dir = lib_dir
        self.fetch_vm_settings = fetch_vm_settings
        self.download_text = download_text
        self.fast_track_enabled = fast_track_enabled
        self.async_certificates = async_certificates
        self.clock = clock
        self.gs: Optional[GoalState] = None
        self._vm_egs: Optional[ExtensionsGoalState] = None
        self._vm_etag_used: Optional[str] = None
        self._vm_etag_seen: Optional[str] = None
        self._vm_response: Optional[VmSettingsResponse] = None  # this update's answer, announced after the WS
        self._parse_error_etags: set[str] = set()
        self._last_ws_fetch: Optional[float] = None
        self._certificates_job: Optional[CertificatesJob] = None

    def _event(self, op: str, message: str, is_success: bool = True, log_event: bool = True, **kw: str) -> None:
        """A telemetry event of the goal-state update, logged as upstream logs it."""
        if log_event:
            (log.info if is_success else log.warn)("{0}", message)
        events.add_event(op, message=message, is_success=is_success, log_event=False, lib_dir=self.lib_dir, **kw)

    def _fetch_ws(self) -> tuple[str, GoalStateDocument]:
        text = self.wire.fetch_goal_state_xml()
        doc = parse_goal_state(text)
        self.host_plugin.update_headers(doc.container_id, doc.role_config_name)
        self._last_ws_fetch = self.clock()
        return text, doc

    def _vm_settings_first(self, force: bool) -> bool:
        return (not force and self.gs is not None and self._last_ws_fetch is not None and self.fast_track_enabled
                and self.host_plugin.supports_vm_settings and self._vm_etag_seen is not None
                and self.clock() - self._last_ws_fetch < WIRE_SERVER_POLL)

    def update(self, force: bool = False) -> GoalState:
        try:
            return self._update(force)
        except BaseException:
            self._vm_etag_seen = None  # a change seen in vmSettings but not applied: ask the WireServer next time
            raise

    def _update(self, force: bool) -> GoalState:
        self._vm_response = None
        if force:
            self._event(events.WALAEventOperation.GoalState, "Refreshing goal state and vmSettings")
        if self._vm_settings_first(force):
            try:
                vm, vm_changed, vm_moved = self._vm_settings(False)
            except VmSettingsSupportStopped as e:
                text, doc = self._fetch_ws()
                return self._support_stopped(doc, text, e.timestamp)
            except Exception:
                self._fetch_ws()  # as before: the WireServer is polled, then the update fails this cycle
                raise
            if not vm_moved and self.host_plugin.supports_vm_settings and self.gs is not None:
                self.gs.fast_track_supported = True
                return self.gs
            text, doc = self._fetch_ws()
        else:
            text, doc = self._fetch_ws()
            vm, vm_changed = None, False
            if self.fast_track_enabled:
                try:
                    vm, vm_changed, _ = self._vm_settings(force)
                except VmSettingsSupportStopped as e:
                    return self._support_stopped(doc, text, e.timestamp)
        ws_changed = force or self.gs is None or doc.incarnation != self.gs.incarnation
        if ws_changed:
            self._event(events.WALAEventOperation.GoalState,
                        f"Fetched a new incarnation for the WireServer goal state [incarnation {doc.incarnation}]")
        if self._vm_response is not None:
            self._announce_vm_settings(self._vm_response)
            self._vm_response = None
        if not ws_changed and not vm_changed and self.gs is not None:
            self.gs.document = doc
            self.gs.fast_track_supported = self.host_plugin.supports_vm_settings
            return self.gs
        tag = doc.incarnation if vm is None else f"{doc.incarnation}-{self._vm_etag_used}"
        current = self.gs.extensions_goal_state if self.gs is not None else None
        new = GoalState(document=doc, extensions_goal_state=current or empty_goal_state(doc.incarnation),
                        history_folder=self.history.start(tag))
        if ws_changed:
            self.history.save_goal_state(text)
        if vm_changed:
            vm_settings = self.host_plugin.last_vm_settings()
            if vm_settings is not None:
                self.history.save_vm_settings(vm_settings.text)
        ws_egs = self._fetch_full(new) if ws_changed else None
        if not ws_changed and self.gs is not None:
            new.hosting_env, new.shared_config = self.gs.hosting_env, self.gs.shared_config
            new.certs, new.remote_access = self.gs.certs, self.gs.remote_access
            new.certificates_job = self.gs.certificates_job
        if ws_egs is not None and vm is not None:
            candidate = vm if vm.created_on_timestamp > ws_egs.created_on_timestamp else ws_egs
        else:
            candidate = ws_egs if ws_egs is not None else vm
        if candidate is None or (current is not None
                                 and candidate.created_on_timestamp < current.created_on_timestamp):
            candidate = current
        if candidate is not None:
            new.extensions_goal_state = candidate
        new.fast_track_supported = self.host_plugin.supports_vm_settings
        if candidate is not None and candidate.source == "FastTrack" and candidate is not current:
            self._check_fast_track_certs(new)
        self.gs = new
        return new

    def _announce_vm_settings(self, resp: VmSettingsResponse) -> None:
        """GoalState events for vmSettings HGAP sent (a 200, not a 304), as upstream's (and, from Fabric, that
        they are ignored)."""
        if not resp.updated:
            return
        self._event(events.WALAEventOperation.GoalState,
                    f"Fetched new vmSettings [HostGAPlugin correlation ID: {resp.correlation_id} eTag: {resp.etag} "
                    f"source: {resp.source}]")
        if resp.source == "Fabric":
            self._event(events.WALAEventOperation.GoalState, "The vmSettings originated via Fabric; will ignore them.")

    def _vm_settings(self, force: bool) -> tuple[Optional[ExtensionsGoalState], bool, bool]:
        """(FastTrack extensions goal state or None, it changed, the vmSettings ETag moved — any source)."""
        try:
            resp = self.fetch_vm_settings(force)
        except VmSettingsSupportStopped:
            self._vm_etag_seen = None
            raise
        except VmSettingsNotSupported:
            self._vm_etag_seen = None
            return None, False, False
        moved = resp.etag != self._vm_etag_seen
        self._vm_etag_seen = resp.etag
        self._vm_response = resp
        if resp.source == "Fabric":
            return None, False, moved
        if self._vm_egs is None or resp.etag != self._vm_etag_used or (resp.updated and force):
            try:
                egs = parse_vm_settings(resp.text, resp.etag)
            except Exception as e:
                self._vm_etag_seen = None  # not understood: the next update polls the WireServer too
                if resp.etag not in self._parse_error_etags:
                    self._parse_error_etags.add(resp.etag)
                    self.history.start(resp.etag)
                    self.history.save_vm_settings(resp.text)
                if isinstance(e, VmSettingsParseError):
                    raise
                raise VmSettingsParseError(f"Error parsing vmSettings [etag {resp.etag}]", e) from None
            changed = resp.etag != self._vm_etag_used or force
            self._vm_egs, self._vm_etag_used = egs, resp.etag
            return egs, changed, moved
        return self._vm_egs, False, moved

    def _support_stopped(self, doc: GoalStateDocument, text: str, fast_track_timestamp: str) -> GoalState:
        self._event(events.WALAEventOperation.VmSettings,
                    "The HGAP stopped supporting vmSettings; will fetched the goal state from the WireServer.")
        new = GoalState(document=doc, extensions_goal_state=empty_goal_state(doc.incarnation),
                        history_folder=self.history.start(doc.incarnation))
        self.history.save_goal_state(text)
        egs = self._fetch_full(new)
        if egs.created_on_timestamp < (fast_track_timestamp or MIN_TIMESTAMP):
            egs.is_outdated = True
            self._event(events.WALAEventOperation.VmSettings,
                        f"Fetched a Fabric goal state older than the most recent FastTrack goal state; will skip it.\n"
                        f"Fabric:    {egs.created_on_timestamp}\nFastTrack: {fast_track_timestamp}")
        new.extensions_goal_state = egs
        self._vm_egs, self._vm_etag_used = None, None
        self.gs = new
        return new

    # --- the full WireServer goal state ------------------------------------------------------------------
    def _fetch_full(self, gs: GoalState) -> ExtensionsGoalState:
        """ExtensionsConfig (+ profile blob), HostingEnvironmentConfig, SharedConfig, Certificates,
        RemoteAccessInfo, in upstream's order; any failure but Certificates fails the update."""
        doc = gs.document
        try:
            egs = self._fetch_extensions_config(doc)
            if doc.hosting_env_uri:
                gs.hosting_env = parse_hosting_env(self.wire.fetch(doc.hosting_env_uri))
                self.history.save("HostingEnvironmentConfig.xml", gs.hosting_env.xml_text)
            if doc.shared_config_uri:
                gs.shared_config = parse_shared_config(self.wire.fetch(doc.shared_config_uri))
                self._write_shared_config(gs.shared_config.xml_text)
                self.history.save("SharedConfig.xml", gs.shared_config.xml_text)
            self._certificates(gs)
            if doc.remote_access_uri:
                gs.remote_access = parse_remote_access(self.wire.fetch(doc.remote_access_uri,
                                                                       self.wire.encrypted_headers(CIPHER_AES)))
                self.history.save("RemoteAccess.xml", gs.remote_access.xml_text)
        except Exception as e:
            raise ProtocolError("Error fetching goal state", e) from None
        return egs

    def _write_shared_config(self, text: str) -> None:
        """SharedConfig.xml in the lib dir is for other tools on the VM; a full disk (issue 13 W2) does not
        stop the goal state for it — the extensions then meet the full disk themselves and report it."""
        try:
            system.write_file(os.path.join(self.lib_dir, "SharedConfig.xml"), text, fsync=False)
        except OSError as e:
            if not disk_full(e):
                raise
            log.warn("Could not write SharedConfig.xml, the disk is full: {0}", e)

    def _fetch_extensions_config(self, doc: GoalStateDocument) -> ExtensionsGoalState:
        if not doc.extensions_config_uri:
            return empty_goal_state(doc.incarnation)
        text = self.wire.fetch(doc.extensions_config_uri)
        egs = parse_extensions_config(text, incarnation=doc.incarnation)
        self.history.save_extensions_config(text)
        egs.on_hold = self._on_hold(egs.artifacts_profile_blob)
        return egs

    def _on_hold(self, blob: Optional[str]) -> bool:
        """The InVMArtifactsProfileBlob's onHold; every outcome but "on hold" is an ArtifactsProfileBlob event
        worded as upstream's."""
        op = events.WALAEventOperation.ArtifactsProfileBlob
        if not blob or not blob.strip():
            self._event(op, "ExtensionsConfig does not include a InVMArtifactsProfileBlob; will assume the VM is "
                            "not on hold")
            return False
        try:
            text = self.download_text(blob).decode("utf-8-sig", errors="replace")
        except Exception as e:
            self._event(op, f"Can't download the artifacts profile blob; will assume the VM is not on hold. {e}",
                        is_success=False)
            return False
        if not text:
            self._event(op, "The artifacts profile blob is empty; will assume the VM is not on hold.")
            return False
        try:
            return parse_on_hold(text)
        except Exception as e:
            self._event(op, f"Can't parse the artifacts profile blob; will assume the VM is not on hold. Error: {e}",
                        is_success=False)
            return False

    def _certificates(self, gs: GoalState) -> None:
        """Certificates (01 §7.2): fetched now; decrypted now, or by a CertificatesJob (async_certificates)."""
        if self._certificates_job is not None:
            self._certificates_job.wait()  # one bundle at a time: both would write the same files
            self._certificates_job = None
        doc = gs.document
        if not self.async_certificates or not doc.certificates_uri:
            gs.certs = self._fetch_certificates(doc)
            self.history.save_certificates(gs.certs)
            return
        first: tuple[str, str | Exception]
        try:  # the request stays on this thread, in upstream's order; only the decryption moves
            first = (CIPHER_AES, self.wire.fetch(doc.certificates_uri, self.wire.encrypted_headers(CIPHER_AES)))
        except Exception as e:
            first = (CIPHER_AES, e)
        history = self.history
        folder = gs.history_folder

        def save(certs: list[CertSummary]) -> None:
            if history.enabled and folder:
                copy = History(history.lib_dir, enabled=True)
                copy.current = folder
                copy.save_certificates(certs)

        job = CertificatesJob(lambda: self._fetch_certificates(doc, first), save)
        job.history_folder = folder
        gs.certificates_job = self._certificates_job = job.start()

    def _fetch_certificates(self, doc: GoalStateDocument,
                            first: Optional[tuple[str, str | Exception]] = None) -> list[CertSummary]:
        """The first cipher that decrypts (AES128_CBC, then DES_EDE3_CBC); ``first``: (cipher, text or the
        error) already fetched for the first cipher."""
        if not doc.certificates_uri:
            return []
        for cipher in (CIPHER_AES, CIPHER_3DES):
            try:
                if first is not None and first[0] == cipher:
                    if isinstance(first[1], Exception):
                        raise first[1]
                    text = first[1]
                else:
                    text = self.wire.fetch(doc.certificates_uri, self.wire.encrypted_headers(cipher))
                parse_certificates_document(text)  # not a Certificates document: fails this cipher
                summary: CertificateList = process_certificates_isolated(text, self.lib_dir)
            except Exception as e:
                log.warn("Error fetching certificates with cipher {0}: {1}", cipher, e)
                continue
            if not summary.decrypt_failed:
                for cert in summary:  # upstream words it with the summary entry as Python prints a dict
                    self._event(events.WALAEventOperation.GoalStateCertificates,
                                f"Downloaded certificate {cert.to_json()}")
                if summary.error:
                    self._event(events.WALAEventOperation.GoalStateCertificates,
                                f"Error fetching the goal state certificates: {summary.error}", is_success=False)
                return summary
            log.warn("Certificates requested with cipher {0} could not be decrypted", cipher)
        return []

    def _check_fast_track_certs(self, gs: GoalState) -> None:
        """02 §4.1 step 9 and §4.3: a FastTrack goal state needs its tenant certificates on disk."""
        needed = _settings_thumbprints(gs.extensions_goal_state)
        if gs.certificates_pending:
            gs.wait_for_certificates_named(needed, self.lib_dir)
            if gs.certificates_pending:
                return  # every needed .prv is on disk; the running job rewrites the bundle anyway
        have = _thumbprints(gs.certs)
        missing_files = [t for t in have if t and not system.exists(os.path.join(self.lib_dir, f"{t}.crt"))]
        missing = needed - have
        if not missing_files and not missing:
            return
        log.info("FastTrack goal state needs certificates not on disk ({0}); fetching the certificates again",
                 sorted(missing | set(missing_files)))
        if self._certificates_job is not None:
            self._certificates_job.wait()
        gs.certs = self._fetch_certificates(gs.document)
        if needed - _thumbprints(gs.certs):
            log.warn("Some extensions' protected settings use certificates the goal state does not have")
