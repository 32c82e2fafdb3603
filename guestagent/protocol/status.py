"""The aggregate VM status JSON (spec 04 §12) and its upload (02 §6): HGAP /status first, then direct blob.

``build_vm_status`` returns a plain dict in upstream's key order; ``to_json`` renders the wire form
(compact, ``", "``/``": "`` separators, ASCII only). Handler entries come ready-made from the
extensions code; this module adds the agent, goal-state, OS and feature parts.
"""

from __future__ import annotations

import json
import re
import socket
from typing import Any, Optional

from guestagent import log
from guestagent.conf import Config
from guestagent.errors import HttpError, ProtocolError, ResourceGoneError
from guestagent.osutil.osrelease import distro
from guestagent.protocol.goalstate import GoalState
from guestagent.protocol.hostplugin import blob_requests
from guestagent.protocol.http import HttpClient
from guestagent.timestamps import utc_seconds
from guestagent.version import AGENT_VERSION

SAS_TOKEN = re.compile(r"(https://\S+\?)((sv|st|se|sr|sp|sip|spr|sig)=\S+)+", re.IGNORECASE)
STATUS_VERSION = "1.1"


def redact_sas(message: Optional[str]) -> Optional[str]:
    if not message:
        return message
    return SAS_TOKEN.sub(r"\1<redacted>", message)


def _redact_messages(value: Any) -> Any:
    """Redact SAS tokens in every formattedMessage.message below ``value``."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "formattedMessage" and isinstance(v, dict) and isinstance(v.get("message"), str):
                v = dict(v, message=redact_sas(v["message"]))
            else:
                v = _redact_messages(v)
            out[k] = v
        return out
    if isinstance(value, list):
        return [_redact_messages(v) for v in value]
    return value


def formatted(message: str) -> dict[str, str]:
    """A ``formattedMessage`` object."""
    return {"lang": "en-US", "message": message}




def goal_state_aggregate_status(in_svd_seq_no: Any, status: str = "Success", code: int = 0,
                                message: str = "GoalState executed successfully",
                                now: Optional[float] = None) -> dict[str, Any]:
    """The vmArtifactsAggregateStatus.goalStateAggregateStatus entry."""
    return {"formattedMessage": formatted(message), "timestampUTC": utc_seconds(now),
            "inSvdSeqNo": in_svd_seq_no, "status": status, "code": code}


def build_vm_status(config: Config, goal_state: Optional[GoalState], handler_statuses: Optional[list[dict]] = None, *,
                    goal_state_status: Optional[dict] = None, update_status: Optional[dict] = None,
                    fast_track: Optional[bool] = None, computer_name: Optional[str] = None,
                    os_name: Optional[str] = None, os_version: Optional[str] = None,
                    now: Optional[float] = None) -> dict[str, Any]:
    """Assemble the status document. ``goal_state_status`` defaults to "executed successfully" for the
    goal state's extensions (when there is one); ``update_status`` is only given in RSM update mode."""
    stamp = utc_seconds(now)
    agent: dict[str, Any] = {"version": AGENT_VERSION, "status": "Ready",
                             "formattedMessage": formatted("Guest Agent is running")}
    if update_status is not None:
        agent["updateStatus"] = update_status
    aggregate: dict[str, Any] = {"guestAgentStatus": agent,
                                 "handlerAggregateStatus": [_redact_messages(h) for h in handler_statuses or []]}
    if goal_state_status is None and goal_state is not None:
        seq = goal_state.extensions_goal_state.svd_sequence_number or goal_state.incarnation
        goal_state_status = goal_state_aggregate_status(seq, now=now)
    if goal_state_status is not None:
        aggregate["vmArtifactsAggregateStatus"] = {"goalStateAggregateStatus": _redact_messages(goal_state_status)}
    if os_name is None or os_version is None:
        d_name, d_version, _ = distro()
        os_name = d_name if os_name is None else os_name
        os_version = d_version if os_version is None else os_version
    if fast_track is None:
        fast_track = config.debug_enable_fast_track and bool(
            goal_state is not None and goal_state.fast_track_supported)
    # Not "VersioningGovernance" (upstream: when AutoUpdate.UpdateToLatestVersion and Debug.EnableGAVersioning
    # are on): the platform would then schedule agent versions that this agent never runs (exthandler.selfupdate).
    features = [{"Key": "MultipleExtensionsPerHandler", "Value": "1.0"}]
    if fast_track:
        features.append({"Key": "FastTrack", "Value": "1.0"})
    return {"version": STATUS_VERSION, "timestampUTC": stamp, "aggregateStatus": aggregate,
            "guestOSInfo": {"computerName": computer_name if computer_name is not None else socket.gethostname(),
                            "osName": os_name, "osVersion": os_version, "version": AGENT_VERSION},
            "supportedFeatures": features}


def to_json(status: dict) -> str:
    """The wire form: Python json.dumps defaults (", "/": " separators, ASCII only)."""
    return json.dumps(status)


def put_blob_direct(http: HttpClient, sas_url: str, status_json: str, blob_type: str = "BlockBlob",
                    now: Optional[float] = None) -> None:
    """Direct PUT(s) to the storage SAS URL (proxy allowed); pages padded with NUL bytes."""
    for req in blob_requests(sas_url, status_json.encode("utf-8"), blob_type, pad=b"\0", now=now):
        resp = http.request("PUT", req.uri, req.content if req.content is not None else b"", dict(req.headers),
                            use_proxy=True)
        if not resp.ok:
            raise HttpError(f"Failed to upload status blob: [HTTP Failed] Status Code {resp.status}",
                            status=resp.status)


def upload_status(http: HttpClient, host_plugin: Any, sas_url: str, status_json: str,
                  blob_type: str = "BlockBlob", on_gone: Any = None) -> str:
    """HGAP first; 410 → ``on_gone()`` (refresh headers) and skip this cycle; other HGAP errors fall back to
    the direct PUT. Returns the channel used ("HostGAPlugin", "Direct" or "Skipped")."""
    blob_type = blob_type if blob_type in ("BlockBlob", "PageBlob") else "BlockBlob"
    hgap_error: Optional[BaseException] = None
    if host_plugin is not None:
        try:
            host_plugin.put_status(sas_url, status_json, blob_type)
            return "HostGAPlugin"
        except ResourceGoneError:
            log.info("HostGAPlugin: status upload got 410 Gone; refreshing the goal state and skipping this cycle")
            if on_gone is not None:
                on_gone()
            return "Skipped"
        except Exception as e:  # every other HGAP failure → direct upload
            hgap_error = e
            log.verbose("Falling back to direct upload: {0}", e)
    try:
        put_blob_direct(http, sas_url, status_json, blob_type)
        return "Direct"
    except Exception as e:
        raise ProtocolError(f"Failed to upload status blob via either channel: HostGAPlugin: {hgap_error}; "
                            f"direct: {log.redact(str(e))}") from None
