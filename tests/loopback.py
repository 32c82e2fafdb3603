"""A raw TCP listener on loopback for the tests that play a server the fabric emulator cannot (hostile,
silent or scripted byte by byte): it binds an ephemeral port and hands every connection it accepts, on
its own thread, to :meth:`LoopbackListener.accepted`."""

from __future__ import annotations

import socket
import threading


class LoopbackListener:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/machine/?comp=goalstate"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.accepted(conn)

    def accepted(self, conn: socket.socket) -> None:
        """One connection, on the listener's thread (the next waits until this returns)."""
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()
