"""Netlink through pyroute2: the route table, routes, links and addresses (spec 01 §1.4, 05 §6, §10).

The one module that talks netlink. pyroute2 costs ~24 MB of RSS, so this module loads only where
network work happens: in the daemon before Ready (endpoint discovery, the hostname publish of
provisioning), in ``waagent -deprovision``, and in a short-lived interpreter that runs one action for
the ext-handler child (``python -m guestagent.osutil.network VERB ...``, driven by
:mod:`guestagent.osutil.nethelper`), so the idle child never holds it.

:class:`LinkWatch` is the media-change feed (RTMGRP_LINK) the pre-provisioned-VM wait blocks on.
"""

from __future__ import annotations

import json
import select
import socket
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTMGRP_LINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from guestagent import log
from guestagent.errors import NetworkError

MAIN_TABLE = 254  # what /proc/net/route shows
IFF_UP = 0x1
IFF_LOOPBACK = 0x8
ANY = "0.0.0.0"


@dataclass(frozen=True)
class Route:
    """One IPv4 route of the main table."""
    destination: str
    prefix: int
    gateway: Optional[str]
    ifname: str
    metric: int

    @property
    def is_default(self) -> bool:
        return self.prefix == 0


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mac: str
    up: bool            # administratively up (IFF_UP)
    operstate: str      # the kernel's operational state: UP, DOWN, LOWERLAYERDOWN, UNKNOWN...
    loopback: bool


@dataclass(frozen=True)
class Interface:
    """Upstream's ``get_first_if``: the primary interface's name, MAC and IPv4 address."""
    name: str
    mac: str
    ipv4: str


def _link(msg: ifinfmsg) -> Link:
    flags = int(msg["flags"])
    return Link(index=int(msg["index"]), name=str(msg.get_attr("IFLA_IFNAME") or ""),
                mac=str(msg.get_attr("IFLA_ADDRESS") or ""), up=bool(flags & IFF_UP),
                operstate=str(msg.get_attr("IFLA_OPERSTATE") or "UNKNOWN"), loopback=bool(flags & IFF_LOOPBACK))


class Netlink:
    """One rtnetlink socket; use as a context manager. Errors surface as :class:`NetworkError`."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    def links(self) -> list[Link]:
        return [_link(m) for m in self._ipr.get_links()]

    def link(self, ifname: str) -> Link:
        for link in self.links():
            if link.name == ifname:
                return link
        raise NetworkError(f"No network interface named {ifname}")

    def routes(self) -> list[Route]:
        names = {link.index: link.name for link in self.links()}
        out = []
        for msg in self._ipr.get_routes(family=socket.AF_INET):
            if (msg.get_attr("RTA_TABLE") or msg["table"]) != MAIN_TABLE:
                continue
            out.append(self._route(msg, names))
        return out

    @staticmethod
    def _route(msg: rtmsg, names: dict[int, str]) -> Route:
        oif = msg.get_attr("RTA_OIF")
        return Route(destination=str(msg.get_attr("RTA_DST") or ANY), prefix=int(msg["dst_len"]),
                     gateway=msg.get_attr("RTA_GATEWAY"), ifname=names.get(int(oif), "") if oif else "",
                     metric=int(msg.get_attr("RTA_PRIORITY") or 0))

    def ipv4_addresses(self) -> dict[str, str]:
        """Interface name → its first IPv4 address (interfaces without one are absent)."""
        names = {link.index: link.name for link in self.links()}
        out: dict[str, str] = {}
        for msg in self._ipr.get_addr(family=socket.AF_INET):
            name = names.get(int(msg["index"]))
            address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
            if name and address and name not in out:
                out[name] = str(address)
        return out

    def set_link(self, ifname: str, up: bool) -> None:
        index = self.link(ifname).index
        self._call(f"set {ifname} {'up' if up else 'down'}", self._ipr.link, "set", index=index,
                   state="up" if up else "down")

    def add_route(self, destination: str, prefix: int, gateway: Optional[str] = None,
                  ifname: Optional[str] = None) -> None:
        self._call(f"add route {destination}/{prefix}", self._ipr.route, "add",
                   **self._route_spec(destination, prefix, gateway, ifname))

    def del_route(self, destination: str, prefix: int, gateway: Optional[str] = None,
                  ifname: Optional[str] = None) -> None:
        self._call(f"delete route {destination}/{prefix}", self._ipr.route, "del",
                   **self._route_spec(destination, prefix, gateway, ifname))

    def _route_spec(self, destination: str, prefix: int, gateway: Optional[str],
                    ifname: Optional[str]) -> dict[str, object]:
        spec: dict[str, object] = {"table": MAIN_TABLE}
        if prefix:
            spec.update(dst=destination, dst_len=prefix)
        if gateway:
            spec["gateway"] = gateway
        if ifname:
            spec["oif"] = self.link(ifname).index
        return spec

    @staticmethod
    def _call(what: str, fn: Callable[..., object], *args: object, **kwargs: object) -> None:
        try:
            fn(*args, **kwargs)
        except NetlinkError as e:
            raise NetworkError(f"Could not {what}: {e}") from None


# --- facts and actions, each on a socket of its own -------------------------------------------------------
def routes() -> list[Route]:
    with Netlink() as nl:
        return nl.routes()


def has_default_route() -> bool:
    return any(r.is_default for r in routes())


def route_exists(address: str) -> bool:
    """A route to or through ``address`` (upstream looks for its hex form anywhere in /proc/net/route)."""
    return any(address in (r.destination, r.gateway) for r in routes())


def _primary(table: Sequence[Route]) -> str:
    """The interface of the lowest-metric default route through a gateway; '' when there is none."""
    defaults = [r for r in table if r.is_default and r.gateway and r.ifname]
    return min(defaults, key=lambda r: r.metric).ifname if defaults else ""


def primary_interface() -> str:
    with Netlink() as nl:
        return _primary(nl.routes())


def configured_primary() -> str:
    """The primary interface once it also has an IPv4 address, else ''. A default route alone does not
    make it usable: systemd-networkd adds a static ``Gateway=`` route at carrier, before the DHCP lease
    gives the address, and a connection opened then has no source address to answer to."""
    with Netlink() as nl:
        primary = _primary(nl.routes())
        return primary if primary in nl.ipv4_addresses() else ""


def first_interface() -> Interface:
    """Upstream's ``get_first_if``: the primary interface when it has an IPv4 address, else the first
    non-loopback interface that has one; name, MAC (upper-case hex, no colons, as upstream) and IPv4.
    All empty when no interface has an address yet."""
    with Netlink() as nl:
        links = {link.name: link for link in nl.links()}
        addresses = nl.ipv4_addresses()
        primary = _primary(nl.routes())
    name = primary if primary in addresses else next(
        (n for n in addresses if n in links and not links[n].loopback), "")
    if not name:
        return Interface("", "", "")
    return Interface(name, links[name].mac.replace(":", "").upper(), addresses[name])


def interface_name() -> str:
    """The interface the hostname is published on and DHCP is probed from: :func:`first_interface`,
    else the first non-loopback link, else ``eth0`` (upstream would wait for an address forever)."""
    name = first_interface().name
    if name:
        return name
    with Netlink() as nl:
        return next((link.name for link in nl.links() if not link.loopback), "eth0")


def dhcp_interface() -> tuple[str, bytes]:
    """The interface the DHCP probe is sent from, and its MAC as 6 bytes (empty when unreadable)."""
    name = interface_name()
    try:
        return name, bytes.fromhex(link(name).mac.replace(":", ""))
    except (NetworkError, ValueError):
        return name, b""


def link(ifname: str) -> Link:
    with Netlink() as nl:
        return nl.link(ifname)


def bounce(ifname: str) -> None:
    """Take the link down and up again (the DHCP client notices and sends the new hostname)."""
    with Netlink() as nl:
        nl.set_link(ifname, up=False)
        nl.set_link(ifname, up=True)


def configure_routes(gateway: Optional[str], learned: Sequence[tuple[str, int, str]]) -> list[str]:
    """Add the default route through ``gateway`` when none exists, then every (network, prefix, gateway)
    route from option 249; returns the failures (a route that cannot be added is reported, not raised)."""
    failures = []
    with Netlink() as nl:
        wanted = list(learned)
        if gateway and not any(r.is_default for r in nl.routes()):
            wanted.insert(0, (ANY, 0, gateway))
        for network, prefix, via in wanted:
            try:
                nl.add_route(network, prefix, via)
            except NetworkError as e:
                failures.append(str(e))
    return failures


class Direct:
    """Netlink in this process (which holds pyroute2 already): :class:`guestagent.osutil.nethelper.NetOps`
    and :class:`guestagent.protocol.endpoint.DhcpNet`."""

    def interface_name(self) -> str:
        return interface_name()

    def bounce(self, ifname: str) -> None:
        bounce(ifname)

    def configure_routes(self, gateway: Optional[str], routes: Sequence[tuple[str, int, str]]) -> list[str]:
        return configure_routes(gateway, routes)

    def route_exists(self, address: str) -> bool:
        return route_exists(address)

    def has_default_route(self) -> bool:
        return has_default_route()

    def dhcp_interface(self) -> tuple[str, bytes]:
        return dhcp_interface()

    def add_route(self, destination: str, prefix: int, gateway: Optional[str] = None,
                  ifname: Optional[str] = None) -> None:
        with Netlink() as nl:
            nl.add_route(destination, prefix, gateway, ifname)

    def del_route(self, destination: str, prefix: int, gateway: Optional[str] = None,
                  ifname: Optional[str] = None) -> None:
        with Netlink() as nl:
            nl.del_route(destination, prefix, gateway, ifname)


@dataclass(frozen=True)
class LinkEvent:
    """One RTMGRP_LINK announcement: ``kind`` is "RTM_NEWLINK" (changed or attached) or "RTM_DELLINK"."""
    kind: str
    link: Link

    def __str__(self) -> str:
        return f"{self.kind} {self.link.name or '?'} (index {self.link.index}, operstate {self.link.operstate})"


#: cloud-init's netlink helper follows a link's carrier through these two operational states only.
CARRIER_STATES = ("UP", "DOWN")


class LinkWatch:
    """Link changes as the kernel announces them (RTMGRP_LINK): carrier, up/down, new or gone NICs.
    Subscribe before looking at the current state, then :meth:`wait` for what changed. Every
    announcement read is logged (the pre-provisioned VM's wait must show what it saw)."""

    def __init__(self) -> None:
        try:
            self._ipr = IPRoute()
        except (OSError, NetlinkError) as e:
            raise NetworkError(f"Cannot open a netlink socket: {e}") from None
        try:
            self._ipr.bind(groups=RTMGRP_LINK)
        except (OSError, NetlinkError) as e:
            self._ipr.close()
            raise NetworkError(f"Cannot subscribe to link changes (RTMGRP_LINK): {e}") from None

    def __enter__(self) -> LinkWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ipr.close()

    def events(self, timeout: float) -> list[LinkEvent]:
        """Link announcements within ``timeout`` seconds (empty when nothing changed), each logged."""
        ready, _, _ = select.select([self._ipr.fileno()], [], [], max(timeout, 0.0))
        if not ready:
            return []
        out = [LinkEvent(str(m.get("event")), _link(m)) for m in self._ipr.get()
               if m.get("event") in ("RTM_NEWLINK", "RTM_DELLINK")]
        for event in out:
            log.info("netlink: {0}", event)
        return out

    def wait(self, timeout: float) -> list[Link]:
        """The links announced (RTM_NEWLINK) within ``timeout`` seconds (empty when nothing changed)."""
        return [e.link for e in self.events(timeout) if e.kind == "RTM_NEWLINK"]

    def _until(self, timeout: float, done: Callable[[LinkEvent], bool]) -> Optional[LinkEvent]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            for event in self.events(remaining):
                if done(event):
                    return event

    def wait_for(self, ifname: str, operstate: str, timeout: float) -> Optional[Link]:
        """Block until ``ifname`` is announced in ``operstate`` (e.g. "UP"); None on timeout."""
        event = self._until(timeout, lambda e: e.kind == "RTM_NEWLINK" and e.link.name == ifname
                            and e.link.operstate == operstate)
        return event.link if event else None

    def wait_media_switch(self, ifname: str, timeout: float) -> bool:
        """Block until ``ifname``'s carrier goes DOWN and comes back UP (the vnet switch of a running
        pre-provisioned VM; the link is taken to be UP when the wait starts). False on timeout."""
        carrier = ["UP"]

        def switched(e: LinkEvent) -> bool:
            if e.link.name != ifname or e.link.operstate not in CARRIER_STATES:
                return False
            previous, carrier[0] = carrier[0], e.link.operstate
            return previous == "DOWN" and carrier[0] == "UP"

        return self._until(timeout, switched) is not None

    def wait_detach(self, timeout: float) -> Optional[str]:
        """Block until a NIC is removed (RTM_DELLINK); its name, or None on timeout."""
        event = self._until(timeout, lambda e: e.kind == "RTM_DELLINK" and not e.link.loopback)
        return event.link.name if event else None

    def wait_attach(self, known: Sequence[str], timeout: float) -> Optional[Link]:
        """Block until a NIC whose name is not in ``known`` is announced (hot-attach); None on timeout."""
        event = self._until(timeout, lambda e: e.kind == "RTM_NEWLINK" and not e.link.loopback
                            and e.link.name not in known)
        return event.link if event else None


# --- the helper interpreter ---------------------------------------------------------------------------------
USAGE = "usage: python -m guestagent.osutil.network {interface-name | bounce IFNAME | configure-routes JSON}"


def main(argv: Sequence[str]) -> int:
    """One action for a process that must not hold pyroute2; prints one JSON line, exit 0, or the
    error on stderr, exit 1. ``configure-routes`` reads {"gateway": ..., "routes": [[net, prefix, gw]...]}."""
    verb, args = (argv[0], list(argv[1:])) if argv else ("", [])
    try:
        if verb == "interface-name" and not args:
            result: object = interface_name()
        elif verb == "bounce" and len(args) == 1:
            bounce(args[0])
            result = asdict(link(args[0]))
        elif verb == "configure-routes" and len(args) == 1:
            spec = json.loads(args[0])
            result = configure_routes(spec["gateway"], [(str(n), int(p), str(g)) for n, p, g in spec["routes"]])
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except NetworkError as e:
        print(f"{verb}: {e.msg}", file=sys.stderr)
        return 1
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"{verb}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
