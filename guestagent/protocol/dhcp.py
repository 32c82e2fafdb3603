"""The DHCP helper (spec 01 §1.4): route table check, lease caches, DHCPDISCOVER for option 245.

Lease locations: upstream reads one glob chosen by the distro class; we read *every* known location,
in the distro's order (the distro's own location first), so a mis-detected distro still finds its
lease. Packets are built and parsed here as bytes; the socket exchange takes injectable addresses so
it can be exercised on loopback without privileges.
"""

from __future__ import annotations

import glob
import os
import re
import socket
import struct
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

from guestagent import log
from guestagent.errors import CommandError, DhcpError
from guestagent.osutil import system

KNOWN_WIRESERVER_IP = "168.63.129.16"
ROUTE_HEX = "10813FA8"
MAGIC_COOKIE = b"\x63\x82\x53\x63"
OPTIONS_OFFSET = 0xF0
DHCP_TRIES = 5
DHCP_TIMEOUT = 10.0
DHCP_WAITS = (0, 10, 30, 60, 60)

ISC_DEBIAN = "/var/lib/dhcp/dhclient.*.leases"
NETWORKD = "/run/systemd/netif/leases/*"
ISC_RHEL6 = "/var/lib/dhclient/dhclient-*.leases"
ISC_RHEL = "/var/lib/dhclient/dhclient-*.lease"
NM_DHCLIENT = "/var/lib/NetworkManager/dhclient-*.lease"
ALL_LOCATIONS = (ISC_DEBIAN, NETWORKD, ISC_RHEL6, ISC_RHEL, NM_DHCLIENT)
RHEL_FAMILY = ("rhel", "centos", "ol", "oracle", "almalinux", "rocky", "fedora", "redhat")


def lease_locations(distro_id: str, version: str) -> list[str]:
    """Every known lease glob, the distro's own first (01 §1.4 table)."""
    distro_id = (distro_id or "").lower()
    major = version.split(".")[0] if version else ""
    if distro_id == "ubuntu":
        try:
            v = tuple(int(x) for x in version.split(".")[:2])
        except ValueError:
            v = ()
        first = [NETWORKD] if (18, 4) <= v <= (24, 4) else [ISC_DEBIAN]
    elif distro_id == "chainguard":
        first = [NETWORKD]
    elif distro_id in RHEL_FAMILY:
        first = [ISC_RHEL6] if major == "6" else [ISC_RHEL, NM_DHCLIENT]
    else:
        first = [ISC_DEBIAN]
    return first + [loc for loc in ALL_LOCATIONS if loc not in first]


_HEX_BYTE = re.compile(r"[0-9a-fA-F]{1,2}")
_HEX_WORD = re.compile(r"[0-9a-fA-F]{8}")


def _isc_hex_ip(value: str) -> Optional[str]:
    """ISC dhclient's spelling of an unknown option: each byte in ``%x`` (one or two hex digits), colon
    separated, e.g. ``7f:0:0:2``. Four bytes or nothing."""
    parts = value.strip().rstrip(";").split(":")
    if len(parts) != 4 or not all(_HEX_BYTE.fullmatch(p) for p in parts):
        return None
    return ".".join(str(int(p, 16)) for p in parts)


def _networkd_hex_ip(value: str) -> Optional[str]:
    """systemd-networkd's spelling: the option's bytes as one hex string, two digits a byte."""
    value = value.strip()
    if not _HEX_WORD.fullmatch(value):
        return None
    return ".".join(str(int(value[i:i + 2], 16)) for i in range(0, 8, 2))


def parse_isc_leases(text: str, now: Optional[datetime] = None) -> Optional[str]:
    """The endpoint of the last valid lease carrying option unknown-245 (ISC dhclient format)."""
    if "option unknown-245" not in text:
        return None
    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    endpoint: Optional[str] = None
    candidate: Optional[str] = None
    expired = True
    for line in text.splitlines():
        if line.startswith("lease"):
            candidate, expired = None, True
        elif "option unknown-245" in line:
            candidate = _isc_hex_ip(line.strip().split()[-1])
        elif "expire" in line:
            if "never" in line:
                expired = False
            else:
                try:
                    stamp = line.split(" ", 4)[-1].strip().rstrip(";")
                    expired = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S") < now
                except ValueError:
                    log.error("Could not parse the lease expiry: {0}", line.strip())
                    expired = True
        elif "}" in line:
            if candidate and not expired:
                endpoint = candidate
    return endpoint


def parse_networkd_lease(text: str) -> Optional[str]:
    endpoint = None
    for line in text.splitlines():
        if line.startswith("OPTION_245="):
            endpoint = _networkd_hex_ip(line.split("=", 1)[1]) or endpoint
    return endpoint


def endpoint_from_leases(locations: list[str]) -> Optional[str]:
    """Last valid endpoint over all files of the given globs (paths under the osutil root)."""
    endpoint: Optional[str] = None
    for pattern in locations:
        for path in sorted(glob.glob(os.fspath(system.path(pattern)))):
            try:
                text = open(path, encoding="utf-8", errors="replace").read()
            except OSError:
                continue
            found = parse_networkd_lease(text) if "/netif/" in pattern else parse_isc_leases(text)
            if found:
                endpoint = found
        if endpoint:
            return endpoint
    return endpoint


def route_table_has_wireserver() -> bool:
    text = system.read_text("/proc/net/route", default="") or ""
    return ROUTE_HEX in text


def primary_interface() -> Optional[str]:
    """Interface of the lowest-metric default route in /proc/net/route, else the first non-loopback one."""
    text = system.read_text("/proc/net/route", default="") or ""
    best: Optional[tuple[int, str]] = None
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 7 and cols[1] == "00000000":
            try:
                flags, metric = int(cols[3], 16), int(cols[6])
            except ValueError:
                continue
            if flags & 0x2 and (best is None or metric < best[0]):
                best = (metric, cols[0])
    if best:
        return best[1]
    for _, name in socket.if_nameindex():
        if name != "lo":
            return name
    return None


# --- packets ---------------------------------------------------------------------------------------------
def build_discover(mac: bytes, xid: bytes, broadcast: bool) -> bytes:
    """The 244-byte DHCPDISCOVER of 01 §1.4."""
    if len(mac) != 6 or len(xid) != 4:
        raise DhcpError("DHCP request needs a 6-byte MAC and a 4-byte xid")
    packet = bytearray(244)
    packet[0:4] = b"\x01\x01\x06\x00"
    packet[4:8] = xid
    packet[10] = 0x80 if broadcast else 0x00
    packet[0x1C:0x22] = mac
    packet[0xEC:0xF0] = MAGIC_COOKIE
    packet[0xF0:0xF4] = b"\x35\x01\x01\xff"
    return bytes(packet)


@dataclass
class DhcpReply:
    endpoint: Optional[str] = None
    gateway: Optional[str] = None
    routes: list[tuple[str, int, str]] = field(default_factory=list)  # (network, width, gateway)


def _dotted(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def parse_routes(value: bytes) -> list[tuple[str, int, str]]:
    """Option 249: width(1) + ceil(width/8) network octets + gateway(4), repeated."""
    routes = []
    i = 0
    while i < len(value):
        width = value[i]
        if width > 32:
            raise DhcpError(f"Bad route width {width} in option 249")
        n = (width + 7) // 8
        if i + 1 + n + 4 > len(value):
            raise DhcpError("Truncated option 249")
        net = value[i + 1:i + 1 + n] + b"\0" * (4 - n)
        gateway = value[i + 1 + n:i + 5 + n]
        routes.append((_dotted(net), width, _dotted(gateway)))
        i += 5 + n
    return routes


def parse_reply(reply: bytes, xid: bytes, mac: bytes) -> DhcpReply:
    if len(reply) < OPTIONS_OFFSET:
        raise DhcpError(f"DHCP reply too short: {len(reply)} bytes")
    if reply[0xEC:0xF0] != MAGIC_COOKIE:
        raise DhcpError("DHCP reply has a bad magic cookie")
    if reply[4:8] != xid:
        raise DhcpError("DHCP reply has a different transaction id")
    if reply[0x1C:0x22] != mac:
        raise DhcpError("DHCP reply is for a different MAC address")
    if len(reply) < 0xF6:
        log.warn("DHCP reply is shorter than expected: {0} bytes", len(reply))
    out = DhcpReply()
    i = OPTIONS_OFFSET
    while i < len(reply):
        code = reply[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(reply):
            break
        length = reply[i + 1]
        value = reply[i + 2:i + 2 + length]
        if len(value) != length:
            raise DhcpError(f"Truncated DHCP option {code}")
        if code == 3 and length >= 4:
            out.gateway = _dotted(value[:4])
        elif code == 245 and length == 4:
            out.endpoint = _dotted(value)
        elif code == 249:
            out.routes = parse_routes(value)
        i += 2 + length
    return out


def route_commands(reply: DhcpReply, has_default_route: bool) -> list[list[str]]:
    """`ip route add` argv lists for the learned gateway and option-249 routes (corrected form)."""
    cmds = []
    if reply.gateway and not has_default_route:
        cmds.append(["ip", "route", "add", "0", "via", reply.gateway])
    for net, width, gw in reply.routes:
        cmds.append(["ip", "route", "add", f"{net}/{width}", "via", gw])
    return cmds


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


def _mac_of(ifname: str) -> bytes:
    text = system.read_text(f"/sys/class/net/{ifname}/address", default="") or ""
    try:
        return bytes(int(x, 16) for x in text.strip().split(":"))
    except ValueError:
        return b""


class DhcpHelper:
    """One process's DHCP state: ``discover()`` → endpoint or None; remembers gateway/routes."""

    _requests_built = 0

    def __init__(self, conf: Any = None, *, sleep: Callable[[float], None] = time.sleep,
                 exchange_fn: Callable[..., bytes] = exchange, run: Callable[..., Any] = system.run,
                 distro: Optional[tuple[str, str]] = None):
        self.conf = conf
        self.sleep = sleep
        self.exchange_fn = exchange_fn
        self.run = run
        self.skip_cache = False
        self.endpoint: Optional[str] = None
        self.reply: Optional[DhcpReply] = None
        if distro is None:
            from guestagent.osutil.osrelease import distro as os_distro

            d = os_distro()
            distro = (d[0], d[1])
        self.distro = distro

    def discover(self) -> Optional[str]:
        if route_table_has_wireserver():
            log.info("WireServer route found in /proc/net/route; endpoint {0}", KNOWN_WIRESERVER_IP)
            self.endpoint = KNOWN_WIRESERVER_IP
            return self.endpoint
        if not self.skip_cache:
            found = endpoint_from_leases(lease_locations(*self.distro))
            if found:
                log.info("WireServer endpoint {0} found in a DHCP lease cache", found)
                self.endpoint = found
                return found
        self.reply = self.send_discover()
        self.endpoint = self.reply.endpoint
        self._apply_routes(self.reply)
        return self.endpoint

    def _has_default_route(self) -> bool:
        try:
            out = self.run(["ip", "route", "show"], check=False, timeout=30).stdout
        except CommandError:
            return False
        return any(line.startswith(("default ", "0.0.0.0 ")) for line in out.splitlines())

    def _apply_routes(self, reply: DhcpReply) -> None:
        for argv in route_commands(reply, self._has_default_route()):
            try:
                self.run(argv, check=False, timeout=30)
            except CommandError as e:
                log.warn("Could not add route {0}: {1}", " ".join(argv), e)

    def send_discover(self) -> DhcpReply:
        ifname = primary_interface() or "eth0"
        mac = _mac_of(ifname)
        if len(mac) != 6:
            raise DhcpError(f"Cannot read the MAC address of {ifname}")
        added_route = False
        if not self._has_default_route():
            self.run(["ip", "route", "add", "255.255.255.255", "dev", ifname], check=False, timeout=30)
            added_route = True
        try:
            for attempt in range(DHCP_TRIES):
                for argv in (["iptables", "-D", "INPUT", "-p", "udp", "--dport", "68", "-j", "ACCEPT"],
                             ["iptables", "-I", "INPUT", "-p", "udp", "--dport", "68", "-j", "ACCEPT"]):
                    try:
                        self.run(argv, check=False, timeout=30)
                    except CommandError:
                        pass
                xid = os.urandom(4)
                request = build_discover(mac, xid, broadcast=DhcpHelper._requests_built > 0)
                DhcpHelper._requests_built += 1
                try:
                    return parse_reply(self.exchange_fn(request), xid, mac)
                except (OSError, DhcpError) as e:
                    log.warn("DHCP attempt {0} failed: {1}", attempt + 1, e)
                    self.sleep(DHCP_WAITS[attempt])
            raise DhcpError("Failed to receive dhcp response.")
        finally:
            if added_route:
                self.run(["ip", "route", "del", "255.255.255.255", "dev", ifname], check=False, timeout=30)


def unpack_ip(value: int) -> str:
    return socket.inet_ntoa(struct.pack("!I", value))
