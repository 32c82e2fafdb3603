"""IMDS (spec 01 §12.2): compute info for telemetry and the once-a-minute health probe; the
re-provisioning document of a pre-provisioned VM (an extension, as cloud-init fetches it).

Never on the path to Ready of an ordinary VM: short timeouts, no proxy, and the probe blames only the
service (4xx, throttling and connection failures count as healthy). Only a VM that booted in a
pre-provisioning pool waits on IMDS, for ``reprovisiondata``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Optional

from guestagent import log
from guestagent.errors import HttpError, ResourceGoneError
from guestagent.protocol.http import HttpClient, response_error, user_agent

IMDS_ENDPOINT = "169.254.169.254"
API_VERSION = "2018-02-01"
TIMEOUT = 5.0
#: Single-attempt mode (the monitor thread): one try, this timeout, no retry back-off.
QUICK_TIMEOUT = 2.0
UNHEALTHY_AFTER = 180.0
REPROVISION_API_VERSION = "2019-06-01"
#: cloud-init's answers meaning "not yet" while a pooled VM waits for its customer.
REPROVISION_RETRY_CODES = (404, 410, 429, 500)
REPROVISION_TIMEOUT = 30.0
REPROVISION_INTERVAL = 1.0


@dataclass
class ComputeInfo:
    location: str = ""
    subscription_id: str = ""
    resource_group_name: str = ""
    vm_id: str = ""
    image_origin: int = 0  # not derived yet (telemetry engineer may fill it from raw)
    raw: Optional[dict] = None


def parse_compute(text: str) -> ComputeInfo:
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ValueError(f"IMDS compute info is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError("IMDS compute info is not an object")
    compute = doc.get("compute", doc)
    if not isinstance(compute, dict):
        raise ValueError("IMDS compute info has no compute object")
    return ComputeInfo(location=str(compute.get("location", "")), subscription_id=str(compute.get("subscriptionId", "")),
                       resource_group_name=str(compute.get("resourceGroupName", "")),
                       vm_id=str(compute.get("vmId", "")), raw=compute)


def _check_field(obj: Any, name: str) -> Any:
    if not isinstance(obj, dict) or obj.get(name) is None:
        raise ValueError(f"Missing field: [{name}]")
    if len(obj[name]) == 0:
        raise ValueError(f"Empty field: [{name}]")
    return obj[name]


def validate_instance(body: str) -> tuple[bool, str]:
    """(healthy, error) of a 200 /metadata/instance answer, worded as upstream's ImdsClient.validate: the
    network section needs interface[0].macAddress and ipv4.ipAddress[0].privateIpAddress."""
    try:
        doc = json.loads(body)
    except ValueError as e:
        return False, f"JSON parsing failed: {e}"
    try:
        iface = _check_field(_check_field(doc, "network"), "interface")[0]
        _check_field(iface, "macAddress")
        _check_field(_check_field(_check_field(iface, "ipv4"), "ipAddress")[0], "privateIpAddress")
    except ValueError as e:
        return False, str(e)
    except (IndexError, KeyError, TypeError) as e:
        return False, f"Missing field: [{e}]"
    return True, ""


def probe_result(status: int, body: str, error: str) -> tuple[bool, str]:
    """(healthy, error) of one answer: a 5xx (and 410) is the service's failure, another non-200 is not."""
    where = "IMDS error in /metadata/instance"
    if status == 410:
        return False, f"{where}: HTTP Failed with Status Code 410: Gone"
    if status >= 500:
        return False, f"{where}: {error}"
    if status != 200:
        return True, f"{where}: {error}"
    return validate_instance(body)


class ImdsClient:
    def __init__(self, endpoint: str = IMDS_ENDPOINT, port: int = 80, http: Optional[HttpClient] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.base = f"http://{endpoint}" if port == 80 else f"http://{endpoint}:{port}"
        self.http = http or HttpClient()
        self.clock = clock
        self._healthy_since: Optional[float] = None
        self._last_healthy: Optional[float] = None

    @staticmethod
    def _attempts(single_attempt: bool) -> dict[str, Any]:
        """Request options: upstream's retried 5-s requests, or one short attempt (an unreachable IMDS then
        costs the caller at most QUICK_TIMEOUT seconds)."""
        return {"max_retry": 1, "timeout": QUICK_TIMEOUT} if single_attempt else {"timeout": TIMEOUT}

    def get_compute(self, single_attempt: bool = False) -> ComputeInfo:
        resp = self.http.get(f"{self.base}/metadata/instance/compute?api-version={API_VERSION}",
                             {"Metadata": "True", "User-Agent": user_agent()}, **self._attempts(single_attempt))
        if not resp.ok:
            raise HttpError(f"IMDS compute request failed: Status Code {resp.status}", status=resp.status)
        return parse_compute(resp.text())

    def probe(self, single_attempt: bool = False) -> tuple[bool, str]:
        """One health probe: (healthy this minute, upstream's error text or "")."""
        where = "IMDS error in /metadata/instance"
        try:
            resp = self.http.get(f"{self.base}/metadata/instance?api-version={API_VERSION}",
                                 {"Metadata": "True", "User-Agent": user_agent() + "+health"},
                                 **self._attempts(single_attempt))
        except ResourceGoneError:
            return False, f"{where}: HTTP Failed with Status Code 410: Gone"
        except HttpError as e:
            text = str(e)
            if "429" in text:
                return True, f"{where}: Throttled"
            if any(f"Status Code {c}" in text for c in range(500, 600)):
                return False, f"{where}: {text}"
            return True, f"{where}: Unable to connect to endpoint"
        except OSError:
            return True, f"{where}: Unable to connect to endpoint"
        return probe_result(resp.status, resp.text(), "" if resp.ok else response_error(resp))

    def heartbeat(self, single_attempt: bool = False) -> dict[str, Any]:
        """The InstanceMetadataHeartbeat observation: unhealthy only after 3 minutes of failed probes; the
        probe's error is its value (as upstream)."""
        now = self.clock()
        ok, error = self.probe(single_attempt)
        if ok or self._last_healthy is None:
            self._last_healthy = now
        healthy = now - self._last_healthy < UNHEALTHY_AFTER
        return {"ObservationName": "InstanceMetadataHeartbeat", "IsHealthy": healthy, "Description": "",
                "Value": error}


class ReprovisionTimeout(HttpError):
    """No re-provisioning document before the deadline: the VM was not claimed (it stays in the pool)."""


def fetch_reprovision_data(client: ImdsClient, deadline: float, sleep: Callable[[float], None] = time.sleep
                           ) -> str:
    """Poll ``/metadata/reprovisiondata`` until it returns the customer's ovf-env.xml (cloud-init's
    policy: 404/410/429/500 and connection failures mean "not yet", one request a second, 30-s
    requests; logging backs off by doubling unless the failure changes). ``deadline`` is on
    ``client.clock``; raises :class:`ReprovisionTimeout` when it passes, :class:`HttpError` on any
    other answer."""
    url = f"{client.base}/metadata/reprovisiondata?api-version={REPROVISION_API_VERSION}"
    attempts, threshold, last = 0, 1, ""
    while True:
        attempts += 1
        headers = {"Metadata": "true", "x-ms-client-request-id": str(uuid.uuid4()), "User-Agent": user_agent()}
        try:
            resp = client.http.get(url, headers, max_retry=1, retry_codes=(), timeout=REPROVISION_TIMEOUT)
            failure = "" if resp.ok else f"Status Code {resp.status}"
        except ResourceGoneError:
            resp, failure = None, "Status Code 410"
        except HttpError as e:
            resp, failure = None, f"connection failed ({e.msg})"
        if resp is not None and resp.ok:
            log.info("Polled IMDS reprovisiondata {0} time(s): got the provisioning document", attempts)
            return resp.text()
        if resp is not None and resp.status not in REPROVISION_RETRY_CODES:
            raise HttpError(f"IMDS reprovisiondata request failed: {failure}", status=resp.status)
        if attempts >= threshold or failure != last:
            log.info("Polling IMDS reprovisiondata: attempt {0}: {1}", attempts, failure)
            threshold *= 2
        last = failure
        if client.clock() + REPROVISION_INTERVAL > deadline:
            raise ReprovisionTimeout(f"no re-provisioning data from IMDS after {attempts} attempt(s) "
                                     f"(last: {failure})")
        sleep(REPROVISION_INTERVAL)
