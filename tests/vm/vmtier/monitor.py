"""Host end of QEMU's monitor (QMP, JSON over a unix socket): what the platform does to a running VM's
hardware — a media disconnect/connect on the NIC (``set_link``), a NIC hot-unplug and hot-plug
(``device_del`` / ``device_add``). The one way the tier talks to QEMU itself."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Optional


class MonitorError(Exception):
    """QEMU refused a command, or did not answer in time."""


class Monitor:
    TIMEOUT = 30.0   # for one command's answer

    def __init__(self, sock_path: Path):
        self.sock_path = Path(sock_path)
        self._sock: Optional[socket.socket] = None
        self._buf = b""
        self.events: list = []   # QMP events seen so far (DEVICE_DELETED, NIC_RX_FILTER_CHANGED, ...)

    def _connect(self, timeout: float) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(str(self.sock_path))
        self._sock = s
        greeting = self._read(timeout)
        if "QMP" not in greeting:
            raise MonitorError(f"not a QMP greeting: {greeting}")
        self._send_command("qmp_capabilities", {}, timeout)

    def close(self) -> None:
        if self._sock:
            self._sock.close()
            self._sock = None

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MonitorError("QEMU's monitor did not answer in time")
            self._sock.settimeout(left)
            chunk = self._sock.recv(65536)
            if not chunk:
                raise MonitorError("QEMU's monitor closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def _send_command(self, name: str, args: dict, timeout: float) -> object:
        self._sock.sendall((json.dumps({"execute": name, "arguments": args}) + "\n").encode())
        while True:
            msg = self._read(timeout)
            if "event" in msg:
                self.events.append(msg)
            elif "error" in msg:
                raise MonitorError(f"{name} {args}: {msg['error'].get('desc')}")
            elif "return" in msg:
                return msg["return"]

    def command(self, qmp_command: str, /, **args) -> object:
        """Run one QMP command with ``args``; its "return" value (MonitorError on QEMU's error answer)."""
        if self._sock is None:
            self._connect(self.TIMEOUT)
        return self._send_command(qmp_command, args, self.TIMEOUT)

    def wait_event(self, name: str, timeout: float, **data) -> dict:
        """Until QEMU announces event ``name`` whose data has ``data`` (e.g. DEVICE_DELETED device=nic0)."""
        if self._sock is None:
            self._connect(timeout)
        deadline = time.monotonic() + timeout

        def match(ev: dict) -> bool:
            return ev.get("event") == name and all(ev.get("data", {}).get(k) == v for k, v in data.items())

        while True:
            seen = next((ev for ev in self.events if match(ev)), None)
            if seen is not None:
                return seen
            left = deadline - time.monotonic()
            if left <= 0:
                raise MonitorError(f"no {name} {data} from QEMU within {timeout:.0f}s")
            msg = self._read(left)
            if "event" in msg:
                self.events.append(msg)
