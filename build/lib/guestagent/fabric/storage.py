"""Emulated storage account: extension manifests and packages, the status blob, the artifacts profile.

The status blob honours Azure's block and page blob semantics (page blob create with a declared
size, 512-aligned ``comp=page`` writes with ``x-ms-range``); every successful write that leaves the
blob holding a complete JSON document updates the fabric's view of the VM status.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from guestagent.fabric.httpd import Request, Response
from guestagent.fabric.packages import manifest_xml

if TYPE_CHECKING:
    from guestagent.fabric.server import Fabric

PAGE = 512
MAX_PAGE_WRITE = 4 * 1024 * 1024
MAX_BLOB = 64 * 1024 * 1024
AGENT_FAMILY_MANIFEST = "Microsoft.OSTCLinuxAgent_Prod"
_RANGE = re.compile(r"^bytes=(\d+)-(\d+)$")


def classify(req: Request) -> Optional[str]:
    path = req.path
    if path.startswith(("/manifests/", "/failover/")) and path.endswith("_manifest.xml"):
        return "manifest"
    if path.startswith("/packages/"):
        return "package"
    if path.startswith("/$system/"):
        if path.endswith(".status"):
            return "status_blob"
        if path.endswith(".vmSettings"):
            return "artifacts_profile"
    return None


@dataclass
class Blob:
    blob_type: str
    data: bytearray = field(default_factory=bytearray)


class BlobStore:
    """In-memory blobs keyed by path; thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blobs: Dict[str, Blob] = {}

    def write(self, path: str, query: Dict[str, str], headers: Dict[str, str], content: bytes) -> Response:
        with self.lock:
            if query.get("comp") == "page":
                return self._page(path, headers, content)
            blob_type = headers.get("x-ms-blob-type", "")
            if blob_type == "BlockBlob":
                if len(content) > MAX_BLOB:
                    return Response.text(413, "blob too large")
                self.blobs[path] = Blob("BlockBlob", bytearray(content))
                return Response(201)
            if blob_type == "PageBlob":
                if content:
                    return Response.text(400, "PageBlob create must have an empty body")
                try:
                    size = int(headers.get("x-ms-blob-content-length", ""))
                except ValueError:
                    return Response.text(400, "PageBlob create needs x-ms-blob-content-length")
                if size < 0 or size % PAGE or size > MAX_BLOB:
                    return Response.text(400, f"x-ms-blob-content-length {size} must be a multiple of {PAGE}")
                self.blobs[path] = Blob("PageBlob", bytearray(size))
                return Response(201)
            return Response.text(400, f"unsupported x-ms-blob-type {blob_type!r}")

    def _page(self, path: str, headers: Dict[str, str], content: bytes) -> Response:
        blob = self.blobs.get(path)
        if blob is None or blob.blob_type != "PageBlob":
            return Response.text(404 if blob is None else 409, "page write to a blob that is not a page blob")
        if headers.get("x-ms-page-write", "").lower() != "update":
            return Response.text(400, "x-ms-page-write must be 'update'")
        match = _RANGE.match(headers.get("x-ms-range", "") or headers.get("range", ""))
        if not match:
            return Response.text(400, "x-ms-range must be bytes=<start>-<end>")
        start, end = int(match.group(1)), int(match.group(2))
        if start % PAGE or (end + 1) % PAGE or end < start:
            return Response.text(400, f"page range {start}-{end} is not {PAGE}-byte aligned")
        if end + 1 - start != len(content):
            return Response.text(400, f"range {start}-{end} does not match a body of {len(content)} bytes")
        if len(content) > MAX_PAGE_WRITE:
            return Response.text(413, "page write larger than 4 MiB")
        if end >= len(blob.data):
            return Response.text(416, f"range end {end} beyond blob size {len(blob.data)}")
        blob.data[start:end + 1] = content
        return Response(201)

    def get(self, path: str) -> Optional[Blob]:
        with self.lock:
            return self.blobs.get(path)


def decode_status(data: bytes) -> Optional[Dict[str, Any]]:
    """Status JSON from blob bytes (page blobs are padded with NULs or spaces); None if incomplete."""
    text = bytes(data).rstrip(b"\x00 \n")
    if not text:
        return None
    try:
        doc = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def split_url(url: str):
    parts = urlsplit(url.strip())
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return unquote(parts.path), query


def handle(fab: Fabric, req: Request, kind: str) -> Response:
    if kind in ("status_blob", "artifacts_profile") and req.query.get("sig") != fab.sas_sig:
        return Response.text(403, "AuthenticationFailed: Server failed to authenticate the request.")
    if kind == "status_blob":
        if req.method == "PUT":
            return fab.apply_blob_write(f"http://x{req.target}", req.headers, req.body, via="direct")
        blob = fab.blobs.get(req.path)
        if blob is None:
            return Response.text(404, "BlobNotFound")
        return Response(200, bytes(blob.data), {"Content-Type": "application/octet-stream",
                                                 "x-ms-blob-type": blob.blob_type})
    if req.method not in ("GET", "HEAD"):
        return Response.text(405, "read-only resource")
    if kind == "artifacts_profile":
        return Response.json(json.dumps({"onHold": fab.view().wire_step.on_hold}))
    if kind == "manifest":
        name = req.path.split("/", 2)[2][: -len("_manifest.xml")]
        if name == AGENT_FAMILY_MANIFEST:
            return Response.xml(manifest_xml([], lambda p: ""))
        packages = fab.scenario.handler_versions(name)
        if not packages:
            return Response.text(404, "BlobNotFound")
        return Response.xml(manifest_xml(packages, lambda p: fab.package_url(req.host, p.name, p.version)))
    if kind == "package":
        leaf = req.path[len("/packages/"):]
        name, _, version = leaf.rpartition("__")
        for pkg in fab.scenario.handler_versions(name):
            if pkg.version == version:
                try:
                    data = fab.packages.zip_of(pkg.path)
                except (OSError, ValueError) as exc:
                    return Response.text(500, f"cannot build package: {exc}")
                return Response(200, data, {"Content-Type": "application/octet-stream"})
        return Response.text(404, "BlobNotFound")
    return Response.text(404, "not found")
