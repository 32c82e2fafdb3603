"""The fabric's HTTP plumbing: request/response values and the threaded servers that carry them.

Each server (WireServer, HostGAPlugin, storage, IMDS) is a stdlib ThreadingHTTPServer whose handler
turns the raw request into a :class:`Request`, lets the Fabric classify and answer it, applies any
injected fault, and logs one line. Nothing a client sends can kill a server thread.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional
from urllib.parse import parse_qs, unquote, urlsplit

MAX_BODY = 64 * 1024 * 1024
#: The "huge" body fault: what it declares and sends.
HUGE_BODY = 200 * 1024 * 1024
#: The "trickle" body fault: seconds between two bytes.
TRICKLE_DELAY = 1.0


@dataclass
class Request:
    method: str
    target: str                      # raw request target (path + query)
    path: str                        # unquoted path
    query: Dict[str, str]
    headers: Dict[str, str]          # lower-case names
    body: bytes
    host: str                        # host the client used to reach us (no port)
    role: str                        # wire | hgap | storage | imds

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain; charset=utf-8", **headers) -> Response:
        return cls(status, text.encode("utf-8"), {"Content-Type": content_type, **headers})

    @classmethod
    def xml(cls, text: str, status: int = 200) -> Response:
        return cls.text(status, text, "text/xml; charset=utf-8")

    @classmethod
    def json(cls, text: str, status: int = 200, **headers) -> Response:
        return cls.text(status, text, "application/json; charset=utf-8", **headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "GuestAgentFabric"
    sys_version = ""
    #: Seconds a kept connection may stay idle (and a read or write may wait) before the fabric drops it.
    timeout = 60

    def log_message(self, format, *args):
        pass  # the fabric keeps its own structured request log

    def handle(self):
        try:
            super().handle()
        except Exception:  # a broken client must never take the server down
            pass

    def _serve(self):
        started = time.monotonic()
        server: FabricHTTPServer = self.server  # type: ignore[assignment]
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.close_connection = True  # the body is left unread
            self._write(Response.text(413 if length > 0 else 400, "bad or too large Content-Length"))
            return
        body = self.rfile.read(length) if length else b""
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        headers = {k.lower(): v for k, v in self.headers.items()}
        host = (headers.get("host") or server.server_address[0]).strip()
        if host.startswith("["):
            host = host[: host.find("]") + 1]
        elif ":" in host:
            host = host.rsplit(":", 1)[0]
        req = Request(self.command, self.path, unquote(split.path), query, headers, body, host, server.role)
        server.dispatch(self, req, started)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _serve

    def _write(self, resp: Response, mode: Optional[str] = None) -> None:
        """Send ``resp``; ``mode`` is a sending body fault (faults.SEND_MODES) or None. The connection is
        kept for the next request (as the WireServer and HostGAPlugin do) unless the client asked to close
        it or the body is damaged."""
        if mode is not None:
            self.close_connection = True
        self.send_response(resp.status)
        for name, value in resp.headers.items():
            self.send_header(name, value)
        if mode == "endless":
            self.send_header("Transfer-Encoding", "chunked")
        elif resp.status not in (204, 304):
            size = HUGE_BODY if mode == "huge" else len(resp.body)
            self.send_header("Content-Length", str(size))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command == "HEAD" or resp.status in (204, 304):
            self.wfile.flush()  # no body: bytes after these heads would be read as the next answer
        elif mode == "truncated":
            self.wfile.write(resp.body[: len(resp.body) // 2])
        elif mode == "huge":
            block = resp.body + b" " * max(0, 1024 * 1024 - len(resp.body))
            for sent in range(0, HUGE_BODY, len(block)):
                self.wfile.write(block[: HUGE_BODY - sent])
        elif mode == "endless":
            chunk = b"%x\r\n%s\r\n" % (len(resp.body) or 1, resp.body or b" ")
            while True:  # until the client goes away (OSError)
                self.wfile.write(chunk)
        elif mode == "trickle":
            for i in range(len(resp.body)):
                self.wfile.write(resp.body[i:i + 1])
                self.wfile.flush()
                time.sleep(TRICKLE_DELAY)
        else:
            self.wfile.write(resp.body)
        self.wfile.flush()

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0): the client sees 'connection reset by peer'."""
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        finally:
            self.close_connection = True


class FabricHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, role: str, dispatch):
        self.role = role
        self.dispatch = dispatch
        #: TCP connections accepted (a client that keeps its connection opens one for many requests).
        self.connections = 0
        super().__init__(address, _Handler)
        self.thread: Optional[threading.Thread] = None

    def process_request(self, request, client_address):
        self.connections += 1
        super().process_request(request, client_address)

    def handle_error(self, request, client_address):
        pass  # errors are handled (and logged) per request

    def start(self) -> None:
        self.thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                       name=f"fabric-{self.role}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self.thread:
            self.thread.join(timeout=5)


def start_servers(specs: List[tuple]) -> List[FabricHTTPServer]:
    """specs: [(role, host, port, dispatch)] → started servers (all or none)."""
    started: List[FabricHTTPServer] = []
    try:
        for role, host, port, dispatch in specs:
            srv = FabricHTTPServer((host, port), role, dispatch)
            srv.start()
            started.append(srv)
    except Exception:
        for srv in started:
            srv.stop()
        raise
    return started
