"""The protocol facade used by the daemon and the ext-handler child (guestagent.protocol.wire).

``detect(conf, lib_dir)`` runs full endpoint detection (daemon start), ``from_files(conf, lib_dir)``
takes the protocol/endpoint files (ext-handler child, no traffic). Both return a :class:`WireProtocol`;
its ports are overridable so tests talk to the fabric emulator on 127.0.0.1.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Callable, Optional

from guestagent import log
from guestagent.conf import Config
from guestagent.errors import (
    AgentError,
    ExtensionError,
    HttpError,
    InvalidContainerError,
    ProtocolError,
    ProtocolNotFoundError,
    ResourceGoneError,
)
from guestagent.protocol import endpoint
from guestagent.protocol.certificates import ensure_transport_cert
from guestagent.protocol.extconfig import empty_goal_state
from guestagent.protocol.goalstate import GoalState, parse_goal_state
from guestagent.protocol.goalstate_updater import GoalStateUpdater
from guestagent.protocol.history import History
from guestagent.protocol.hostplugin import HostPluginClient, VmSettingsResponse
from guestagent.protocol.http import DOCUMENT, PACKAGE, HttpClient, Kind
from guestagent.protocol.status import to_json, upload_status
from guestagent.protocol.wireserver import WireClient

DOWNLOAD_BUDGET = 300.0
DOWNLOAD_ERROR_CODE = 1001

#: Process-wide: which artifact channel is tried first (02 §5.2); starts as direct.
_direct_is_primary = True


def _port(explicit: Optional[int], env: str, default: int) -> int:
    """Explicit argument, else the GUESTAGENT_*_PORT test hook, else the platform port."""
    if explicit is not None:
        return int(explicit)
    value = os.environ.get(env)
    return int(value) if value and value.isdigit() else default


class WireProtocol:
    """One WireServer endpoint with its HostGAPlugin: goal state, health, status, artifacts, telemetry."""

    def __init__(self, endpoint: str, lib_dir: str = "/var/lib/waagent", conf: Optional[Config] = None,
                 wire_port: Optional[int] = None, hgap_port: Optional[int] = None,
                 sleep: Optional[Callable[[float], None]] = None, save_history: bool = True):
        self.endpoint = endpoint
        self.lib_dir = lib_dir
        self.conf = conf = conf if conf is not None else Config()
        self.http = HttpClient(proxy_host=conf.http_proxy_host, proxy_port=conf.http_proxy_port,
                               sleep=sleep, allow_http=conf.os_allow_http)
        self.wire = WireClient(endpoint, lib_dir, _port(wire_port, "GUESTAGENT_WIRE_PORT", 80),
                               _port(hgap_port, "GUESTAGENT_HGAP_PORT", 32526), http=self.http)
        self.host_plugin = HostPluginClient(endpoint, self.wire.hgap_port, lib_dir, http=self.http)
        self.fast_track_enabled = conf.debug_enable_fast_track
        self.save_history = save_history
        self.goal_state: Optional[GoalState] = None
        self.manifest_location: Optional[str] = None
        self.history = History(lib_dir, enabled=save_history)
        self.updater = GoalStateUpdater(self.wire, self.host_plugin, self.history, lib_dir,
                                        fetch_vm_settings=self.fetch_vm_settings,
                                        download_text=self._download_profile_blob,
                                        fast_track_enabled=self.fast_track_enabled)
        #: Detection without certificates left the transport certificate to finish_detection().
        self.transport_cert_pending = False

    @property
    def wire_port(self) -> int:
        return self.wire.wire_port

    @property
    def hgap_port(self) -> int:
        return self.wire.hgap_port

    # --- goal state ----------------------------------------------------------------------------------
    def update_goal_state(self, force: bool = False) -> GoalState:
        """Fetch ?comp=goalstate (+ vmSettings); on a change fetch the rest (01 §4.3, 02 §4.1)."""
        self.goal_state = self.updater.update(force=force)
        return self.goal_state

    def fetch_goal_state_document(self) -> GoalState:
        """Only ``?comp=goalstate``: incarnation, container and role instance (all a health report
        needs) and the HostGAPlugin headers; nothing else is fetched, saved or decrypted. The next
        update_goal_state() fetches the whole goal state."""
        doc = parse_goal_state(self.wire.fetch_goal_state_xml())
        self.host_plugin.update_headers(doc.container_id, doc.role_config_name)
        self.goal_state = GoalState(document=doc, extensions_goal_state=empty_goal_state(doc.incarnation))
        return self.goal_state

    def finish_detection(self) -> None:
        """Make the transport certificate a detection without certificates skipped (the daemon, after
        Ready, before the ext-handler child needs it for its first Certificates request)."""
        if self.transport_cert_pending:
            self.transport_cert_pending = False
            make_transport_cert(self.lib_dir)

    def refresh_headers(self) -> None:
        """Re-read only the goal-state XML to refresh the HGAP container id / config name."""
        doc = parse_goal_state(self.wire.fetch_goal_state_xml())
        self.host_plugin.update_headers(doc.container_id, doc.role_config_name)
        if self.goal_state is not None:
            self.goal_state.document = doc

    def _current(self) -> GoalState:
        return self.goal_state if self.goal_state is not None else self.update_goal_state()

    # --- health (01 §9, 10) ----------------------------------------------------------------------------
    def report_ready(self) -> None:
        gs = self._current()
        self.wire.report_health(gs.incarnation, gs.container_id, gs.role_instance_id, "Ready")

    def report_not_ready(self, substatus: str, description: str) -> None:
        gs = self._current()
        self.wire.report_health(gs.incarnation, gs.container_id, gs.role_instance_id, "NotReady", substatus,
                                description)

    def report_role_properties(self, thumbprint: str) -> None:
        gs = self._current()
        self.wire.report_role_properties(gs.container_id, gs.role_instance_id, thumbprint)

    # --- status (02 §6) ---------------------------------------------------------------------------------
    def upload_status(self, vm_status: dict) -> str:
        """Upload the aggregate status; returns the channel used. Saves waagent_status.json in history."""
        egs = self._current().extensions_goal_state
        if not egs.status_upload_blob:
            egs = self.update_goal_state(force=True).extensions_goal_state
        if not egs.status_upload_blob:
            raise ProtocolNotFoundError("Status upload uri is missing")
        text = to_json(vm_status)
        self.history.save_status(text)
        return upload_status(self.http, self.host_plugin, egs.status_upload_blob, text, egs.status_upload_blob_type,
                             on_gone=self._refresh_headers_quietly)

    def _refresh_headers_quietly(self) -> None:
        try:
            self.refresh_headers()
        except AgentError as e:
            log.warn("Could not refresh the goal state headers: {0}", e)

    # --- vmSettings --------------------------------------------------------------------------------------
    def fetch_vm_settings(self, force: bool = False) -> VmSettingsResponse:
        """One /vmSettings request (see HostPluginClient.fetch_vm_settings), 410 → refresh + retry once."""
        try:
            return self.host_plugin.fetch_vm_settings(force)
        except ResourceGoneError:
            self.refresh_headers()
            return self.host_plugin.fetch_vm_settings(force)

    # --- artifacts (02 §5) --------------------------------------------------------------------------------
    def _direct(self, uri: str, kind: Kind) -> bytes:
        resp = self.http.get(uri, use_proxy=True, kind=kind)
        if not resp.ok:
            raise HttpError(f"[HTTP Failed] GET {log.redact(uri)} -- Status Code {resp.status}", status=resp.status)
        return resp.body

    def _via_host_plugin(self, uri: str, is_text: bool, verify: bool, manifest_location: Optional[str],
                         kind: Kind) -> bytes:
        for attempt in range(2):
            try:
                resp = self.host_plugin.fetch_artifact(uri, kind, manifest_location, verify, is_text)
            except (ResourceGoneError, InvalidContainerError):
                if attempt:
                    raise
                self.refresh_headers()
                continue
            if not resp.ok:
                raise HttpError(f"[HostGAPlugin] GET {log.redact(uri)} -- Status Code {resp.status}",
                                status=resp.status)
            return resp.body
        raise ProtocolError("unreachable")

    def download_artifact(self, uri_list: list[str], is_text: bool = False, verify: Optional[bool] = None,
                          manifest_location: Optional[str] = None, what: str = "artifact",
                          clock: Callable[[], float] = time.monotonic) -> bytes:
        """Try each URL (shuffled) on the primary channel then the other; flip the primary when the
        secondary wins. ``verify`` defaults to "the current goal state came from FastTrack". Text artifacts
        (manifests, the artifacts profile) are documents; the others are packages, with their larger cap."""
        global _direct_is_primary
        if verify is None:
            verify = self.goal_state is not None and self.goal_state.extensions_goal_state.source == "FastTrack"
        if manifest_location is None and not is_text:
            manifest_location = self.manifest_location
        kind = DOCUMENT if is_text else PACKAGE
        uris = list(uri_list)
        random.shuffle(uris)
        start = clock()
        errors: list[str] = []
        for uri in uris:
            if clock() - start > DOWNLOAD_BUDGET:
                raise _download_error(f"Timeout downloading {what}")
            direct = lambda u=uri: self._direct(u, kind)  # noqa: E731
            hgap = lambda u=uri: self._via_host_plugin(u, is_text, bool(verify), manifest_location, kind)  # noqa: E731
            channels = [(direct, True), (hgap, False)] if _direct_is_primary else [(hgap, False), (direct, True)]
            for index, (fetch, is_direct) in enumerate(channels):
                try:
                    data = fetch()
                except (AgentError, OSError) as e:
                    errors.append(log.redact(str(e)))
                    continue
                if index == 1:
                    _direct_is_primary = is_direct
                    log.info("Default channel changed to {0} channel.", "Direct" if is_direct else "HostGAPlugin")
                return data
        raise _download_error(f"Failed to download {what} from all URIs: {errors[-3:]}")

    def _download_profile_blob(self, uri: str) -> bytes:
        return self.download_artifact([uri], is_text=True, verify=False, what="artifacts profile blob")

    def download_manifest(self, uri_list: list[str]) -> str:
        """A manifest (text artifact); the winning URL becomes x-ms-artifact-manifest-location."""
        last: Optional[BaseException] = None
        for uri in uri_list:
            try:
                text = self.download_artifact([uri], is_text=True, what="manifest").decode("utf-8-sig")
                self.manifest_location = uri
                return text
            except ExtensionError as e:
                last = e
        raise last if last is not None else _download_error("No manifest URIs")

    # --- telemetry and health signals ------------------------------------------------------------------
    def post_telemetry(self, xml_body: str, flush: bool = False) -> None:
        self.wire.post_telemetry(xml_body, flush=flush)

    def post_health_observations(self, observations: list[dict]) -> None:
        self.wire.post_health_service(observations)

    def upload_logs(self, content: bytes) -> None:
        self.host_plugin.put_vm_agent_log(content)


def make_transport_cert(lib_dir: str, regenerate: bool = True) -> None:
    """TransportPrivate.pem/TransportCert.pem (errors logged by ensure_transport_cert, as upstream does);
    the crypto modules are imported only then, when a certificate is made."""
    ensure_transport_cert(lib_dir, regenerate=regenerate)


def _download_error(msg: str) -> ExtensionError:
    return ExtensionError(msg, code=DOWNLOAD_ERROR_CODE)


# --- construction ------------------------------------------------------------------------------------
def from_files(conf: Config, lib_dir: Optional[str] = None, **kw: Any) -> WireProtocol:
    """The fast path (01 §1.2): endpoint from WireServerEndpoint, no traffic, no certificate work."""
    lib_dir = lib_dir or conf.lib_dir
    return WireProtocol(endpoint.read_endpoint(lib_dir), lib_dir, conf, **kw)


def detect(conf: Config, lib_dir: Optional[str] = None, *, endpoint_ip: Optional[str] = None,
           sleep: Optional[Callable[[float], None]] = None, attempts: Optional[int] = None,
           transport_cert: bool = True, certificates: bool = True, **kw: Any) -> WireProtocol:
    """Full detection (01 §1.3): find the endpoint, check versions, make the transport certificate,
    fetch the whole goal state; then write WireServerEndpoint and Protocol.

    ``certificates=False`` is for a daemon that provisions nothing from certificates (provisioning
    disabled, cloud-init, already provisioned, SSH keys given by value): no transport certificate and
    only the goal-state document (what health reports need) -- no cryptography import, no certificate
    decryption. The ext-handler child fetches the whole goal state with its certificates; the caller
    makes the transport certificate before the child starts (:meth:`WireProtocol.finish_detection`)."""
    lib_dir = lib_dir or conf.lib_dir

    def probe(ip: str) -> WireProtocol:
        protocol = WireProtocol(ip, lib_dir, conf, sleep=sleep, **kw)
        protocol.wire.check_versions()
        if not certificates:
            protocol.transport_cert_pending = transport_cert
            protocol.fetch_goal_state_document()
            return protocol
        if transport_cert:
            make_transport_cert(lib_dir)
        protocol.update_goal_state(force=True)
        return protocol

    return endpoint.detect(conf, lib_dir, probe, endpoint_ip=endpoint_ip, sleep=sleep, attempts=attempts)


__all__ = ["GoalState", "ProtocolError", "ProtocolNotFoundError", "WireProtocol", "detect", "from_files",
           "make_transport_cert"]
