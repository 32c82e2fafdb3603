"""The OS side of the agent's own DHCP probe (spec 01 §1.4): lease caches read from disk, the UDP
exchange, and the firewall opening for the reply. Packets and lease texts are parsed in
:mod:`guestagent.protocol.dhcp`; routes and interface facts come from :mod:`guestagent.osutil.network`.
"""

from __future__ import annotations

import glob
import os
import socket
from typing import Callable

from guestagent.errors import CommandError
from guestagent.osutil import system

DHCP_TIMEOUT = 10.0
#: Before each try upstream deletes, then inserts, the rule that lets the reply in (errors ignored).
OPEN_PORT_68 = (["iptables", "-D", "INPUT", "-p", "udp", "--dport", "68", "-j", "ACCEPT"],
                ["iptables", "-I", "INPUT", "-p", "udp", "--dport", "68", "-j", "ACCEPT"])


def lease_files(pattern: str) -> list[tuple[str, str]]:
    """(path, text) of every readable file matching ``pattern`` (under the osutil root), sorted by path."""
    out = []
    for p in sorted(glob.glob(os.fspath(system.path(pattern)))):
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                out.append((p, f.read()))
        except OSError:
            continue
    return out


def exchange(request: bytes, *, bind: tuple[str, int] = ("0.0.0.0", 68),
             server: tuple[str, int] = ("<broadcast>", 67), timeout: float = DHCP_TIMEOUT) -> bytes:
    """Send one request and wait for one reply (≤ 1024 bytes)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(bind)
        sock.settimeout(timeout)
        sock.sendto(request, server)
        data, _ = sock.recvfrom(1024)
        return data
    finally:
        sock.close()


def allow_dhcp_replies(run: Callable[..., object] = system.run) -> None:
    for argv in OPEN_PORT_68:
        try:
            run(argv, check=False, timeout=30)
        except CommandError:
            pass
