"""THE HTTP policy (spec 01 §2, §13): one request helper for WireServer, HGAP, IMDS and storage.

Plain ``http://`` without a proxy (all fabric traffic) goes over a tiny HTTP/1.1 client on a raw
socket with ``Connection: close`` -- no ``ssl``/``http.client`` import, so the ext-handler child stays
small. HTTPS and proxied requests use ``http.client`` (and ``ssl``), imported only when needed.
The retry loop reproduces upstream: retry codes, Fibonacci back-off, throttle extension to 25 tries,
410 → ResourceGoneError, 400 + InvalidContainerConfiguration → InvalidContainerError.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Union
from urllib.parse import urlsplit

from guestagent import log
from guestagent.errors import HttpError, InvalidContainerError, ResourceGoneError
from guestagent.protocol import activity
from guestagent.version import AGENT_NAME, AGENT_VERSION

DEFAULT_MAX_RETRY = 6
THROTTLE_RETRIES = 25
DEFAULT_TIMEOUT = 10.0
LOG_UPLOAD_TIMEOUT = 30.0
OK_CODES = (200, 201, 202)
RETRY_CODES = (205, 206, 403, 500, 501, 502, 503, 504, 507, 429)
THROTTLE_CODES = (403, 429, 503)
#: Largest response body kept in memory (packages are the biggest documents).
MAX_BODY = 512 * 1024 * 1024
HOST_PLUGIN_PORT = 32526
KNOWN_WIRESERVER_IP = "168.63.129.16"

Sleep = Callable[[float], None]


class _RetryableProtocolError(Exception):
    """The equivalent of http.client's NotConnected/IncompleteRead/ImproperConnectionState/BadStatusLine."""


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return self.headers.get(name.lower(), default)

    def text(self) -> str:
        """Body as UTF-8 text with a BOM stripped (01 §2)."""
        return self.body.decode("utf-8-sig", errors="replace")

    @property
    def ok(self) -> bool:
        return self.status in OK_CODES


# --- User-Agent -----------------------------------------------------------------------------------------
_GOAL_STATE_AGENT = re.compile(r"WALinuxAgent-(\d+(?:\.\d+){2,3}).*-run-exthandlers")
_user_agent: Optional[str] = None


def _goal_state_agent_version() -> str:
    from guestagent.osutil import processes  # psutil only when the first request names the agent

    for line in processes.command_lines():
        m = _GOAL_STATE_AGENT.search(line)
        if m:
            return m.group(1)
    return AGENT_VERSION


def user_agent() -> str:
    """``WALinuxAgent/<goal-state agent version>`` (scanned once, like upstream does at import)."""
    global _user_agent
    if _user_agent is None:
        _user_agent = f"{AGENT_NAME}/{_goal_state_agent_version()}"
    return _user_agent


# --- I/O error buckets (reported as HttpErrors telemetry every 30 min) ----------------------------------
_io_errors = {"hostplugin": 0, "protocol": 0, "other": 0}
_io_lock = threading.Lock()


def _count_io_error(url: str) -> None:
    parts = urlsplit(url)
    if parts.port == HOST_PLUGIN_PORT:
        bucket = "hostplugin"
    elif parts.hostname == KNOWN_WIRESERVER_IP or "comp=" in url:
        bucket = "protocol"
    else:
        bucket = "other"
    with _io_lock:
        _io_errors[bucket] += 1


def take_io_error_counts() -> dict[str, int]:
    """Return and reset the I/O error counters (the monitor thread reports them)."""
    with _io_lock:
        counts = dict(_io_errors)
        for k in _io_errors:
            _io_errors[k] = 0
    return counts


# --- proxies (01 §13.2) ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proxy:
    host: str
    port: int


def _ip_to_int(value: str) -> Optional[int]:
    parts = value.split(".")
    if len(parts) != 4:
        return None
    try:
        octets = [int(p) for p in parts]
    except ValueError:
        return None
    if any(o < 0 or o > 255 for o in octets):
        return None
    return (octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]


def bypass_proxy(host: str, no_proxy: Optional[str] = None) -> bool:
    """True when ``host`` matches an entry of no_proxy (IP, CIDR 1-32, or name suffix)."""
    if no_proxy is None:
        no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    entries = [e for e in no_proxy.replace(" ", "").split(",") if e]
    host_ip = _ip_to_int(host)
    for entry in entries:
        if host_ip is not None:
            if "/" in entry:
                net, _, width = entry.partition("/")
                net_ip = _ip_to_int(net)
                try:
                    bits = int(width)
                except ValueError:
                    continue
                if net_ip is None or not 1 <= bits <= 32:
                    continue
                mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
                if host_ip & mask == net_ip & mask:
                    return True
            elif _ip_to_int(entry) == host_ip:
                return True
        elif host.lower().endswith(entry.lower()):
            return True
    return False


def select_proxy(url: str, proxy_host: Optional[str] = None, proxy_port: Optional[Union[str, int]] = None
                 ) -> Optional[Proxy]:
    """HttpProxy.Host/Port first (both required), else http(s)_proxy from the environment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    chosen: Optional[Proxy] = None
    if proxy_host:
        if proxy_port not in (None, ""):
            try:
                chosen = Proxy(str(proxy_host), int(proxy_port))  # type: ignore[arg-type]
            except ValueError:
                chosen = None
    else:
        names = ("https_proxy", "HTTPS_PROXY") if parts.scheme == "https" else ("http_proxy", "HTTP_PROXY")
        env = next((os.environ[n] for n in names if os.environ.get(n)), None)
        if env:
            p = urlsplit(env if "://" in env else "http://" + env)
            if p.hostname:
                chosen = Proxy(p.hostname, p.port or 80)
    if chosen is not None and bypass_proxy(host):
        return None
    return chosen


# --- one attempt ------------------------------------------------------------------------------------------
def _read_response(sock: socket.socket, max_body: int, method: str) -> Response:
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            if not buf:
                raise _RetryableProtocolError("Remote end closed connection without response")
            raise _RetryableProtocolError("Connection closed inside the response headers")
        buf += chunk
        if len(buf) > 256 * 1024 and b"\r\n\r\n" not in buf:
            raise HttpError("Response headers too large")
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/") or not status_line[1].isdigit():
        raise _RetryableProtocolError(f"Bad status line: {lines[0][:100]!r}")
    status = int(status_line[1])
    reason = status_line[2] if len(status_line) > 2 else ""
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return Response(status, reason, headers, b"")
    body = bytearray(rest)
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return Response(status, reason, headers, _read_chunked(sock, body, max_body))
    length_text = headers.get("content-length")
    if length_text is not None:
        try:
            length = int(length_text)
        except ValueError:
            raise _RetryableProtocolError(f"Bad Content-Length {length_text!r}") from None
        if length > max_body:
            raise HttpError(f"Response too large: {length} bytes (limit {max_body})")
        while len(body) < length:
            chunk = sock.recv(min(1 << 20, length - len(body)))
            if not chunk:
                raise _RetryableProtocolError(f"IncompleteRead({len(body)} bytes read, {length - len(body)} more "
                                              f"expected)")
            body += chunk
        return Response(status, reason, headers, bytes(body[:length]))
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        body += chunk
        if len(body) > max_body:
            raise HttpError(f"Response too large (limit {max_body} bytes)")
    return Response(status, reason, headers, bytes(body))


def _read_chunked(sock: socket.socket, buf: bytearray, max_body: int) -> bytes:
    out = bytearray()

    def fill(n: int) -> None:
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise _RetryableProtocolError("IncompleteRead in chunked body")
            buf.extend(chunk)

    while True:
        while b"\r\n" not in buf:
            fill(len(buf) + 1)
        line, _, remaining = bytes(buf).partition(b"\r\n")
        buf[:] = remaining
        try:
            size = int(line.split(b";")[0].strip(), 16)
        except ValueError:
            raise _RetryableProtocolError("Bad chunk size") from None
        if size == 0:
            return bytes(out)
        fill(size + 2)
        out += buf[:size]
        del buf[:size + 2]
        if len(out) > max_body:
            raise HttpError(f"Response too large (limit {max_body} bytes)")


def _plain_request(method: str, url: str, body: Optional[bytes], headers: Mapping[str, str], timeout: float,
                   max_body: int, proxy: Optional[Proxy] = None) -> Response:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 80
    target = url if proxy else ((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    host_header = parts.netloc.rsplit("@", 1)[-1]
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host_header}"]
    names = {k.lower() for k in headers}
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if "content-length" not in names and (body is not None or method in ("POST", "PUT")):
        lines.append(f"Content-Length: {len(body or b'')}")
    if "connection" not in names:
        lines.append("Connection: close")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + (body or b"")
    address = (proxy.host, proxy.port) if proxy else (host, port)
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(request)
        return _read_response(sock, max_body, method)


def _tls_request(method: str, url: str, body: Optional[bytes], headers: Mapping[str, str], timeout: float,
                 max_body: int, proxy: Optional[Proxy]) -> Response:
    import http.client  # lazily: pulls in ssl and email

    parts = urlsplit(url)
    port = parts.port or 443
    if proxy:
        conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=timeout)
        conn.set_tunnel(parts.hostname or "", port)
    else:
        conn = http.client.HTTPSConnection(parts.hostname or "", port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    hdrs = dict(headers)
    hdrs.setdefault("Connection", "close")
    try:
        conn.request(method, target, body=body, headers=hdrs)
        resp = conn.getresponse()
        length = resp.getheader("content-length")
        if length and length.isdigit() and int(length) > max_body:
            raise HttpError(f"Response too large: {length} bytes (limit {max_body})")
        data = resp.read(max_body + 1)
        if len(data) > max_body:
            raise HttpError(f"Response too large (limit {max_body} bytes)")
        return Response(resp.status, resp.reason, {k.lower(): v for k, v in resp.getheaders()}, data)
    except (http.client.NotConnected, http.client.IncompleteRead, http.client.ImproperConnectionState,
            http.client.BadStatusLine) as e:
        raise _RetryableProtocolError(f"{type(e).__name__}: {e}") from None
    except http.client.HTTPException as e:
        raise HttpError(f"HTTP protocol error: {type(e).__name__}: {e}") from None
    finally:
        conn.close()


def send_once(method: str, url: str, body: Optional[bytes] = None, headers: Optional[Mapping[str, str]] = None,
              timeout: float = DEFAULT_TIMEOUT, proxy: Optional[Proxy] = None, max_body: int = MAX_BODY,
              allow_http: bool = False) -> Response:
    """One HTTP exchange; adds User-Agent unless given. Raises OSError / protocol errors untouched."""
    hdrs = dict(headers or {})
    if not any(k.lower() == "user-agent" for k in hdrs):
        hdrs["User-Agent"] = user_agent()
    scheme = urlsplit(url).scheme.lower()
    if scheme == "https":
        try:
            import ssl  # noqa: F401
        except ImportError:
            if not allow_http:
                raise HttpError("HTTPS is unavailable (no ssl module) and OS.AllowHTTP is not set") from None
            url = "http" + url[5:]
            scheme = "http"
    if scheme == "https":
        return _tls_request(method, url, body, hdrs, timeout, max_body, proxy)
    if scheme != "http":
        raise HttpError(f"Unsupported URL scheme: {scheme!r}")
    return _plain_request(method, url, body, hdrs, timeout, max_body, proxy)


# --- the retry policy ---------------------------------------------------------------------------------------
def fibonacci(n: int) -> int:
    """F(1)=2, F(2)=3, F(3)=5 ... the multiplier of retry_delay after n attempts."""
    a, b = 1, 2
    for _ in range(n - 1):
        a, b = b, a + b
    return b


class HttpClient:
    """Holds what varies per process: proxy settings, the sleep function (tests inject a fast one)."""

    def __init__(self, proxy_host: Optional[str] = None, proxy_port: Optional[Union[str, int]] = None,
                 sleep: Optional[Sleep] = None, allow_http: bool = False, timeout: float = DEFAULT_TIMEOUT):
        self.timeout = timeout
        self.proxy_host = proxy_host
        self.proxy_port = proxy_port
        self.sleep: Sleep = sleep or time.sleep
        self.allow_http = allow_http

    def request(self, method: str, url: str, body: Union[bytes, str, None] = None,
                headers: Optional[Mapping[str, str]] = None, *, use_proxy: bool = False,
                max_retry: Optional[int] = None, retry_codes: tuple[int, ...] = RETRY_CODES,
                retry_delay: float = 1.0, throttle_delay: float = 1.0, timeout: Optional[float] = None,
                max_body: int = MAX_BODY) -> Response:
        """Send with upstream's retry policy; returns any non-retried response, raises HttpError at the end."""
        data = body.encode("utf-8") if isinstance(body, str) else body
        timeout = self.timeout if timeout is None else timeout
        max_retry = DEFAULT_MAX_RETRY if max_retry is None else max(1, max_retry)
        proxy = select_proxy(url, self.proxy_host, self.proxy_port) if use_proxy else None
        throttled = False
        attempt = 0
        last = ""
        shown = log.redact(url)
        while attempt < max_retry:
            if attempt > 0:
                delay = throttle_delay if throttled else retry_delay * fibonacci(attempt)
                log.verbose("[HTTP Retry] Waiting {0} s before retrying {1} {2}", delay, method, shown)
                self.sleep(delay)
            attempt += 1
            try:
                resp = send_once(method, url, data, headers, timeout=timeout, proxy=proxy, max_body=max_body,
                                 allow_http=self.allow_http)
            except _RetryableProtocolError as e:
                last = f"[HTTP Retry] {method} {shown} -- {e}"
                log.verbose("{0} -- {1} attempts made", last, attempt)
                continue
            except HttpError:
                raise
            except (OSError, ValueError) as e:
                _count_io_error(url)
                last = f"[HTTP Failed] {method} {shown} -- IOError {e}"
                log.verbose("{0} -- {1} attempts made", last, attempt)
                continue
            activity.record(url, resp.status)  # any answer proves the endpoint is up (the monitor's shortcut)
            if resp.status in retry_codes:
                last = f"[HTTP Retry] {method} {shown} -- Status Code {resp.status}"
                log.verbose("{0} -- {1} attempts made", last, attempt)
                if resp.status in THROTTLE_CODES:
                    throttled = True
                    if "telemetrydata" not in url:
                        max_retry = max(max_retry, THROTTLE_RETRIES)
                continue
            if resp.status == 410:
                raise ResourceGoneError()
            if resp.status == 400 and b"InvalidContainerConfiguration" in resp.body:
                raise InvalidContainerError(f"400 InvalidContainerConfiguration: {method} {shown}", status=400)
            return resp
        raise HttpError(f"{last} -- {attempt} attempts made")

    def get(self, url: str, headers: Optional[Mapping[str, str]] = None, **kw) -> Response:
        return self.request("GET", url, None, headers, **kw)

    def post(self, url: str, body: Union[bytes, str], headers: Optional[Mapping[str, str]] = None, **kw) -> Response:
        return self.request("POST", url, body, headers, **kw)

    def put(self, url: str, body: Union[bytes, str], headers: Optional[Mapping[str, str]] = None, **kw) -> Response:
        return self.request("PUT", url, body, headers, **kw)


_default = HttpClient()


def default_client() -> HttpClient:
    return _default
