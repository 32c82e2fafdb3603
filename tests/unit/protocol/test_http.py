"""The HTTP policy over real loopback sockets: retry codes, back-off, throttling, errors, proxies."""

import socket
import time

import pytest

from guestagent.errors import HttpError, InvalidContainerError, ResourceGoneError
from guestagent.protocol import http
from tests.loopback import LoopbackListener


class Script(LoopbackListener):
    """A raw TCP server answering each connection with the next scripted action."""

    def __init__(self, actions):
        self.actions = list(actions)
        self.requests = []
        super().__init__()

    def accepted(self, conn):
        data = b""
        conn.settimeout(5)
        try:
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
                    while len(body) < n:
                        body += conn.recv(65536)
            self.requests.append((head.decode(), body))
            action = self.actions.pop(0) if self.actions else ("status", 200, b"ok")
            self._act(conn, action)
        except OSError:
            pass
        finally:
            conn.close()

    @staticmethod
    def _act(conn, action):
        kind = action[0]
        if kind == "status":
            _, code, body = action
            conn.sendall(f"HTTP/1.1 {code} X\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        elif kind == "raw":
            conn.sendall(action[1])
        elif kind == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        elif kind == "truncate":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
        elif kind == "delay":
            time.sleep(action[1])
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nlate")


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(sleeps):
    return http.HttpClient(sleep=sleeps.append)


def test_fibonacci_multipliers():
    assert [http.fibonacci(n) for n in range(1, 7)] == [2, 3, 5, 8, 13, 21]


def _header_lines(head):
    return sorted(head.split("\r\n")[1:])


def test_success_headers_and_bom(client):
    s = Script([("status", 200, b"\xef\xbb\xbf<x/>")])
    resp = client.get(s.url, {"x-ms-version": "2012-11-30"})
    assert resp.status == 200 and resp.text() == "<x/>"
    head = s.requests[0][0]
    assert head.startswith("GET /machine/?comp=goalstate HTTP/1.1\r\n")
    # upstream's http.client set and only it: no Accept, no gzip, no keep-alive header, no Content-Length on GET
    assert _header_lines(head) == sorted([f"Host: 127.0.0.1:{s.port}", "Accept-Encoding: identity",
                                          "x-ms-version: 2012-11-30", "User-Agent: WALinuxAgent/2.15.0.1"])


def test_headers_are_those_http_client_sends_without_connection_close(client):
    """What upstream's restutil sends (http.client, its headers plus Connection: close and User-Agent),
    captured by the same server, minus Connection: close (the session keeps connections)."""
    import http.client as httpclient

    s = Script([("status", 200, b""), ("status", 200, b""), ("status", 201, b""), ("status", 201, b"")])
    headers = {"x-ms-agent-name": "WALinuxAgent", "x-ms-version": "2012-11-30",
               "Content-Type": "text/xml;charset=utf-8"}
    for method, body in (("GET", None), ("POST", "<Health/>")):
        conn = httpclient.HTTPConnection("127.0.0.1", s.port, timeout=5)
        conn.request(method, "/machine?comp=health", body=body,
                     headers={**headers, "Connection": "close", "User-Agent": http.user_agent()})
        conn.getresponse().read()
        conn.close()
        client.request(method, f"http://127.0.0.1:{s.port}/machine?comp=health", body, headers)
    upstream_get, ours_get, upstream_post, ours_post = (r[0] for r in s.requests)
    assert _header_lines(ours_get) == [h for h in _header_lines(upstream_get) if h != "Connection: close"]
    assert _header_lines(ours_post) == [h for h in _header_lines(upstream_post) if h != "Connection: close"]
    assert "Content-Length: 9" in _header_lines(ours_post) and s.requests[3][1] == b"<Health/>"


def test_caller_user_agent_wins(client):
    s = Script([("status", 200, b"")])
    client.get(s.url, {"User-Agent": "WALinuxAgent/2.15.0.1+health"})
    assert "User-Agent: WALinuxAgent/2.15.0.1+health" in s.requests[0][0]
    assert s.requests[0][0].count("User-Agent") == 1


def test_retry_codes_with_fibonacci_delays(client, sleeps):
    s = Script([("status", 500, b""), ("status", 502, b""), ("status", 200, b"done")])
    assert client.get(s.url).body == b"done"
    assert sleeps == [2, 3]


def test_exhausted_retries_raise_http_error_with_count(client, sleeps):
    s = Script([("status", 500, b"")] * 6)
    with pytest.raises(HttpError, match="6 attempts made"):
        client.get(s.url)
    assert len(s.requests) == 6 and sleeps == [2, 3, 5, 8, 13]


def test_throttling_extends_to_25_attempts_with_throttle_delay(client, sleeps):
    s = Script([("status", 429, b"")] * 24 + [("status", 200, b"ok")])
    assert client.get(s.url, throttle_delay=0.5).ok
    assert len(s.requests) == 25 and sleeps == [0.5] * 24


def test_telemetry_is_not_extended(client):
    s = Script([("status", 503, b"")] * 5)
    url = f"http://127.0.0.1:{s.port}/machine?comp=telemetrydata"
    with pytest.raises(HttpError, match="3 attempts"):
        client.post(url, "<x/>", max_retry=3, throttle_delay=8)
    assert len(s.requests) == 3


def test_410_and_invalid_container(client):
    s = Script([("status", 410, b""), ("status", 400, b"<Error>InvalidContainerConfiguration</Error>"),
                ("status", 400, b"other"), ("status", 404, b"")])
    with pytest.raises(ResourceGoneError):
        client.get(s.url)
    with pytest.raises(InvalidContainerError):
        client.get(s.url)
    assert client.get(s.url).status == 400
    assert client.get(s.url).status == 404
    assert len(s.requests) == 4


def test_400_is_retried_first_when_a_retry_code(client, sleeps):
    s = Script([("status", 400, b"InvalidContainerConfiguration")] * 6)
    with pytest.raises(HttpError) as err:
        client.get(s.url, retry_codes=(*http.RETRY_CODES, 400))
    assert not isinstance(err.value, InvalidContainerError)


def test_reset_truncated_bad_status_are_retried(client):
    s = Script([("reset",), ("truncate",), ("raw", b"garbage\r\n\r\n"), ("status", 200, b"ok")])
    assert client.get(s.url).body == b"ok"
    assert len(s.requests) == 4


def test_timeout_then_retry(client):
    s = Script([("delay", 1.0), ("status", 200, b"ok")])
    start = time.monotonic()
    assert client.get(s.url, timeout=0.3).body == b"ok"
    assert time.monotonic() - start < 3


def test_connection_refused_is_counted_and_exhausts(client):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    http.take_io_error_counts()
    with pytest.raises(HttpError, match="IOError"):
        client.get(f"http://127.0.0.1:{port}/x", max_retry=2)
    assert http.take_io_error_counts()["other"] == 2


def test_chunked_body(client):
    s = Script([("raw", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n")])
    assert client.get(s.url).body == b"Wikipedia"


def test_body_cap(client):
    s = Script([("status", 200, b"x" * 1000)])
    with pytest.raises(HttpError, match="too large"):
        client.get(s.url, kind=http.Kind("test document", 100, 5.0))


def test_default_sleep_is_real():
    s = Script([("status", 503, b""), ("status", 200, b"ok")])
    c = http.HttpClient()
    start = time.monotonic()
    assert c.get(s.url, retry_delay=0.05, throttle_delay=0.2).ok
    assert time.monotonic() - start >= 0.2


def test_post_put_send_content_length(client):
    s = Script([("status", 201, b""), ("status", 202, b"")])
    assert client.put(s.url, b"abc").status == 201
    assert client.post(s.url, "").status == 202
    assert "Content-Length: 3" in s.requests[0][0] and s.requests[0][1] == b"abc"
    assert "Content-Length: 0" in s.requests[1][0]


def test_no_proxy_rules():
    assert http.bypass_proxy("10.1.2.3", "foo.com, 10.0.0.0/8")
    assert http.bypass_proxy("10.1.2.3", "10.1.2.3")
    assert not http.bypass_proxy("11.1.2.3", "10.0.0.0/8,10.1.2.4")
    assert not http.bypass_proxy("10.1.2.3", "10.0.0.0/0,10.0.0.0/33")
    assert http.bypass_proxy("acct.blob.core.windows.net", "core.windows.net")
    assert http.bypass_proxy("ACCT.Blob.Core.Windows.NET", "windows.net")
    assert not http.bypass_proxy("example.org", "windows.net")


def test_proxy_selection(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert http.select_proxy("https://a.blob/x") is None
    assert http.select_proxy("https://a.blob/x", "proxy.local", 3128) == http.Proxy("proxy.local", 3128)
    assert http.select_proxy("https://a.blob/x", "proxy.local", None) is None
    monkeypatch.setenv("https_proxy", "http://p2:8080")
    monkeypatch.setenv("http_proxy", "p1:3128")
    assert http.select_proxy("https://a.blob/x") == http.Proxy("p2", 8080)
    assert http.select_proxy("http://a.blob/x") == http.Proxy("p1", 3128)
    monkeypatch.setenv("no_proxy", "a.blob")
    assert http.select_proxy("http://a.blob/x") is None


def test_http_through_proxy_sends_absolute_url(monkeypatch, client):
    s = Script([("status", 200, b"via proxy")])
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    c = http.HttpClient(proxy_host="127.0.0.1", proxy_port=s.port, sleep=lambda d: None)
    resp = c.get("http://storage.invalid/container/blob?sv=1&sig=abc", use_proxy=True)
    assert resp.body == b"via proxy"
    assert s.requests[0][0].startswith("GET http://storage.invalid/container/blob?sv=1&sig=abc HTTP/1.1")
    # without use_proxy the proxy is never used (WireServer/HGAP/IMDS)
    with pytest.raises(HttpError):
        c.get("http://storage.invalid/x", max_retry=1)


def test_unsupported_scheme(client):
    with pytest.raises(HttpError, match="scheme"):
        client.get("ftp://127.0.0.1/x")
