"""WireServer endpoint discovery (spec 01 §1): protocol/endpoint files, DHCP helper, detection loop.

The detection loop takes a ``probe(endpoint) -> protocol`` callable (the facade's versions + transport
cert + goal state), so this module knows nothing about HTTP. Sleep and attempt count are injectable.
The DHCP helper decides; the OS work is osutil's: routes and interface facts through netlink
(:mod:`guestagent.osutil.network`, loaded only when the helper runs: this module is also imported by
the ext-handler child, which must not hold pyroute2), leases and the UDP exchange in
:mod:`guestagent.osutil.dhcpprobe`, parsing in :mod:`guestagent.protocol.dhcp`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Optional, Protocol, Sequence, TypeVar

from guestagent import log
from guestagent.conf import Config
from guestagent.errors import AgentError, DhcpError, NetworkError, ProtocolNotFoundError
from guestagent.osutil import dhcpprobe, system
from guestagent.osutil.osrelease import distro as os_distro
from guestagent.protocol.dhcp import (
    DhcpReply,
    build_discover,
    endpoint_from_lease_texts,
    lease_locations,
    parse_reply,
)

KNOWN_WIRESERVER_IP = "168.63.129.16"
ENDPOINT_FILE = "WireServerEndpoint"
PROTOCOL_FILE = "Protocol"
PROTOCOL_NAME = "WireProtocol"
DETECT_ATTEMPTS = 360
DETECT_INTERVAL = 10.0

T = TypeVar("T")


def read_endpoint(lib_dir: str) -> str:
    """The endpoint file's IP; missing/empty → error logged and the well-known address."""
    text = system.read_text(os.path.join(lib_dir, ENDPOINT_FILE), default="") or ""
    if text.strip():
        return text.strip()
    log.error("[ProtocolError] Endpoint file {0} is missing or empty; using {1}",
              os.path.join(lib_dir, ENDPOINT_FILE), KNOWN_WIRESERVER_IP)
    return KNOWN_WIRESERVER_IP


def protocol_file_present(lib_dir: str) -> bool:
    text = system.read_text(os.path.join(lib_dir, PROTOCOL_FILE), default="") or ""
    return text.strip() == PROTOCOL_NAME


def write_files(lib_dir: str, endpoint: str) -> None:
    system.write_file(os.path.join(lib_dir, ENDPOINT_FILE), endpoint)
    system.write_file(os.path.join(lib_dir, PROTOCOL_FILE), PROTOCOL_NAME)


def clear_files(lib_dir: str) -> None:
    for name in (ENDPOINT_FILE, PROTOCOL_FILE):
        system.remove(os.path.join(lib_dir, name))


DHCP_TRIES = 5
DHCP_WAITS = (0, 10, 30, 60, 60)
BROADCAST = "255.255.255.255"


class DhcpNet(Protocol):
    """What the DHCP helper asks of netlink (:class:`guestagent.osutil.network.Direct` in the daemon)."""

    def route_exists(self, address: str) -> bool: ...

    def has_default_route(self) -> bool: ...

    def dhcp_interface(self) -> tuple[str, bytes]: ...

    def add_route(self, destination: str, prefix: int, gateway: Optional[str] = None,
                  ifname: Optional[str] = None) -> None: ...

    def del_route(self, destination: str, prefix: int, gateway: Optional[str] = None,
                  ifname: Optional[str] = None) -> None: ...

    def configure_routes(self, gateway: Optional[str], routes: Sequence[tuple[str, int, str]]) -> list[str]: ...


class DhcpHelper:
    """One process's DHCP state: ``discover()`` → endpoint or None; remembers gateway/routes."""

    _requests_built = 0

    def __init__(self, *, net: Optional[DhcpNet] = None, sleep: Callable[[float], None] = time.sleep,
                 exchange_fn: Callable[[bytes], bytes] = dhcpprobe.exchange,
                 run: Callable[..., object] = system.run, distro: Optional[tuple[str, str]] = None):
        if net is None:
            from guestagent.osutil.network import Direct  # pyroute2: the daemon's discovery only

            net = Direct()
        self.net = net
        self.sleep = sleep
        self.exchange_fn = exchange_fn
        self.run = run
        self.skip_cache = False
        self.endpoint: Optional[str] = None
        self.reply: Optional[DhcpReply] = None
        if distro is None:
            d = os_distro()
            distro = (d[0], d[1])
        self.distro = distro

    def discover(self) -> Optional[str]:
        if self.net.route_exists(KNOWN_WIRESERVER_IP):
            log.info("Route to {0} exists", KNOWN_WIRESERVER_IP)
            self.endpoint = KNOWN_WIRESERVER_IP
            return self.endpoint
        if not self.skip_cache:
            found = self.endpoint_from_leases()
            if found:
                log.info("WireServer endpoint {0} found in a DHCP lease cache", found)
                self.endpoint = found
                return found
        self.reply = self.send_discover()
        self.endpoint = self.reply.endpoint
        for failure in self.net.configure_routes(self.reply.gateway, self.reply.routes):
            log.warn("Could not add a route: {0}", failure)
        return self.endpoint

    def endpoint_from_leases(self) -> Optional[str]:
        """The last valid endpoint of the first lease location (distro's own first) that has one."""
        for pattern in lease_locations(*self.distro):
            texts = [text for _, text in dhcpprobe.lease_files(pattern)]
            found = endpoint_from_lease_texts(pattern, texts)
            if found:
                return found
        return None

    def send_discover(self) -> DhcpReply:
        ifname, mac = self.net.dhcp_interface()
        if len(mac) != 6:
            raise DhcpError(f"Cannot read the MAC address of {ifname}")
        added_route = False
        if not self.net.has_default_route():
            try:
                self.net.add_route(BROADCAST, 32, ifname=ifname)
                added_route = True
            except NetworkError as e:
                log.warn("Could not add the DHCP broadcast route: {0}", e)
        try:
            for attempt in range(DHCP_TRIES):
                dhcpprobe.allow_dhcp_replies(self.run)
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
                try:
                    self.net.del_route(BROADCAST, 32, ifname=ifname)
                except NetworkError as e:
                    log.warn("Could not remove the DHCP broadcast route: {0}", e)


def detect(conf: Config, lib_dir: str, probe: Callable[[str], T], *, endpoint_ip: Optional[str] = None,
           sleep: Optional[Callable[[float], None]] = None, attempts: Optional[int] = None,
           dhcp: Any = None) -> T:
    """Up to 360 attempts 10 s apart (01 §1.3). ``endpoint_ip`` skips DHCP (tests, Protocol.EndpointDiscovery
    other than dhcp uses the endpoint file / well-known IP instead)."""
    sleep = sleep or time.sleep
    attempts = DETECT_ATTEMPTS if attempts is None else attempts
    clear_files(lib_dir)
    use_dhcp = conf.protocol_endpoint_discovery.lower() == "dhcp" and endpoint_ip is None
    if use_dhcp and dhcp is None:
        dhcp = DhcpHelper()
    endpoint: Optional[str] = None
    last: Optional[BaseException] = None
    for attempt in range(1, attempts + 1):
        try:
            if endpoint is None:
                if endpoint_ip is not None:
                    endpoint = endpoint_ip
                elif use_dhcp:
                    endpoint = dhcp.discover()
                else:
                    endpoint = read_endpoint(lib_dir)
            if not endpoint:
                raise ProtocolNotFoundError("No WireServer endpoint")
            protocol = probe(endpoint)
            write_files(lib_dir, endpoint)
            log.info("Protocol endpoint is {0}; WireProtocol detected", endpoint)
            return protocol
        except (AgentError, OSError) as e:
            last = e
            log.info("Protocol detection attempt {0} failed: {1}", attempt, e)
            endpoint = None
            if dhcp is not None:
                dhcp.skip_cache = True
        if attempt < attempts:
            sleep(DETECT_INTERVAL)
    raise ProtocolNotFoundError("No protocol found.", last)
