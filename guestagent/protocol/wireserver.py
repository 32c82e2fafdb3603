"""WireServer requests (spec 01 §3, §4.1, §9-§12.1): versions, goal state, documents, health, telemetry.

Only the exchange lives here; turning documents into models is goalstate.py's job. Every failure other
than 410 surfaces as ProtocolError with upstream's "[Wireserver Exception]"/"[Wireserver Failed]" text.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Optional

from guestagent import log
from guestagent.errors import HttpError, ProtocolError, ProtocolNotFoundError, ResourceGoneError, XmlError
from guestagent.protocol import xml
from guestagent.protocol.certificates import transport_cert_header
from guestagent.protocol.http import HttpClient, Response
from guestagent.version import AGENT_NAME, PROTOCOL_VERSION

KNOWN_WIRESERVER_IP = "168.63.129.16"
HEALTH_ATTEMPTS = 30
HEALTH_RETRY_DELAY = 15.0
HEALTH_DESCRIPTION_LIMIT = 3686
TELEMETRY_ATTEMPTS = 3
TELEMETRY_THROTTLE_DELAY = 8.0
TELEMETRY_FLUSH_THROTTLE_DELAY = 2.0
ROLE_INSTANCE_RETRIES = 6
ROLE_INSTANCE_DELAY = 0.5
XML_CONTENT_TYPE = "text/xml;charset=utf-8"
CIPHER_AES = "AES128_CBC"
CIPHER_3DES = "DES_EDE3_CBC"
_HEALTH_HEAD = ('<?xml version="1.0" encoding="utf-8"?><Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                'xmlns:xsd="http://www.w3.org/2001/XMLSchema">')


def health_report_body(incarnation: str, container_id: str, instance_id: str, state: str,
                       substatus: Optional[str] = None, description: Optional[str] = None) -> str:
    """The ?comp=health document exactly as 01 §9 (no whitespace; Details only with a sub-status)."""
    details = ""
    if substatus is not None:
        desc = xml.escape((description or "")[:HEALTH_DESCRIPTION_LIMIT])
        details = (f"<Details><SubStatus>{xml.escape(substatus)}</SubStatus>"
                   f"<Description>{desc}</Description></Details>")
    return (f"{_HEALTH_HEAD}<GoalStateIncarnation>{incarnation}</GoalStateIncarnation><Container>"
            f"<ContainerId>{container_id}</ContainerId><RoleInstanceList><Role><InstanceId>{instance_id}"
            f"</InstanceId><Health><State>{state}</State>{details}</Health></Role></RoleInstanceList>"
            f"</Container></Health>")


def role_properties_body(container_id: str, instance_id: str, thumbprint: str) -> str:
    return ('<?xml version="1.0" encoding="utf-8"?><RoleProperties><Container>'
            f"<ContainerId>{container_id}</ContainerId><RoleInstances><RoleInstance><Id>{instance_id}</Id>"
            f'<Properties><Property name="CertificateThumbprint" value="{thumbprint}" /></Properties>'
            "</RoleInstance></RoleInstances></Container></RoleProperties>")


class WireClient:
    """Talks to one WireServer endpoint. ``wire_port`` is overridable so tests can use loopback."""

    def __init__(self, endpoint: str, lib_dir: str = "/var/lib/waagent", wire_port: int = 80,
                 hgap_port: int = 32526, http: Optional[HttpClient] = None,
                 sleep: Optional[Callable[[float], None]] = None):
        if not endpoint:
            raise ProtocolError("WireServer endpoint is not known")
        self.endpoint = endpoint
        self.lib_dir = lib_dir
        self.wire_port = int(wire_port)
        self.hgap_port = int(hgap_port)
        self.http = http or HttpClient(sleep=sleep)
        if sleep is not None:
            self.http.sleep = sleep

    @property
    def base_url(self) -> str:
        port = "" if self.wire_port == 80 else f":{self.wire_port}"
        return f"http://{self.endpoint}{port}"

    @property
    def hgap_base_url(self) -> str:
        return f"http://{self.endpoint}:{self.hgap_port}"

    @staticmethod
    def standard_headers() -> dict[str, str]:
        return {"x-ms-agent-name": AGENT_NAME, "x-ms-version": PROTOCOL_VERSION}

    def encrypted_headers(self, cipher: str = CIPHER_AES) -> dict[str, str]:
        headers = self.standard_headers()
        headers["x-ms-guest-agent-public-x509-cert"] = transport_cert_header(self.lib_dir)
        headers["x-ms-cipher-name"] = cipher
        return headers

    # --- the wrapper of 01 §13.1 ---------------------------------------------------------------------
    def _call(self, method: str, url: str, body: Optional[str] = None, headers: Optional[Mapping[str, str]] = None,
              **kw: Any) -> Response:
        try:
            resp = self.http.request(method, url, body, headers, use_proxy=False, **kw)
        except ResourceGoneError:
            raise
        except HttpError as e:
            raise ProtocolError(f"[Wireserver Exception] {e}") from None
        if not resp.ok:
            raise ProtocolError(f"[Wireserver Failed] URI {log.redact(url)}  [HTTP Failed] Status Code {resp.status}")
        return resp

    def fetch(self, url: str, headers: Optional[Mapping[str, str]] = None) -> str:
        """GET a goal-state document with the standard headers (or the given ones) → text."""
        return self._call("GET", url, None, headers if headers is not None else self.standard_headers()).text()

    # --- versions (01 §3) ---------------------------------------------------------------------------------
    def check_versions(self) -> list[str]:
        text = self._call("GET", f"{self.base_url}/?comp=versions").text()
        try:
            root = xml.parse(text, what="Versions document")
        except XmlError as e:
            raise ProtocolError("Fetched an invalid versions document", e) from None
        preferred = xml.findtext(xml.find(root, "Preferred"), "Version")
        supported = [xml.text(v) or "" for v in xml.findall(xml.find(root, "Supported"), "Version")]
        log.info("Fabric preferred wire protocol version:{0}", preferred)
        if preferred != PROTOCOL_VERSION and PROTOCOL_VERSION not in supported:
            raise ProtocolNotFoundError(f"Not supported protocol version {PROTOCOL_VERSION}; fabric offers "
                                        f"{[preferred, *supported]}")
        return ([preferred] if preferred else []) + supported

    # --- goal state (01 §4.1) ---------------------------------------------------------------------------------
    def fetch_goal_state_xml(self) -> str:
        """?comp=goalstate; a document without RoleInstance is re-read 6 times 0.5 s apart."""
        url = f"{self.base_url}/machine/?comp=goalstate"
        for attempt in range(ROLE_INSTANCE_RETRIES):
            text = self.fetch(url)
            try:
                root = xml.parse(text, what="Goal state")
            except XmlError as e:
                raise ProtocolError("Fetched an invalid goal state", e) from None
            if xml.find(root, "RoleInstance") is not None:
                return text
            log.verbose("Goal state has no RoleInstance (attempt {0})", attempt + 1)
            if attempt + 1 < ROLE_INSTANCE_RETRIES:
                self.http.sleep(ROLE_INSTANCE_DELAY)
        raise ProtocolError("Fetched goal state without a RoleInstance [incarnation unknown]")

    # --- health (01 §9) -------------------------------------------------------------------------------------
    def report_health(self, incarnation: str, container_id: str, instance_id: str, state: str,
                      substatus: Optional[str] = None, description: Optional[str] = None) -> None:
        body = health_report_body(incarnation, container_id, instance_id, state, substatus, description)
        headers = self.standard_headers()
        headers["Content-Type"] = XML_CONTENT_TYPE
        self._call("POST", f"{self.base_url}/machine?comp=health", body, headers,
                   max_retry=HEALTH_ATTEMPTS, retry_delay=HEALTH_RETRY_DELAY)

    def report_role_properties(self, container_id: str, instance_id: str, thumbprint: str) -> None:
        headers = self.standard_headers()
        headers["Content-Type"] = XML_CONTENT_TYPE
        resp = self._call("POST", f"{self.base_url}/machine?comp=roleProperties",
                          role_properties_body(container_id, instance_id, thumbprint), headers)
        if resp.status != 202:
            raise ProtocolError(f"Failed to send role properties: {resp.status}")

    # --- telemetry (01 §11) -------------------------------------------------------------------------------
    def post_telemetry(self, xml_body: str, flush: bool = False) -> None:
        """POST one ?comp=telemetrydata document (batching is the caller's job)."""
        headers = self.standard_headers()
        headers["Content-Type"] = XML_CONTENT_TYPE
        self._call("POST", f"{self.base_url}/machine?comp=telemetrydata", xml_body, headers,
                   max_retry=TELEMETRY_ATTEMPTS,
                   throttle_delay=TELEMETRY_FLUSH_THROTTLE_DELAY if flush else TELEMETRY_THROTTLE_DELAY)

    # --- HealthService (01 §12.1) ------------------------------------------------------------------------
    def post_health_service(self, observations: list[dict[str, Any]]) -> None:
        obs = [{"ObservationName": str(o.get("ObservationName", ""))[:64], "IsHealthy": bool(o.get("IsHealthy")),
                "Description": str(o.get("Description", ""))[:128], "Value": str(o.get("Value", ""))[:128]}
               for o in observations[-10:]]
        body = json.dumps({"Api": "reporttargethealth", "Version": "1.0", "Source": AGENT_NAME,
                           "Observations": obs})
        port = self.wire_port
        self._call("POST", f"http://{self.endpoint}:{port}/HealthService", body,
                   {"Content-Type": "application/json"})
