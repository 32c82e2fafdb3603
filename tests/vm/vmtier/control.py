"""Host end of the control channel: JSON lines over a virtio-serial port (a unix socket on the host).

The guest end (scripts/vm/guest/vmctl-guest) starts early in boot, before the network and the agent,
and answers until power-off; a reboot is seen as a new boot_id in the answer to a ping.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union


class ControlError(Exception):
    """The guest did not answer in time, or answered with an error."""


@dataclass
class Result:
    argv: list
    rc: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"$ {' '.join(map(str, self.argv))}\n[rc={self.rc}]\n{self.out}{self.err}"


class Control:
    def __init__(self, sock_path: Path, alive: Callable[[], bool]):
        self.sock_path = Path(sock_path)
        self._alive = alive  # False once QEMU exited: stop waiting at once
        self._sock: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._replies: dict = {}
        self._next_id = 0
        self.boot_id: Optional[str] = None

    def connect(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(self.sock_path))
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline or not self._alive():
                    raise ControlError(f"cannot connect to {self.sock_path}")
                time.sleep(0.1)
        self._sock = s
        threading.Thread(target=self._reader, daemon=True, name="vmctl-reader").start()

    def close(self) -> None:
        if self._sock:
            try:
                self._sock.close()
            except OSError:
                pass

    def _reader(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self._sock.recv(1 << 20)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._cond.notify_all()
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue  # a line cut by a guest reset
                with self._cond:
                    self._replies[msg.get("id")] = msg
                    self._cond.notify_all()

    def _send(self, req: dict) -> int:
        with self._lock:
            self._next_id += 1
            req = dict(req, id=self._next_id)
            self._sock.sendall((json.dumps(req) + "\n").encode())
            return self._next_id

    def _wait(self, ids, timeout: float) -> Optional[dict]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in ids:
                    if i in self._replies:
                        return self._replies.pop(i)
                left = deadline - time.monotonic()
                if left <= 0 or not self._alive():
                    return None
                self._cond.wait(min(left, 0.5))

    def request(self, op: str, wait: float = 60, **fields) -> dict:
        rid = self._send(dict(fields, op=op))
        msg = self._wait([rid], wait)
        if msg is None:
            raise ControlError(f"guest did not answer {op} {fields.get('argv') or fields.get('path') or ''} "
                               f"within {wait:.0f}s")
        if not msg.get("ok"):
            raise ControlError(f"guest: {op} failed: {msg.get('error')}")
        return msg

    def wait_boot(self, timeout: float, not_boot_id: Optional[str] = None) -> str:
        """Ping until a guest whose boot_id differs from ``not_boot_id`` answers; returns its boot_id."""
        deadline = time.monotonic() + timeout
        sent: list = []
        while time.monotonic() < deadline and self._alive():
            sent.append(self._send({"op": "ping"}))
            msg = self._wait(sent, 2.0)
            if msg and msg.get("ok") and msg.get("boot_id") != not_boot_id:
                self.boot_id = msg["boot_id"]
                return self.boot_id
        raise ControlError(f"guest did not boot (no control channel answer) within {timeout:.0f}s")

    def run(self, cmd: Union[str, list], timeout: float = 120, input: Optional[bytes] = None,
            background: bool = False, env: Optional[dict] = None) -> Result:
        fields: dict = {"timeout": timeout, "background": background, "env": env or {}}
        if isinstance(cmd, str):
            fields["sh"] = cmd
            argv = ["sh", "-c", cmd]
        else:
            fields["argv"] = argv = [str(a) for a in cmd]
        if input is not None:
            fields["input"] = base64.b64encode(input).decode()
        msg = self.request("run", wait=timeout + 30, **fields)
        if background:
            return Result(argv, 0, str(msg.get("pid")), "")
        out = base64.b64decode(msg.get("out", "")).decode(errors="replace")
        err = base64.b64decode(msg.get("err", "")).decode(errors="replace")
        return Result(argv, msg["rc"], out, err)

    def read(self, path: str, timeout: float = 60) -> bytes:
        return base64.b64decode(self.request("read", wait=timeout, path=path)["data"])

    def write(self, path: str, data: bytes, mode: int = 0o644, timeout: float = 120) -> None:
        self.request("write", wait=timeout, path=path, data=base64.b64encode(data).decode(), mode=mode)
