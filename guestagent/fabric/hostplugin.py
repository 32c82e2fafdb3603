"""Emulated HostGAPlugin (port 32526 on Azure): vmSettings, artifact proxy, status, log upload, health."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any, Dict, List, Optional
from urllib.parse import urlsplit

from guestagent.fabric.httpd import Request, Response
from guestagent.fabric.wireserver import runtime_settings

if TYPE_CHECKING:
    from guestagent.fabric.server import Fabric, GoalView

HGAP_API_VERSION = "2015-09-01"
OLD_HGAP_VERSION = "1.0.8.100"
_PATHS = {"/versions": "hgap_versions", "/vmsettings": "vmsettings", "/extensionartifact": "extension_artifact",
          "/status": "hgap_status", "/health": "hgap_health", "/vmagentlog": "vmagentlog"}


def classify(req: Request) -> Optional[str]:
    return _PATHS.get(req.path.rstrip("/").lower())


def handle(fab: Fabric, req: Request, kind: str) -> Response:
    if kind == "hgap_versions":
        return Response.json(json.dumps([HGAP_API_VERSION]))
    if kind == "hgap_health":
        return Response(200)
    if kind == "vmsettings":
        return _vm_settings(fab, req)
    if kind == "extension_artifact":
        return _artifact(fab, req)
    if kind == "hgap_status":
        if req.method != "PUT":
            return Response.text(405, "/status needs PUT")
        return _status(fab, req)
    if kind == "vmagentlog":
        if req.method != "PUT":
            return Response.text(405, "/vmAgentLog needs PUT")
        fab.record_vm_agent_log(req.body, req.headers)
        return Response(200)
    return Response.text(404, "not found")


def vm_settings_doc(fab: Fabric, view: GoalView, host: str, hgap_version: str) -> Dict[str, Any]:
    sc = fab.scenario
    step = view.vm_step
    fast_track = view.ft_step is not None
    doc: Dict[str, Any] = {
        "hostGAPluginVersion": hgap_version,
        "vmSettingsSchemaVersion": "0.0",
        "activityId": view.activity_id,
        "correlationId": view.correlation_id,
        "inSvdSeqNo": int(view.incarnation) if view.incarnation.isdigit() else 0,
        "extensionsLastModifiedTickCount": view.vm_ticks,
        "extensionGoalStatesSource": "FastTrack" if fast_track else "Fabric",
        "onHold": step.on_hold,
        "statusUploadBlob": {"statusBlobType": step.status_blob_type, "value": fab.status_blob_url(host)},
        "inVMMetadata": {"subscriptionId": fab.imds_document()["compute"].get("subscriptionId", ""),
                         "resourceGroupName": fab.imds_document()["compute"].get("resourceGroupName", ""),
                         "vmName": sc.vm_name, "location": sc.location, "vmId": fab.vm_id,
                         "vmSize": "Standard_B2s", "osType": "Linux"},
        "requiredFeatures": [{"name": f} for f in step.required_features],
        "gaFamilies": [{"name": "Prod", "uris": [fab.agent_manifest_url(host)]}],
        "extensionGoalStates": [],
    }
    for ext in step.extensions:
        item: Dict[str, Any] = {
            "name": ext.name, "version": ext.version,
            "location": fab.manifest_url(host, ext.name),
            "failoverLocation": fab.manifest_url(host, ext.name, failover=True),
            "additionalLocations": [],
            "state": ext.state, "autoUpgrade": False, "runAsStartupTask": False, "isJson": True,
            "useExactVersion": True, "isMultiConfig": ext.multi_config,
        }
        signature = fab.encoded_signature(ext)
        if signature:
            item["encodedSignature"] = signature
        settings: List[Dict[str, Any]] = []
        depends: List[Dict[str, Any]] = []
        for s in ext.settings:
            handler = runtime_settings(fab, ext, s)
            entry: Dict[str, Any] = {}
            if "protectedSettings" in handler:
                entry["protectedSettingsCertThumbprint"] = handler["protectedSettingsCertThumbprint"]
                entry["protectedSettings"] = handler["protectedSettings"]
            if "publicSettings" in handler:
                entry["publicSettings"] = json.dumps(handler["publicSettings"], separators=(",", ":"))
            if ext.multi_config:
                entry.update({"seqNo": s.seq_no, "extensionName": s.name, "extensionState": s.state})
            settings.append(entry)
            if s.dependency_level is not None:
                dep: Dict[str, Any] = {"dependsOnExtension": [dict(d) for d in s.depends_on],
                                       "dependencyLevel": s.dependency_level}
                if ext.multi_config:
                    dep["name"] = s.name
                depends.append(dep)
        if not ext.multi_config:
            item["settingsSeqNo"] = ext.settings[0].seq_no if ext.settings else 0
        if settings:
            item["settings"] = settings
        if depends:
            item["dependsOn"] = depends
        item.update(ext.vm_settings_fields)
        doc["extensionGoalStates"].append(item)
    return doc


def _vm_settings(fab: Fabric, req: Request) -> Response:
    view = fab.view()
    mode = view.vm_settings_mode
    if mode == "not_supported":
        return Response.text(404, "The requested resource was not found.")
    if mode == "error":
        return Response.text(500, "Internal error in HostGAPlugin")
    etag = view.etag
    if mode != "no_etag" and req.header("if-none-match") == etag:
        return Response(304, b"", {"ETag": etag})
    version = OLD_HGAP_VERSION if mode == "old_version" else fab.scenario.hgap_version
    text = json.dumps(vm_settings_doc(fab, view, req.host, version), indent=4)
    if mode == "parse_error":
        text = text[: len(text) // 2] + '"<<parse error>>'
    headers = {} if mode == "no_etag" else {"ETag": etag}
    return Response.json(text, **headers)


def _artifact(fab: Fabric, req: Request) -> Response:
    location = req.header("x-ms-artifact-location")
    if not location:
        return Response.text(400, "missing x-ms-artifact-location")
    parts = urlsplit(location)
    ours = urlsplit(fab.storage_base(req.host))
    if parts.port != fab.storage_port and (parts.hostname, parts.port) != (ours.hostname, ours.port):
        # The emulator never reaches the internet on the VM's behalf.
        return Response.text(502, f"upstream storage {parts.netloc} is not reachable from the fabric")
    inner = fab.storage_request(req, location)
    return inner


def decode_status_envelope(body: bytes) -> Dict[str, Any]:
    """The JSON envelope of 02 §6.3 → {"uri", "headers" (dict), "content" (bytes or None), "shape"}; the
    shape (its keys and header names in the order sent, with the headers' values) is what the fabric
    records of each envelope: the differential tier compares it with upstream's."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"status envelope is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("requestUri"), str):
        raise ValueError("status envelope needs a 'requestUri' string")
    headers: Dict[str, str] = {}
    sent: List[List[str]] = []
    for h in doc.get("headers") or []:
        if not isinstance(h, dict) or "headerName" not in h or "headerValue" not in h:
            raise ValueError("status envelope headers must be {headerName, headerValue} objects")
        headers[str(h["headerName"]).lower()] = str(h["headerValue"])
        sent.append([str(h["headerName"]), str(h["headerValue"])])
    content = None
    if doc.get("content") is not None:
        try:
            content = base64.b64decode(doc["content"], validate=True)
        except (binascii.Error, TypeError) as exc:
            raise ValueError(f"status envelope content is not base64: {exc}") from None
    shape = {"keys": list(doc), "headers": sent}
    return {"uri": doc["requestUri"], "headers": headers, "content": content, "shape": shape}


def _status(fab: Fabric, req: Request) -> Response:
    try:
        env = decode_status_envelope(req.body)
    except ValueError as exc:
        return Response.text(400, str(exc))
    fab.record("hgap_envelope", env["shape"])
    resp = fab.apply_blob_write(env["uri"], env["headers"], env["content"] or b"", via="hgap")
    return Response(200) if resp.status in (200, 201) else resp
