"""The overall deadline of one HTTP exchange, built into urllib3's connections (spec 01 §2): a response
whose status line, headers and body are read under the time left, sends bounded the same way, and every
line capped; requests mounts them through :class:`DeadlineAdapter`. protocol/http.py sets
``active.deadline`` around each exchange.
"""

from __future__ import annotations

import http.client
import io
import socket
import threading
import time
from typing import Optional

import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

#: The longest line read (http.client asks for its 64 KiB limit + 1 to detect a longer one).
LINE_CAP = 64 * 1024 + 1


class Deadline:
    """The moment one exchange must be over; hands out socket timeouts no longer than the time left."""

    def __init__(self, seconds: float):
        self.at = time.monotonic() + seconds

    def passed(self) -> bool:
        return time.monotonic() >= self.at

    def timeout(self, per_read: Optional[float]) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise socket.timeout("overall deadline passed")
        return left if per_read is None else min(per_read, left)


class _Active(threading.local):
    """The exchange the current thread is making: its deadline (read when the response is built), and
    whether its request went out on a kept connection."""

    deadline: Optional[Deadline] = None
    reused = False


active = _Active()


class DeadlineReader(io.RawIOBase):
    """The socket's raw reader, each read waiting at most min(per-read timeout, time left)."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)  # a SocketIO: keeps the fd alive as http.client expects
        self._per_read = sock.gettimeout()
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> Optional[int]:  # type: ignore[override]
        self._sock.settimeout(self._deadline.timeout(self._per_read))
        return self._raw.readinto(b)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _LineCappedReader(io.BufferedReader):
    """urllib3 reads chunk-size and trailer lines with an unbounded readline(): cap every line."""

    def readline(self, size: Optional[int] = -1) -> bytes:
        return super().readline(LINE_CAP if size is None or size < 0 else min(size, LINE_CAP))


class DeadlineSocket:
    """What http.client's response needs of the socket (``makefile``), answering a deadline-bound reader."""

    def __init__(self, sock: socket.socket, deadline: Deadline):
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return _LineCappedReader(DeadlineReader(self._sock, self._deadline))


class DeadlineResponse(http.client.HTTPResponse):
    """Status line, headers and body all read under the exchange's deadline (a trickled header too)."""

    def __init__(self, sock: socket.socket, debuglevel: int = 0, method: Optional[str] = None,
                 url: Optional[str] = None):
        deadline = active.deadline
        source = sock if deadline is None else DeadlineSocket(sock, deadline)
        super().__init__(source, debuglevel, method, url)  # type: ignore[arg-type]


class DeadlineConnection:
    """Mixed into urllib3's connections: the deadline-bound response, sends bounded by the time left, and
    a note of whether the connection was already open (kept from an earlier exchange)."""

    response_class = DeadlineResponse
    sock: Optional[socket.socket]
    timeout: Optional[float]

    def request(self, *args: object, **kwargs: object) -> None:
        active.reused = self.sock is not None
        super().request(*args, **kwargs)  # type: ignore[misc]

    def send(self, data: bytes) -> None:
        deadline = active.deadline
        if deadline is not None and self.sock is not None:
            self.sock.settimeout(deadline.timeout(self.timeout))
        super().send(data)  # type: ignore[misc]


class _HttpConnection(DeadlineConnection, urllib3.connection.HTTPConnection):
    pass


class _HttpsConnection(DeadlineConnection, urllib3.connection.HTTPSConnection):
    pass


class _HttpPool(HTTPConnectionPool):
    ConnectionCls = _HttpConnection


class _HttpsPool(HTTPSConnectionPool):
    ConnectionCls = _HttpsConnection


_POOLS = {"http": _HttpPool, "https": _HttpsPool}


class DeadlineAdapter(HTTPAdapter):
    """requests' adapter with the deadline-bound connections, direct and through a proxy."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **kw: object) -> None:
        super().init_poolmanager(connections, maxsize, block, **kw)
        self.poolmanager.pool_classes_by_scheme = _POOLS

    def proxy_manager_for(self, proxy: str, **kw: object) -> urllib3.ProxyManager:
        manager = super().proxy_manager_for(proxy, **kw)
        manager.pool_classes_by_scheme = _POOLS
        return manager
