"""THE HTTP policy (spec 01 §2, §13): one request helper for WireServer, HGAP, IMDS and storage.

Built on one ``requests.Session`` per process (made at the first request), so connections to the
WireServer and the HostGAPlugin are reused. On top of it, upstream's policy: its headers and only
those, retry codes, Fibonacci back-off, throttling to 25 tries, 410 → ResourceGoneError,
400 + InvalidContainerConfiguration → InvalidContainerError, HttpProxy.* / environment proxies with
no_proxy, OS.AllowHTTP. Fabric data is untrusted, so every body is streamed under a cap chosen by the
caller's document :class:`Kind`, and every exchange (connect, request, headers, body) has an overall
deadline: each socket read may wait only for the time left.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from typing import Callable, Mapping, Optional, Union
from urllib.parse import urlsplit

import requests
import urllib3

try:
    import ssl  # noqa: F401  (requests imports it too, when this Python has it)

    _HAS_SSL = True
except ImportError:  # a Python built without ssl: OS.AllowHTTP decides whether https falls back to http
    _HAS_SSL = False

from guestagent import log
from guestagent.errors import HttpError, InvalidContainerError, ResourceGoneError
from guestagent.protocol import activity
from guestagent.protocol.httpdeadline import Deadline, DeadlineAdapter, active
from guestagent.version import AGENT_NAME, AGENT_VERSION

DEFAULT_MAX_RETRY = 6
THROTTLE_RETRIES = 25
DEFAULT_TIMEOUT = 10.0
LOG_UPLOAD_TIMEOUT = 30.0
OK_CODES = (200, 201, 202)
RETRY_CODES = (205, 206, 403, 500, 501, 502, 503, 504, 507, 429)
THROTTLE_CODES = (403, 429, 503)
HOST_PLUGIN_PORT = 32526
KNOWN_WIRESERVER_IP = "168.63.129.16"
#: Read size while streaming a body.
CHUNK = 64 * 1024

Sleep = Callable[[float], None]


@dataclass(frozen=True)
class Kind:
    """What a response body is: its cap (bytes kept in memory) and the overall deadline of one exchange."""

    name: str
    cap: int
    deadline: float


#: Goal-state documents, vmSettings, manifests, IMDS, status and health answers: the XML parser's cap
#: (protocol/xml.py MAX_SIZE; a test keeps the two equal).
DOCUMENT = Kind("fabric document", 10 * 1024 * 1024, 60.0)
#: Extension packages (zip, kept in memory until written): the largest artifacts the agent fetches;
#: the deadline is the whole download budget of 02 §5 (300 s).
PACKAGE = Kind("extension package", 512 * 1024 * 1024, 300.0)
#: vmAgentLog upload: the body goes up (the archive), the answer is small; sending the archive counts.
LOG_UPLOAD = Kind("log upload", 1024 * 1024, 300.0)


class _Retry(Exception):
    """One attempt failed in a way upstream retries; ``io`` marks the ones it counts as I/O errors."""

    def __init__(self, message: str, io: bool):
        super().__init__(message)
        self.io = io


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


def response_error(resp: Response) -> str:
    """A failed answer as upstream's restutil.read_response_error words it (the body as Python 3 prints
    bytes), ASCII only: the value of HealthService observations."""
    text = f"[HTTP Failed] [{resp.status}: {resp.reason}] {resp.body!r}"
    return text.encode("ascii", "ignore").decode("ascii")


def failed_at_hostplugin(status: int) -> bool:
    """A 5xx other than 502 (which HGAP returns for its upstream's failures) is HGAP's own failure."""
    return status >= 500 and status != 502


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
# Upstream's rules, not requests' own: requests also honours ``no_proxy=*``, ``all_proxy``, CGI's
# REQUEST_METHOD and ~/.netrc, and matches no_proxy names case-sensitively. The chosen proxy is handed
# to requests explicitly (CONNECT tunnel for https, absolute URI for http).
@dataclass(frozen=True)
class Proxy:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


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


# --- the session ------------------------------------------------------------------------------------------
_session: Optional[requests.Session] = None
_session_pid = 0
_session_lock = threading.Lock()


def session() -> requests.Session:
    """This process's session, made at the first request (a forked process makes its own).

    It adds nothing upstream's http.client would not send: no default headers (requests would add
    ``Accept``, ``Accept-Encoding: gzip, deflate``, ``Connection: keep-alive`` and its User-Agent), no
    cookies kept, nothing from the environment or ~/.netrc (proxies are chosen by :func:`select_proxy`)."""
    global _session, _session_pid
    with _session_lock:
        if _session is None or _session_pid != os.getpid():
            s = requests.Session()
            s.trust_env = False
            s.headers.clear()
            s.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
            adapter = DeadlineAdapter()
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            _session, _session_pid = s, os.getpid()
        return _session


# --- one exchange -------------------------------------------------------------------------------------------
def _causes(error: BaseException) -> list[BaseException]:
    """The error and what it wraps (requests → urllib3 → http.client/socket), outermost first."""
    seen: list[BaseException] = []
    todo = [error]
    while todo and len(seen) < 16:
        e = todo.pop(0)
        if any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [a for a in e.args if isinstance(a, BaseException)]
        if isinstance(e, urllib3.exceptions.MaxRetryError) and e.reason is not None:
            todo.append(e.reason)
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return seen


def _closed_by_peer(error: BaseException) -> bool:
    """An end of stream or a reset before any answer: what a request meets on a kept connection the
    server closed while it was idle (the reset comes when the request reaches the closed socket). A live
    connection reset after the server read the request looks the same; sending again at once is right
    for both (RFC 9112 §9.3.1), and upstream's fresh connection per request never met either."""
    return any(isinstance(c, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)) for c in _causes(error))


def _open(method: str, url: str, body: Optional[bytes], headers: Mapping[str, str],
          proxies: Optional[dict[str, str]], timeout: float, deadline: Deadline) -> requests.Response:
    """Send and read the response head. A kept connection the server closed meanwhile (its close crossed
    our request) is not a failure of the server: the request goes again at once on a new connection, as
    upstream's always-new connection would have carried it."""
    def send() -> requests.Response:
        active.reused = False
        return session().request(method, url, data=body, headers=headers, proxies=proxies, stream=True,
                                 allow_redirects=False, timeout=(deadline.timeout(timeout), timeout))

    try:
        return send()
    except requests.ConnectionError as e:
        if not (active.reused and _closed_by_peer(e)):
            raise
        log.verbose("[HTTP] {0} {1}: the kept connection was closed by the server; sending on a new one",
                    method, log.redact(url))
    return send()


_RETRIED_PROTOCOL_ERRORS = (http.client.NotConnected, http.client.IncompleteRead,
                            http.client.ImproperConnectionState, http.client.BadStatusLine)


def _classify(error: BaseException, method: str, shown: str) -> Exception:
    """Upstream's handling: http.client's retryable errors retried, its other protocol errors final,
    socket errors (I/O errors) retried and counted."""
    causes = _causes(error)
    protocol = next((c for c in causes if isinstance(c, http.client.HTTPException)), None)
    if protocol is not None:
        if isinstance(protocol, _RETRIED_PROTOCOL_ERRORS):
            return _Retry(f"[HTTP Retry] {method} {shown} -- {_describe(protocol)}", io=False)
        return HttpError(f"[HTTP Failed] {method} {shown} -- HttpException {_describe(protocol)}")
    root = next((c for c in reversed(causes) if isinstance(c, OSError)), causes[-1])
    return _Retry(f"[HTTP Failed] {method} {shown} -- IOError {_describe(root)}", io=True)


def _describe(error: BaseException) -> str:
    """``Name: text`` (or the text alone when it already starts with the name, as IncompleteRead's does);
    the text may quote the server (a bad status line): control characters go, 200 characters at most."""
    name, text = type(error).__name__, re.sub(r"[\x00-\x1f\x7f]+", " ", str(error)).strip()[:200]
    return log.redact(text if text.startswith(name) else f"{name}: {text}" if text else name)


def _read_body(resp: requests.Response, kind: Kind, deadline: Deadline, method: str, shown: str) -> bytes:
    """The body, streamed: refused as soon as it is known to pass the cap, never read whole."""
    too_large = f"Response too large: {method} {shown} -- more than {kind.cap} bytes, the cap for a {kind.name}"
    declared_text = resp.headers.get("content-length", "").strip()
    declared = int(declared_text) if declared_text.isdigit() else None
    if declared is not None and declared > kind.cap:
        raise HttpError(f"{too_large} (Content-Length: {declared})")
    body = bytearray()
    for chunk in resp.raw.stream(CHUNK, decode_content=False):
        body += chunk
        if len(body) > kind.cap:
            raise HttpError(too_large)
        if deadline.passed():
            raise socket.timeout("overall deadline passed")
    if declared is not None and len(body) != declared and method != "HEAD" and resp.status_code not in (204, 304):
        raise http.client.IncompleteRead(bytes(body), declared - len(body))
    return bytes(body)


def send_once(method: str, url: str, body: Optional[bytes] = None, headers: Optional[Mapping[str, str]] = None,
              timeout: float = DEFAULT_TIMEOUT, proxy: Optional[Proxy] = None, kind: Kind = DOCUMENT,
              allow_http: bool = False) -> Response:
    """One HTTP exchange within ``kind.deadline``; adds User-Agent unless given. Raises HttpError when it
    must not be retried (cap, deadline, bad URL, protocol error), :class:`_Retry` when it may."""
    hdrs = dict(headers or {})
    if not any(k.lower() == "user-agent" for k in hdrs):
        hdrs["User-Agent"] = user_agent()
    shown = log.redact(url)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "https" and not _HAS_SSL:
        if not allow_http:
            raise HttpError("HTTPS is unavailable (no ssl module) and OS.AllowHTTP is not set")
        url = "http" + url[5:]
        scheme = "http"
    if scheme not in ("http", "https"):
        raise HttpError(f"Unsupported URL scheme: {scheme!r}")
    deadline = Deadline(kind.deadline)
    proxies = {"http": proxy.url, "https": proxy.url} if proxy is not None else None
    resp: Optional[requests.Response] = None
    active.deadline = deadline
    try:
        resp = _open(method, url, body, hdrs, proxies, timeout, deadline)
        data = _read_body(resp, kind, deadline, method, shown)
        return Response(resp.status_code, resp.reason or "", {k.lower(): v for k, v in resp.headers.items()},
                        data)
    except HttpError:
        raise
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader,
            requests.exceptions.MissingSchema, requests.exceptions.InvalidSchema) as e:
        raise HttpError(f"[HTTP Failed] {method} {shown} -- invalid request: {log.redact(str(e))}") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as e:
        if deadline.passed():
            _count_io_error(url)
            raise HttpError(f"[HTTP Failed] {method} {shown} -- no complete response within {kind.deadline:g} s "
                            f"(the overall deadline of a {kind.name})") from None
        raise _classify(e, method, shown) from None
    finally:
        active.deadline = None
        if resp is not None:
            resp.close()  # after a whole body the connection is back in the pool already; else it is dropped


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
                kind: Kind = DOCUMENT) -> Response:
        """Send with upstream's retry policy; returns any non-retried response, raises HttpError at the end.
        ``timeout`` bounds each socket wait, ``kind`` the body size and each attempt's overall time."""
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
                resp = send_once(method, url, data, headers, timeout=timeout, proxy=proxy, kind=kind,
                                 allow_http=self.allow_http)
            except _Retry as e:
                if e.io:
                    _count_io_error(url)
                last = str(e)
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
