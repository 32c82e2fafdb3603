"""A tiny WireServer + HostGAPlugin + storage on 127.0.0.1 for the protocol client's own tests.

Written from the spec and tests/data/wire only (independent of the client's parsers). The full
emulator is guestagent.fabric; this double exists so the client's tests run on their own data and
can script exact faults (status, delay, reset, truncated body) per path.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

DATA = Path(__file__).resolve().parents[2] / "data" / "wire"


@dataclass
class Fault:
    match: str  # substring of "METHOD path?query"
    status: Optional[int] = None
    delay: float = 0.0
    reset: bool = False
    truncated: bool = False
    body: Optional[bytes] = None
    count: int = 1


@dataclass
class Seen:
    method: str
    path: str
    headers: dict
    body: bytes
    port: int


@dataclass
class Loopback:
    incarnation: str = "1"
    blob_type: str = "BlockBlob"
    vm_settings: Optional[str] = None  # JSON text; None → 404
    vm_settings_etag: str = "1111"
    hgap_versions: bytes = b'["2015-09-01"]'
    requests: list[Seen] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    blobs: dict[str, bytearray] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    health: list[bytes] = field(default_factory=list)
    telemetry: list[bytes] = field(default_factory=list)
    hgap_status: list[dict] = field(default_factory=list)
    overrides: dict[str, Callable[[Seen], tuple[int, dict, bytes]]] = field(default_factory=dict)

    def start(self) -> Loopback:
        self._servers = [self._serve(), self._serve()]
        self.wire_port = self._servers[0].server_address[1]
        self.hgap_port = self._servers[1].server_address[1]
        self.base = f"http://127.0.0.1:{self.wire_port}"
        return self

    def stop(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()

    def _serve(self) -> ThreadingHTTPServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                            self.server.server_address[1])
                owner.requests.append(seen)
                owner._dispatch(self, seen)

            do_GET = do_POST = do_PUT = _any

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return server

    # --- documents ---------------------------------------------------------------------------------------
    def doc(self, name: str) -> bytes:
        text = (DATA / name).read_text()
        return (text.replace("@BASE@", self.base).replace("@INCARNATION@", self.incarnation)
                .replace("@BLOBTYPE@", self.blob_type)).encode()

    def _route(self, seen: Seen) -> tuple[int, dict, bytes]:
        key = f"{seen.method} {seen.path}"
        for match, fn in self.overrides.items():
            if match in key:
                return fn(seen)
        path, _, query = seen.path.partition("?")
        if seen.port == self.hgap_port:
            return self._hgap(seen, path)
        if path == "/" and query == "comp=versions":
            return 200, {}, self.doc("versions.xml")
        if path == "/machine/" and query == "comp=goalstate":
            return 200, {}, self.doc("goal_state.xml")
        if "type=hostingEnvironmentConfig" in query:
            return 200, {}, self.doc("hosting_env.xml")
        if "type=sharedConfig" in query:
            return 200, {}, self.doc("shared_config.xml")
        if "type=extensionsConfig" in query:
            return 200, {}, self.doc("ext_conf.xml")
        if path == "/machine" and query == "comp=health":
            self.health.append(seen.body)
            return 200, {}, b""
        if path == "/machine" and query == "comp=telemetrydata":
            self.telemetry.append(seen.body)
            return 200, {}, b""
        if path == "/machine" and query == "comp=roleProperties":
            return 202, {}, b""
        if path.startswith("/storage/"):
            return self._storage(seen.method, seen.path, seen.headers, seen.body)
        return 404, {}, b"not found"

    def _storage(self, method: str, path_q: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        path, _, query = path_q.partition("?")
        if method == "GET":
            if path in self.artifacts:
                return 200, {}, self.artifacts[path]
            return 404, {}, b""
        headers = {k.lower(): v for k, v in headers.items()}
        if "comp=page" in query:
            rng = headers["x-ms-range"].split("=")[1]
            start, end = (int(x) for x in rng.split("-"))
            blob = self.blobs[path]
            assert len(body) == end - start + 1 and start % 512 == 0 and (end + 1) % 512 == 0
            blob[start:end + 1] = body
            return 201, {}, b""
        if headers.get("x-ms-blob-type") == "PageBlob":
            self.blobs[path] = bytearray(int(headers["x-ms-blob-content-length"]))
            return 201, {}, b""
        self.blobs[path] = bytearray(body)
        return 201, {}, b""

    def _hgap(self, seen: Seen, path: str) -> tuple[int, dict, bytes]:
        if path == "/versions":
            return 200, {}, self.hgap_versions
        if path == "/health":
            return 200, {}, b""
        if path == "/vmSettings":
            if self.vm_settings is None:
                return 404, {}, b""
            if seen.headers.get("if-none-match") == self.vm_settings_etag:
                return 304, {}, b""
            return 200, {"ETag": self.vm_settings_etag}, self.vm_settings.encode()
        if path == "/extensionArtifact":
            target = urlsplit(seen.headers["x-ms-artifact-location"])
            return self._storage("GET", target.path, {}, b"")
        if path == "/status":
            env = json.loads(seen.body)
            self.hgap_status.append(env)
            target = urlsplit(env["requestUri"])
            content = base64.b64decode(env["content"]) if "content" in env else b""
            hdrs = {h["headerName"]: h["headerValue"] for h in env["headers"]}
            return self._storage("PUT", target.path + "?" + target.query, hdrs, content)
        if path == "/vmAgentLog":
            return 200, {}, b""
        return 404, {}, b""

    def _dispatch(self, handler: BaseHTTPRequestHandler, seen: Seen) -> None:
        key = f"{seen.method} {seen.path}"
        fault = next((f for f in self.faults if f.match in key and f.count > 0), None)
        if fault is not None:
            fault.count -= 1
            if fault.delay:
                time.sleep(fault.delay)
            if fault.reset:
                handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                handler.connection.close()
                handler.close_connection = True
                return
            if fault.status is not None or fault.body is not None:
                self._send(handler, fault.status or 200, {}, fault.body or b"", fault.truncated)
                return
        status, headers, body = self._route(seen)
        self._send(handler, status, headers, body, fault is not None and fault.truncated)

    @staticmethod
    def _send(handler, status: int, headers: dict, body: bytes, truncated: bool) -> None:
        handler.send_response(status)
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.send_header("Content-Length", str(len(body) + (100 if truncated else 0)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        if status != 304:
            handler.wfile.write(body)
        handler.wfile.flush()
        handler.close_connection = True
