"""HostGAPlugin client (spec 02): /versions, /vmSettings, /extensionArtifact, /status, /vmAgentLog, /health.

The container id and role config name headers come from the latest ?comp=goalstate; the facade calls
:meth:`HostPluginClient.update_headers` after every fetch. Nothing here goes through a proxy.
"""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

from guestagent import events, log
from guestagent.errors import (
    HttpError,
    ProtocolError,
    ResourceGoneError,
    VmSettingsNotSupported,
    VmSettingsSupportStopped,
)
from guestagent.osutil import system
from guestagent.protocol.http import (
    LOG_UPLOAD,
    LOG_UPLOAD_TIMEOUT,
    RETRY_CODES,
    HttpClient,
    Kind,
    Response,
    failed_at_hostplugin,
    response_error,
)
from guestagent.timestamps import MIN_TIMESTAMP, format_timestamp, ticks_to_timestamp, utc_seconds
from guestagent.version import AGENT_NAME, AGENT_VERSION

API_VERSION = "2015-09-01"
STORAGE_VERSION = "2014-02-14"
MIN_VM_SETTINGS_VERSION = (1, 0, 8, 133)
NOT_SUPPORTED_RECHECK = 6 * 3600.0
FAST_TRACK_FILE = "fast_track.json"
PAGE_SIZE = 512
MAX_PAGE = 4 * 1024 * 1024
#: The status upload's HealthService observation: at most one a minute, unhealthy after 5 minutes of failures.
STATUS_REPORTING_PERIOD = 60.0
FAILURE_GRACE = 5 * 60.0
MAX_OBSERVATIONS = 10


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except (AttributeError, ValueError):
        return ()


@dataclass
class VmSettingsResponse:
    text: str
    etag: str
    updated: bool
    source: str  # extensionGoalStatesSource
    hgap_version: str
    correlation_id: str = ""  # the x-ms-client-correlationid of the request that fetched it


@dataclass
class BlobRequest:
    """One storage request of 02 §6.2 (direct PUT or one HGAP envelope)."""

    uri: str
    headers: list[tuple[str, str]]
    content: Optional[bytes]


def page_uri(sas_url: str) -> str:
    return sas_url + ("&comp=page" if "?" in sas_url else "?comp=page")


def blob_requests(sas_url: str, data: bytes, blob_type: str, pad: bytes = b"\0",
                  now: Optional[float] = None) -> list[BlobRequest]:
    """The storage requests that write ``data`` as a BlockBlob, or a PageBlob (create + 512-aligned pages)."""
    date = utc_seconds(now)
    if blob_type != "PageBlob":
        return [BlobRequest(sas_url, [("Content-Length", str(len(data))), ("x-ms-blob-type", "BlockBlob"),
                                      ("x-ms-date", date), ("x-ms-version", STORAGE_VERSION)], data)]
    size = (len(data) + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
    out = [BlobRequest(sas_url, [("Content-Length", "0"), ("x-ms-blob-content-length", str(size)),
                                 ("x-ms-blob-type", "PageBlob"), ("x-ms-date", date),
                                 ("x-ms-version", STORAGE_VERSION)], None)]
    start = 0
    while start < len(data):
        chunk = data[start:start + MAX_PAGE]
        padded = chunk + pad * ((PAGE_SIZE - len(chunk) % PAGE_SIZE) % PAGE_SIZE)
        end = start + len(padded)
        out.append(BlobRequest(page_uri(sas_url), [("Content-Length", str(len(padded))), ("x-ms-date", date),
                                                   ("x-ms-range", f"bytes={start}-{end - 1}"),
                                                   ("x-ms-page-write", "update"),
                                                   ("x-ms-version", STORAGE_VERSION)], padded))
        start += len(chunk)
    return out


class VmSettingsErrorReporter:
    """Upstream's telemetry of vmSettings requests: the first 3 errors of each hour as VmSettings events
    (``[<category>] <error>``) and, once an hour, a VmSettingsSummary of the counts."""

    MAX_ERRORS = 3
    PERIOD = 3600.0
    COUNTERS = {"ServerError": "serverErrors", "ClientError": "clientErrors", "Timeout": "timeouts",
                "RequestFailed": "failedRequests"}

    def __init__(self, lib_dir: str, clock: Callable[[], float]):
        self.lib_dir = lib_dir
        self.clock = clock
        self._reset()

    def _reset(self) -> None:
        self.counts = {"requests": 0, "errors": 0, "serverErrors": 0, "clientErrors": 0, "timeouts": 0,
                       "failedRequests": 0}
        self.next_summary = self.clock() + self.PERIOD

    def request(self) -> None:
        self.counts["requests"] += 1

    def error(self, message: str, category: str) -> None:
        self.counts["errors"] += 1
        if category in self.COUNTERS:
            self.counts[self.COUNTERS[category]] += 1
        if self.counts["errors"] <= self.MAX_ERRORS:
            events.add_event(events.WALAEventOperation.VmSettings, message=f"[{category}] {message}",
                             log_event=False, lib_dir=self.lib_dir)

    def summary(self) -> None:
        if self.clock() < self.next_summary:
            return
        message = json.dumps(self.counts)
        events.add_event(events.WALAEventOperation.VmSettingsSummary, message=message, log_event=False,
                         lib_dir=self.lib_dir)
        if self.counts["errors"]:
            log.info("[VmSettingsSummary] {0}", message)
        self._reset()


class HostPluginClient:
    def __init__(self, endpoint: str, port: int = 32526, lib_dir: str = "/var/lib/waagent",
                 http: Optional[HttpClient] = None, clock: Callable[[], float] = time.monotonic):
        self.endpoint = endpoint
        self.port = int(port)
        self.lib_dir = lib_dir
        self.http = http or HttpClient()
        self.clock = clock
        self.container_id = ""
        self.role_config_name = ""
        self.is_initialized = False
        self.is_available = False
        # vmSettings state (02 §3)
        self._vm_settings_cache: Optional[VmSettingsResponse] = None
        self._not_supported_until = 0.0
        self._supports_vm_settings = system.exists(os.path.join(lib_dir, FAST_TRACK_FILE))
        self.last_fast_track_timestamp = self._read_fast_track_timestamp()
        self.hgap_version: Optional[str] = None
        self.vm_settings_errors = VmSettingsErrorReporter(lib_dir, clock)
        # HealthService observations of the calls (the monitor posts them with its minute's observations)
        self.observations: list[dict] = []
        self._status_failing_since: Optional[float] = None
        self._status_last_reported: Optional[float] = None

    @property
    def base_url(self) -> str:
        return f"http://{self.endpoint}:{self.port}"

    def update_headers(self, container_id: str, role_config_name: str) -> None:
        self.container_id = container_id
        self.role_config_name = role_config_name

    def _headers(self, **extra: str) -> dict[str, str]:
        headers = {"x-ms-version": API_VERSION, "x-ms-containerid": self.container_id,
                   "x-ms-host-config-name": self.role_config_name}
        headers.update(extra)
        return headers

    # --- /versions (02 §2) ----------------------------------------------------------------------------
    def ensure_initialized(self) -> bool:
        """GET /versions until the plugin lists our API version; each call is observed (GuestAgentPluginVersions,
        the error as its value) and sent as InitializeHostPlugin, as upstream does."""
        if self.is_initialized:
            return self.is_available
        error, healthy = "", False
        try:
            resp = self.http.get(f"{self.base_url}/versions", {"x-ms-containerid": self.container_id})
            if resp.ok:
                healthy, self.is_available = True, API_VERSION in resp.text()
            else:
                error, healthy, self.is_available = response_error(resp), not failed_at_hostplugin(resp.status), False
                log.error("HostGAPlugin: Failed Get API versions: {0}", error)
        except HttpError as e:
            log.error("HostGAPlugin: Exception Get API versions: {0}", e)
            self.is_available = False
        self.observe("GuestAgentPluginVersions", healthy, error)
        self.is_initialized = self.is_available
        events.add_event(events.WALAEventOperation.InitializeHostPlugin, is_success=self.is_available,
                         log_event=False, lib_dir=self.lib_dir)
        return self.is_available

    def observe(self, name: str, healthy: bool, value: str = "") -> None:
        self.observations.append({"ObservationName": name, "IsHealthy": bool(healthy), "Description": "",
                                  "Value": value})
        del self.observations[:-MAX_OBSERVATIONS]

    def take_observations(self) -> list[dict]:
        taken, self.observations = self.observations, []
        return taken

    def _status_health(self, healthy: bool, error: str = "") -> None:
        """GuestAgentPluginStatus: at most once a minute; unhealthy once HGAP itself failed for 5 minutes."""
        now = self.clock()
        if healthy:
            self._status_failing_since = None
        elif self._status_failing_since is None:
            self._status_failing_since = now
        last = self._status_last_reported
        if last is not None and now < last + STATUS_REPORTING_PERIOD:
            return
        self._status_last_reported = now
        since = self._status_failing_since
        self.observe("GuestAgentPluginStatus", since is None or now - since < FAILURE_GRACE, error)

    def _require(self, what: str) -> None:
        if not self.ensure_initialized():
            raise ProtocolError(f"HostGAPlugin: {what} not available (the plugin did not answer /versions)")

    # --- /vmSettings (02 §3) ------------------------------------------------------------------------------
    def _read_fast_track_timestamp(self) -> str:
        path = os.path.join(self.lib_dir, FAST_TRACK_FILE)
        if not system.exists(path):
            return MIN_TIMESTAMP
        try:
            return str(json.loads(system.read_text(path) or "")["timestamp"])
        except (OSError, ValueError, KeyError, TypeError):
            return format_timestamp(datetime.now(timezone.utc))

    def _not_supported(self) -> None:
        stopped = self._supports_vm_settings
        self._supports_vm_settings = False
        self._not_supported_until = self.clock() + NOT_SUPPORTED_RECHECK
        self._vm_settings_cache = None
        version = self.hgap_version or "0.0.0.0"  # upstream's "unknown"
        if stopped:
            log.warn("The HostGAPlugin stopped supporting the vmSettings API. If there is a pending FastTrack goal "
                     "state, it will not be executed.")
            events.add_event(events.WALAEventOperation.VmSettings, is_success=False, log_event=False,
                             message=f"[VmSettingsSupportStopped] HostGAPlugin: {version}", lib_dir=self.lib_dir)
            raise VmSettingsSupportStopped(self.last_fast_track_timestamp)
        log.info("HostGAPlugin {0} does not support the vmSettings API. Will not use FastTrack.", version)
        events.add_event(events.WALAEventOperation.VmSettings, log_event=False,
                         message=f"[VmSettingsNotSupported] HostGAPlugin: {version}", lib_dir=self.lib_dir)
        raise VmSettingsNotSupported()

    def fetch_vm_settings(self, force: bool = False) -> VmSettingsResponse:
        """One GET /vmSettings. Raises VmSettingsNotSupported/-SupportStopped, ResourceGoneError, ProtocolError
        (worded and reported as upstream's); the caller parses the JSON (extconfig) and reports
        VmSettingsParseError."""
        if self._not_supported_until and self.clock() < self._not_supported_until:
            raise VmSettingsNotSupported()
        try:
            return self._fetch_vm_settings(force)
        finally:
            self.vm_settings_errors.summary()

    def _fetch_vm_settings(self, force: bool) -> VmSettingsResponse:
        correlation_id = str(uuid.uuid4())
        headers = self._headers(**{"x-ms-client-correlationid": correlation_id})
        cached = self._vm_settings_cache
        if cached is not None and not force:
            headers["if-none-match"] = cached.etag
        where = f"GET vmSettings [correlation ID: {correlation_id} eTag: {headers.get('if-none-match')}]"
        url = f"{self.base_url}/vmSettings"
        self.vm_settings_errors.request()
        try:
            resp = self.http.request("GET", url, None, headers, max_retry=1, retry_codes=())
        except ResourceGoneError:
            raise
        except HttpError as e:
            timeout = "timed out" in str(e)
            message = f"{where}: " + ("Timeout" if timeout else f"Request failed: {e}")
            self.vm_settings_errors.error(message, "Timeout" if timeout else "RequestFailed")
            raise ProtocolError(message) from None
        if resp.status == 304 and cached is not None:
            return VmSettingsResponse(cached.text, cached.etag, False, cached.source, cached.hgap_version,
                                      cached.correlation_id)
        if resp.status == 404:
            self._not_supported()
        if resp.status != 200:
            error = response_error(resp)
            if resp.status == 502:  # HGAP's own internal errors come as 502
                error = f"[Internal error in HostGAPlugin] {error}"
            message = f"{where}: {error}"
            self.vm_settings_errors.error(message, "ClientError" if 400 <= resp.status <= 499 else
                                          "ServerError" if 500 <= resp.status <= 599 else "HttpError")
            raise ProtocolError(message)
        etag = resp.header("etag")
        if etag is None:
            raise ProtocolError(f"{where}: The vmSettings response does not include an Etag header")
        text = resp.text()
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        version = str(doc.get("hostGAPluginVersion", "")) if isinstance(doc, dict) else ""
        source = str(doc.get("extensionGoalStatesSource", "UNKNOWN")) if isinstance(doc, dict) else "UNKNOWN"
        if isinstance(doc, dict) and version != self.hgap_version:
            log.info("HostGAPlugin version: {0}", version)
            events.add_event(events.WALAEventOperation.HostPlugin, message=f"HostGAPlugin version: {version}",
                             log_event=False, lib_dir=self.lib_dir)
            self.hgap_version = version
        if isinstance(doc, dict) and _version_tuple(version) < MIN_VM_SETTINGS_VERSION:
            self._not_supported()
        self._supports_vm_settings = True
        self._not_supported_until = 0.0
        if isinstance(doc, dict):
            self._record_fast_track(source, doc.get("extensionsLastModifiedTickCount"))
        result = VmSettingsResponse(text, etag, True, source, version, correlation_id)
        self._vm_settings_cache = result
        return result

    def _record_fast_track(self, source: str, ticks) -> None:
        path = os.path.join(self.lib_dir, FAST_TRACK_FILE)
        if source == "FastTrack":
            self.last_fast_track_timestamp = ticks_to_timestamp(ticks)
            system.write_file(path, json.dumps({"timestamp": self.last_fast_track_timestamp}), fsync=False)
        else:
            system.remove(path)

    @property
    def supports_vm_settings(self) -> bool:
        return self._supports_vm_settings

    def last_vm_settings(self) -> Optional[VmSettingsResponse]:
        """The last 200 answer to /vmSettings (what a 304 stands for); None when there is none."""
        return self._vm_settings_cache

    # --- /extensionArtifact (02 §5.3) -------------------------------------------------------------------
    def fetch_artifact(self, uri: str, kind: Kind, manifest_location: Optional[str] = None, verify: bool = False,
                       is_text: bool = False) -> Response:
        """GET the storage URL through the plugin; text artifacts also retry on 400."""
        self._require("extensionArtifact")
        extra = {"x-ms-artifact-location": uri}
        if manifest_location:
            extra["x-ms-artifact-manifest-location"] = manifest_location
        if verify:
            extra["x-ms-verify-from-artifacts-blob"] = "true"
        codes = (*RETRY_CODES, 400) if is_text else RETRY_CODES
        return self.http.request("GET", f"{self.base_url}/extensionArtifact", None, self._headers(**extra),
                                 retry_codes=codes, kind=kind)

    # --- /status (02 §6.3) ----------------------------------------------------------------------------------
    def put_status(self, sas_url: str, status_json: str, blob_type: str = "BlockBlob",
                   now: Optional[float] = None) -> None:
        self._require("status")
        data = status_json.encode("utf-8")
        if blob_type == "PageBlob":
            data = data + b" " * ((PAGE_SIZE - len(data) % PAGE_SIZE) % PAGE_SIZE)
        headers = {"x-ms-version": API_VERSION, "Content-type": "application/json",
                   "x-ms-containerid": self.container_id, "x-ms-host-config-name": self.role_config_name}
        for index, req in enumerate(blob_requests(sas_url, data, blob_type, now=now)):
            envelope: dict = {"requestUri": req.uri,
                              "headers": [{"headerName": k, "headerValue": v} for k, v in req.headers]}
            if req.content is not None:
                envelope["content"] = base64.b64encode(req.content).decode("ascii")
            resp = self.http.put(f"{self.base_url}/status", json.dumps(envelope, sort_keys=True), headers)
            if not resp.ok:  # observed as upstream: every failure, the success of the first request only
                self._status_health(not failed_at_hostplugin(resp.status), response_error(resp))
            elif index == 0:
                self._status_health(True)
            if not resp.ok:
                raise HttpError(f"HostGAPlugin: Put status failed: [HTTP Failed] Status Code {resp.status}",
                                status=resp.status)

    # --- /vmAgentLog (02 §7) --------------------------------------------------------------------------------
    def put_vm_agent_log(self, content: bytes) -> None:
        self._require("vmAgentLog")
        headers = {"x-ms-version": API_VERSION, "x-ms-containerid": self.container_id,
                   "x-ms-vmagentlog-deploymentid": self.role_config_name.split(".", 1)[0],
                   "x-ms-client-name": AGENT_NAME, "x-ms-client-version": AGENT_VERSION,
                   "x-ms-client-correlationid": str(uuid.uuid4())}
        resp = self.http.put(f"{self.base_url}/vmAgentLog", content, headers, timeout=LOG_UPLOAD_TIMEOUT,
                             kind=LOG_UPLOAD)
        if not resp.ok:
            raise HttpError(f"HostGAPlugin: Put vmAgentLog failed: Status Code {resp.status}", status=resp.status)

    # --- /health (02 §8) -----------------------------------------------------------------------------------
    def health(self) -> bool:
        try:
            return self.http.request("GET", f"{self.base_url}/health", max_retry=1).ok
        except HttpError:
            return False
