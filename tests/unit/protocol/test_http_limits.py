"""The HTTP policy against hostile servers on loopback: every exchange ends within its overall deadline,
every body within its cap (never read whole), and connections are reused when the server allows it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from guestagent.errors import HttpError
from guestagent.protocol import http, xml
from tests.loopback import LoopbackListener

REPO = Path(__file__).resolve().parents[3]
MB = 1024 * 1024


class Server(LoopbackListener):
    """A raw TCP server: reads each request head and hands the socket to ``answer(conn, head)``;
    ``answer`` returns True to keep the connection for the next request."""

    def __init__(self, answer):
        self.answer = answer
        self.connections = 0
        self.heads: list[str] = []
        self.sent = 0
        super().__init__()

    def accepted(self, conn):
        self.connections += 1
        threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                self.heads.append(head.decode())
                if not self.answer(self, conn, head.decode()):
                    return
        except OSError:
            pass
        finally:
            conn.close()

    def send(self, conn, data: bytes) -> None:
        conn.sendall(data)
        self.sent += len(data)


def keep_alive(server, conn, head):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n<GoalState>")
    return True


def trickle_body(server, conn, head):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    for _ in range(1000):
        server.send(conn, b"x")
        time.sleep(0.5)


def trickle_headers(server, conn, head):
    server.send(conn, b"HTTP/1.1 200 OK\r\nX-Slow: ")
    for _ in range(1000):
        server.send(conn, b"a")
        time.sleep(0.5)


def declared_200mb(server, conn, head):
    server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (200 * MB))
    block = b"x" * MB
    for _ in range(200):
        server.send(conn, block)


def streamed_200mb(server, conn, head):
    """No Content-Length: the body ends when the connection closes (HTTP/1.0 style)."""
    server.send(conn, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    block = b"x" * MB
    for _ in range(200):
        server.send(conn, block)


def endless_chunked(server, conn, head):
    server.send(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    while True:
        server.send(conn, chunk)


def endless_line(char: bytes):
    def answer(server, conn, head):
        server.send(conn, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while True:
            server.send(conn, char * 65536)
    return answer


@pytest.fixture
def client():
    return http.HttpClient(sleep=lambda s: None)


SHORT = http.Kind("test document", http.DOCUMENT.cap, 2.0)


def test_document_cap_is_the_xml_parsers():
    assert http.DOCUMENT.cap == xml.MAX_SIZE


def test_two_requests_one_connection(client):
    s = Server(keep_alive)
    assert client.get(s.url).body == b"<GoalState>"
    assert client.post(s.url, "<Health/>").body == b"<GoalState>"
    assert s.connections == 1 and len(s.heads) == 2


def test_a_closing_server_gets_a_new_connection_each_time(client):
    s = Server(lambda server, conn, head: server.send(conn, b"HTTP/1.0 200 OK\r\n\r\nbye"))
    assert [client.get(s.url).body for _ in range(3)] == [b"bye"] * 3
    assert s.connections == 3


@pytest.mark.parametrize("answer", [trickle_body, trickle_headers], ids=["body", "headers"])
def test_a_trickle_ends_at_the_deadline_with_a_clear_error(client, answer):
    s = Server(answer)
    http.take_io_error_counts()
    start = time.monotonic()
    with pytest.raises(HttpError, match=r"no complete response within 2 s \(the overall deadline of a test document"):
        client.get(s.url + "&sig=SECRET", kind=SHORT)
    elapsed = time.monotonic() - start
    assert 1.9 < elapsed < 3.0
    assert s.connections == 1  # not retried: a server that trickles is not one to wait for six times
    assert http.take_io_error_counts()["protocol"] == 1


def test_the_deadline_bounds_a_trickle_with_the_default_per_read_timeout(client):
    """Each byte comes well inside the 10 s per-read timeout: only the overall deadline ends it."""
    s = Server(trickle_body)
    start = time.monotonic()
    with pytest.raises(HttpError, match="deadline"):
        client.get(s.url, kind=http.Kind("test document", 1000, 3.0), timeout=10.0)
    assert time.monotonic() - start < 4.0


def test_a_declared_200mb_document_is_refused_before_its_body(client):
    s = Server(declared_200mb)
    start = time.monotonic()
    with pytest.raises(HttpError) as err:
        client.get(s.url + "&sig=SECRET")
    assert time.monotonic() - start < 2.0
    message = str(err.value)
    assert "Response too large" in message and f"{http.DOCUMENT.cap} bytes" in message
    assert "fabric document" in message and f"127.0.0.1:{s.port}/machine/" in message
    assert "Content-Length: 209715200" in message and "SECRET" not in message


@pytest.mark.parametrize("answer", [streamed_200mb, endless_chunked], ids=["close-delimited", "chunked"])
def test_a_streamed_body_ends_at_the_cap(client, answer):
    s = Server(answer)
    kind = http.Kind("test document", 1 * MB, 10.0)
    with pytest.raises(HttpError, match=f"Response too large: GET .* more than {MB} bytes"):
        client.get(s.url, kind=kind)
    time.sleep(0.2)
    assert s.sent < 1 * MB + 8 * MB  # the cap plus what the socket buffers held: never the whole body


@pytest.mark.parametrize(("char", "error"), [(b"f", "Response too large"), (b"z", "InvalidChunkLength")])
def test_an_endless_chunk_size_line_is_read_only_up_to_a_line_cap(client, char, error):
    """urllib3 reads the chunk-size line with an unbounded readline(): the reader caps every line."""
    s = Server(endless_line(char))
    start = time.monotonic()
    with pytest.raises(HttpError, match=error):
        client.get(s.url, kind=http.Kind("test document", MB, 5.0))
    assert time.monotonic() - start < 5.0
    time.sleep(0.2)
    assert s.sent < s.connections * (MB + 8 * MB)


PEAK = r"""
import json, sys
from guestagent.protocol import http

def hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024

port, small = int(sys.argv[1]), int(sys.argv[2])
client = http.HttpClient(sleep=lambda s: None)
client.get(f"http://127.0.0.1:{small}/machine/?comp=goalstate")
client.get(f"http://127.0.0.1:{small}/machine/?comp=goalstate", kind=http.PACKAGE)
base = hwm()
error = ""
try:
    client.get(f"http://127.0.0.1:{port}/machine/?comp=goalstate")
except Exception as e:
    error = str(e)
print(json.dumps({"base": base, "peak": hwm(), "error": error}))
"""


@pytest.mark.parametrize("answer", [streamed_200mb, declared_200mb], ids=["streamed", "declared"])
def test_a_200mb_document_keeps_the_peak_rss_near_normal(answer):
    big, small = Server(answer), Server(keep_alive)
    out = subprocess.run([sys.executable, "-c", PEAK, str(big.port), str(small.port)], capture_output=True,
                         text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "Response too large" in result["error"]
    assert result["peak"] - result["base"] < 20, result


def test_cookies_are_not_kept_and_redirects_not_followed(client):
    def answer(server, conn, head):
        server.send(conn, b"HTTP/1.1 302 Found\r\nSet-Cookie: a=b; Path=/\r\nLocation: http://127.0.0.1:1/x\r\n"
                          b"Content-Length: 0\r\n\r\n")
        return True

    s = Server(answer)
    assert client.get(s.url).status == 302
    assert client.get(s.url).status == 302
    assert len(s.heads) == 2 and "cookie" not in s.heads[1].lower()


def test_a_compressed_body_is_returned_as_sent(client):
    import gzip

    data = gzip.compress(b"<GoalState/>")

    def answer(server, conn, head):
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(data)
                    + data)
        return True

    assert client.get(Server(answer).url).body == data  # http.client never decoded it either


def test_https_through_a_proxy_opens_a_tunnel(monkeypatch):
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)

    def refuse(server, conn, head):
        server.send(conn, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

    s = Server(refuse)
    c = http.HttpClient(proxy_host="127.0.0.1", proxy_port=s.port, sleep=lambda d: None)
    with pytest.raises(HttpError):
        c.get("https://acct.blob.invalid/container/blob?sig=x", use_proxy=True, max_retry=1)
    assert s.heads[0].startswith("CONNECT acct.blob.invalid:443 HTTP/1.")
    assert "sig=x" not in s.heads[0]


def test_the_default_port_is_left_out_of_the_host_header(monkeypatch):
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    s = Server(keep_alive)
    c = http.HttpClient(proxy_host="127.0.0.1", proxy_port=s.port, sleep=lambda d: None)
    c.get("http://storage.invalid/container/blob", use_proxy=True)
    c.get("http://storage.invalid:8080/container/blob", use_proxy=True)
    assert "Host: storage.invalid\r\n" in s.heads[0] + "\r\n"
    assert "Host: storage.invalid:8080\r\n" in s.heads[1] + "\r\n"


def test_a_kept_connection_closed_by_the_server_is_replaced_at_once():
    """The server drops the kept connection when the next request arrives on it (its idle close crossing
    our request): the request goes again on a new connection, with no back-off and no attempt lost."""
    def answer(server, conn, head):
        if server.connections == 1 and len(server.heads) == 2:
            return False  # close without answering
        server.send(conn, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    sleeps = []
    client = http.HttpClient(sleep=sleeps.append)
    s = Server(answer)
    assert client.get(s.url).body == b"ok"
    assert client.get(s.url, max_retry=1).body == b"ok"
    assert s.connections == 2 and len(s.heads) == 3 and sleeps == []


def test_an_endless_header_line_is_http_clients_line_too_long(client):
    def answer(server, conn, head):
        server.send(conn, b"HTTP/1.1 200 OK\r\nX-Long: ")
        while True:
            server.send(conn, b"a" * 65536)

    s = Server(answer)
    with pytest.raises(HttpError, match="HttpException LineTooLong"):
        client.get(s.url)
    assert s.connections == 1  # a protocol error upstream does not retry


def test_errors_quote_the_server_without_its_control_characters(client):
    s = Server(lambda server, conn, head: server.send(conn, b"HTTP/1.1 2x0 \x1b[31mOK\r\nFake: log line\r\n\r\n"))
    with pytest.raises(HttpError) as err:
        client.get(s.url, max_retry=1)
    assert "BadStatusLine: HTTP/1.1 2x0  [31mOK -- 1 attempts made" in str(err.value)
    assert "\x1b" not in str(err.value) and "\n" not in str(err.value).split("] ", 1)[1]



def test_os_allow_http_decides_when_this_python_has_no_ssl(monkeypatch):
    monkeypatch.setattr(http, "_HAS_SSL", False)
    s = Server(keep_alive)
    https = s.url.replace("http://", "https://")
    with pytest.raises(HttpError, match=r"HTTPS is unavailable .* OS\.AllowHTTP is not set"):
        http.HttpClient(sleep=lambda d: None).get(https)
    assert http.HttpClient(sleep=lambda d: None, allow_http=True).get(https).body == b"<GoalState>"
    assert s.heads[0].startswith("GET /machine/?comp=goalstate HTTP/1.1")
