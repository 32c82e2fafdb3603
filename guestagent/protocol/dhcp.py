"""DHCP as data (spec 01 §1.4): lease caches and DHCP packets, built and parsed as text and bytes.

Pure parsing only: reading the lease files, the UDP exchange and the routes are the OS's business
(:mod:`guestagent.osutil.dhcpprobe`, :mod:`guestagent.osutil.network`); the discovery procedure that
ties them together is :class:`guestagent.protocol.endpoint.DhcpHelper`.

Lease locations: upstream reads one glob chosen by the distro class; we read *every* known location,
in the distro's order (the distro's own location first), so a mis-detected distro still finds its
lease.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional, Sequence

from guestagent import log
from guestagent.errors import DhcpError

MAGIC_COOKIE = b"\x63\x82\x53\x63"
OPTIONS_OFFSET = 0xF0

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


def endpoint_from_lease_texts(pattern: str, texts: Sequence[str]) -> Optional[str]:
    """The last valid endpoint over the lease files of one glob, in order."""
    endpoint: Optional[str] = None
    for text in texts:
        found = parse_networkd_lease(text) if "/netif/" in pattern else parse_isc_leases(text)
        if found:
            endpoint = found
    return endpoint


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
