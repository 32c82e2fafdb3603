"""Emulated Instance Metadata Service: /metadata/instance and its sub-trees, and a pooled VM's
/metadata/reprovisiondata (404 until the VM is claimed); ``Metadata: true`` enforced."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Dict, Optional

from guestagent.fabric.httpd import Request, Response

if TYPE_CHECKING:
    from guestagent.fabric.scenario import Scenario

NEWEST_VERSIONS = ["2023-07-01", "2021-12-13", "2021-02-01"]


def default_document(sc: Scenario, vm_id: str) -> Dict[str, Any]:
    return {
        "compute": {
            "location": sc.location, "name": sc.ovf.hostname, "offer": "debian-12", "osType": "Linux",
            "placementGroupId": "", "platformFaultDomain": "0", "platformUpdateDomain": "0",
            "publisher": "Debian", "resourceGroupName": "guestagent-fabric", "sku": "12", "tags": "",
            "subscriptionId": "00000000-0000-0000-0000-000000000001", "version": "latest", "vmId": vm_id,
            "vmScaleSetName": "", "vmSize": "Standard_B2s", "zone": "",
        },
        "network": {"interface": [{
            "ipv4": {"ipAddress": [{"privateIpAddress": "10.0.0.4", "publicIpAddress": ""}],
                     "subnet": [{"address": "10.0.0.0", "prefix": "24"}]},
            "ipv6": {"ipAddress": []},
            "macAddress": "000D3A000001",
        }]},
    }


def classify(req: Request) -> Optional[str]:
    return "imds" if req.path.rstrip("/").startswith("/metadata") else None


def handle(document: Dict[str, Any], req: Request, reprovision: Optional[str] = None) -> Response:
    """``reprovision``: the document /metadata/reprovisiondata returns (None: not claimed yet, 404)."""
    if req.header("metadata").lower() != "true":
        return Response.json(json.dumps({"error": "Bad request. Required metadata header not specified"}), 400)
    if not req.query.get("api-version"):
        return Response.json(json.dumps({"error": "Bad request. api-version was not specified in the request. "
                                                  "For more information refer to aka.ms/azureimds",
                                         "newest-versions": NEWEST_VERSIONS}), 400)
    parts = [p for p in req.path.strip("/").split("/") if p]
    if parts == ["metadata", "reprovisiondata"]:
        if reprovision is None:
            return Response.json(json.dumps({"error": "Not found"}), 404)
        return Response.text(200, reprovision, content_type="text/xml; charset=utf-8")
    if parts[:2] != ["metadata", "instance"]:
        return Response.json(json.dumps({"error": "Not found"}), 404)
    node: Any = document
    for part in parts[2:]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return Response.json(json.dumps({"error": "Not found"}), 404)
    if req.query.get("format") == "text" and not isinstance(node, (dict, list)):
        return Response.text(200, str(node))
    return Response.json(json.dumps(node))
