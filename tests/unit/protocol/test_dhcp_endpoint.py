"""Endpoint discovery: lease caches, route table, DHCP packets (over loopback UDP), the detection loop."""

import socket
import threading
from datetime import datetime

import pytest

from guestagent.conf import Config
from guestagent.errors import DhcpError, NetworkError, ProtocolError, ProtocolNotFoundError
from guestagent.osutil import dhcpprobe
from guestagent.protocol import dhcp, endpoint

MAC = bytes.fromhex("000d3a112233")
XID = b"\x01\x02\x03\x04"

ISC = """lease {
  interface "eth0";
  option unknown-245 a8:3f:81:10;
  expire 4 2015/06/16 16:58:54;
}
lease {
  interface "eth0";
  option unknown-245 0a:00:00:05;
  expire 0 2152/07/23 23:27:10;
}
lease {
  interface "eth0";
  option unknown-245 0a:00:00:06;
  expire 0 garbage;
}
"""


def reply(options: bytes, xid=XID, mac=MAC, cookie=dhcp.MAGIC_COOKIE) -> bytes:
    pkt = bytearray(240)
    pkt[0] = 2
    pkt[4:8] = xid
    pkt[0x1C:0x22] = mac
    pkt[0xEC:0xF0] = cookie
    return bytes(pkt) + options + b"\xff"


OPTS = (b"\x35\x01\x02" + b"\x03\x04\x0a\x00\x00\x01" + b"\xf5\x04\xa8\x3f\x81\x10"
        + b"\xf9\x0e" + b"\x00\x0a\x00\x00\x01" + b"\x20\xa8\x3f\x81\x10\x0a\x00\x00\x01"
        + b"\x2b\x02\xff\xff")


def test_isc_lease_last_valid_wins_and_expired_skipped():
    assert dhcp.parse_isc_leases(ISC, now=datetime(2024, 1, 1)) == "10.0.0.5"
    assert dhcp.parse_isc_leases(ISC, now=datetime(2200, 1, 1)) is None
    assert dhcp.parse_isc_leases("lease {\n  expire never;\n}\n") is None
    assert dhcp.parse_isc_leases('lease {\n  option unknown-245 a8:3f:81:10;\n  expire never;\n}\n') == "168.63.129.16"


#: Option 245 as each DHCP client writes it. ISC dhclient prints every byte of an unknown option with
#: ``%x`` (no zero padding): 127.0.0.2 is ``7f:0:0:2``; systemd-networkd's lease cache holds the option's
#: bytes as one hex string.
ISC_SPELLINGS = [("a8:3f:81:10", "168.63.129.16"), ("7f:0:0:2", "127.0.0.2"), ("a:0:0:5", "10.0.0.5"),
                 ("0a:00:00:05", "10.0.0.5"), ("A8:3F:81:10", "168.63.129.16"), ("a8:3f:81:1", "168.63.129.1")]


@pytest.mark.parametrize("spelling,ip", ISC_SPELLINGS, ids=[s for s, _ in ISC_SPELLINGS])
def test_isc_lease_option_245_spellings(spelling, ip):
    lease = f'lease {{\n  interface "eth0";\n  option unknown-245 {spelling};\n  expire never;\n}}\n'
    assert dhcp.parse_isc_leases(lease) == ip


@pytest.mark.parametrize("bad", ["a8:3f:81", "a8:3f:81:10:01", "a8:3f:81:100", "a8:3f:81:zz", "a8::81:10",
                                 '"ABCD"'])
def test_isc_lease_option_245_malformed_is_ignored(bad):
    lease = f"lease {{\n  option unknown-245 {bad};\n  expire never;\n}}\n"
    assert dhcp.parse_isc_leases(lease) is None


@pytest.mark.parametrize("spelling,ip", [("a83f8110", "168.63.129.16"), ("7f000002", "127.0.0.2"),
                                         ("A83F8110", "168.63.129.16")])
def test_networkd_lease_option_245_spellings(spelling, ip):
    assert dhcp.parse_networkd_lease(f"# This is private data. Do not parse.\nADDRESS=10.0.0.4\n"
                                     f"OPTION_245={spelling}\n") == ip


def test_networkd_lease():
    assert dhcp.parse_networkd_lease("ADDRESS=10.0.0.4\nOPTION_245=a83f8110\n") == "168.63.129.16"
    assert dhcp.parse_networkd_lease("ADDRESS=10.0.0.4\n") is None
    assert dhcp.parse_networkd_lease("OPTION_245=zz\n") is None


def test_lease_locations_distro_first_then_all():
    assert dhcp.lease_locations("ubuntu", "22.04")[0] == dhcp.NETWORKD
    assert dhcp.lease_locations("ubuntu", "24.10")[0] == dhcp.ISC_DEBIAN
    assert dhcp.lease_locations("debian", "12")[0] == dhcp.ISC_DEBIAN
    assert dhcp.lease_locations("rhel", "9.4")[:2] == [dhcp.ISC_RHEL, dhcp.NM_DHCLIENT]
    assert dhcp.lease_locations("centos", "6.10")[0] == dhcp.ISC_RHEL6
    for d in ("ubuntu", "debian", "rhel", "weird"):
        assert sorted(dhcp.lease_locations(d, "1")) == sorted(dhcp.ALL_LOCATIONS)


def test_leases_read_under_root(tmp_root):
    d = tmp_root / "var/lib/NetworkManager"
    d.mkdir(parents=True)
    (d / "dhclient-abc-eth0.lease").write_text(ISC)
    assert endpoint.DhcpHelper(net=FakeNet(), distro=("debian", "12")).endpoint_from_leases() == "10.0.0.5"
    n = tmp_root / "run/systemd/netif/leases"
    n.mkdir(parents=True)
    (n / "2").write_text("OPTION_245=7f000002\n")
    assert endpoint.DhcpHelper(net=FakeNet(), distro=("ubuntu", "22.04")).endpoint_from_leases() == "127.0.0.2"
    assert dhcpprobe.lease_files(dhcp.NETWORKD) == [(str(n / "2"), "OPTION_245=7f000002\n")]


def test_build_discover_layout():
    first = dhcp.build_discover(MAC, XID, broadcast=False)
    assert len(first) == 244 and first[:4] == b"\x01\x01\x06\x00" and first[4:8] == XID
    assert first[10] == 0 and first[0x1C:0x22] == MAC and first[0xEC:0xF0] == dhcp.MAGIC_COOKIE
    assert first[0xF0:] == b"\x35\x01\x01\xff"
    assert dhcp.build_discover(MAC, XID, broadcast=True)[10] == 0x80
    with pytest.raises(DhcpError):
        dhcp.build_discover(b"\x00", XID, False)


def test_parse_reply_options_and_routes():
    r = dhcp.parse_reply(reply(OPTS), XID, MAC)
    assert r.endpoint == "168.63.129.16" and r.gateway == "10.0.0.1"
    assert r.routes == [("0.0.0.0", 0, "10.0.0.1"), ("168.63.129.16", 32, "10.0.0.1")]


@pytest.mark.parametrize("bad", [reply(OPTS, xid=b"\x09\x09\x09\x09"), reply(OPTS, mac=b"\x01" * 6),
                                 reply(OPTS, cookie=b"\x00\x00\x00\x00"), b"\x02" * 100,
                                 reply(b"\xf5\x09\xa8"), reply(b"\xf9\x05\x21\x00\x00\x00\x00")],
                         ids=["xid", "mac", "cookie", "short", "truncated-opt", "bad-width"])
def test_parse_reply_rejects(bad):
    with pytest.raises(DhcpError):
        dhcp.parse_reply(bad, XID, MAC)


def test_exchange_over_loopback_udp():
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer():
        data, addr = server.recvfrom(1024)
        server.sendto(reply(OPTS, xid=data[4:8], mac=data[0x1C:0x22]), addr)

    threading.Thread(target=answer, daemon=True).start()
    req = dhcp.build_discover(MAC, XID, False)
    raw = dhcpprobe.exchange(req, bind=("127.0.0.1", 0), server=("127.0.0.1", port), timeout=5)
    assert dhcp.parse_reply(raw, XID, MAC).endpoint == "168.63.129.16"
    server.close()


class FakeRun:
    """Records argv instead of touching the host's firewall (the host must never change)."""

    def __init__(self):
        self.calls = []

    def __call__(self, argv, **kw):
        self.calls.append(argv)


class FakeNet:
    """Netlink as the DHCP helper sees it, recorded (the real one is tested in a namespace:
    tests/sandbox/test_network.py)."""

    def __init__(self, routes=(), default=True, interface=("eth9", MAC)):
        self.routes = list(routes)
        self.default = default
        self.interface = interface
        self.calls = []

    def route_exists(self, address):
        return address in self.routes

    def has_default_route(self):
        return self.default

    def dhcp_interface(self):
        return self.interface

    def add_route(self, destination, prefix, gateway=None, ifname=None):
        self.calls.append(("add", destination, prefix, gateway, ifname))

    def del_route(self, destination, prefix, gateway=None, ifname=None):
        self.calls.append(("del", destination, prefix, gateway, ifname))

    def configure_routes(self, gateway, routes):
        self.calls.append(("configure", gateway, list(routes)))
        return ["Could not add route 0.0.0.0/0: (17, 'File exists')"]


def test_helper_route_table_fast_path(tmp_root):
    net = FakeNet(routes=["168.63.129.16"])
    h = endpoint.DhcpHelper(net=net, run=FakeRun(), distro=("debian", "12"))
    assert h.discover() == "168.63.129.16" and net.calls == []


def test_helper_sends_discover_and_applies_routes(tmp_root):
    sent = []

    def exchange(request):
        sent.append(request)
        if len(sent) == 1:
            raise OSError("timed out")
        return reply(OPTS, xid=request[4:8], mac=request[0x1C:0x22])

    run, sleeps, net = FakeRun(), [], FakeNet(default=False)
    h = endpoint.DhcpHelper(net=net, run=run, sleep=sleeps.append, exchange_fn=exchange, distro=("debian", "12"))
    assert h.discover() == "168.63.129.16"
    assert sleeps == [0] and sent[0][10] == 0 and sent[1][10] == 0x80 and sent[1][0x1C:0x22] == MAC
    # the broadcast route exists only around the exchange; the learned routes are added after it
    assert net.calls == [("add", "255.255.255.255", 32, None, "eth9"), ("del", "255.255.255.255", 32, None, "eth9"),
                         ("configure", "10.0.0.1", [("0.0.0.0", 0, "10.0.0.1"), ("168.63.129.16", 32, "10.0.0.1")])]
    assert run.calls == [list(argv) for argv in dhcpprobe.OPEN_PORT_68] * 2


def test_helper_without_a_mac_fails_clearly():
    h = endpoint.DhcpHelper(net=FakeNet(interface=("eth9", b"")), run=FakeRun(), distro=("x", "1"))
    with pytest.raises(DhcpError, match="MAC address of eth9"):
        h.send_discover()


def test_helper_gives_up_after_five_tries(tmp_root):
    sleeps = []

    def fail(request):
        raise OSError("timed out")

    class NoBroadcastRoute(FakeNet):
        def add_route(self, *a, **k):
            raise NetworkError("Could not add route 255.255.255.255/32: (1, 'Operation not permitted')")

    net = NoBroadcastRoute(default=False)
    h = endpoint.DhcpHelper(net=net, run=FakeRun(), sleep=sleeps.append, exchange_fn=fail, distro=("x", "1"))
    h.skip_cache = True
    with pytest.raises(DhcpError, match=r"Failed to receive dhcp response\."):
        h.send_discover()
    assert sleeps == [0, 10, 30, 60, 60] and net.calls == []  # no route added, none to remove


# --- files and the detection loop ---------------------------------------------------------------------
LIB = "/var/lib/waagent"


def test_endpoint_files(tmp_root):
    assert endpoint.read_endpoint(LIB) == "168.63.129.16"
    endpoint.write_files(LIB, "10.0.0.9")
    assert endpoint.read_endpoint(LIB) == "10.0.0.9" and endpoint.protocol_file_present(LIB)
    assert (tmp_root / "var/lib/waagent/WireServerEndpoint").read_bytes() == b"10.0.0.9"
    endpoint.clear_files(LIB)
    assert not endpoint.protocol_file_present(LIB)


class FakeDhcp:
    def __init__(self, answers):
        self.answers = list(answers)
        self.skip_cache = False
        self.skips = []

    def discover(self):
        self.skips.append(self.skip_cache)
        return self.answers.pop(0)


def test_detection_retries_then_writes(tmp_root):
    endpoint.write_files(LIB, "stale")
    probes, sleeps = [], []

    def probe(ip):
        probes.append(ip)
        if len(probes) < 2:
            raise ProtocolError("down")
        return "proto"

    d = FakeDhcp([None, "10.0.0.1", "10.0.0.2"])
    assert endpoint.detect(Config(), LIB, probe, sleep=sleeps.append, dhcp=d) == "proto"
    assert probes == ["10.0.0.1", "10.0.0.2"]
    assert sleeps == [10.0, 10.0] and d.skips == [False, True, True]
    assert endpoint.read_endpoint(LIB) == "10.0.0.2"


def test_detection_exhausted(tmp_root):
    def probe(ip):
        raise ProtocolError("down")

    sleeps = []
    with pytest.raises(ProtocolNotFoundError, match=r"No protocol found\."):
        endpoint.detect(Config(), LIB, probe, sleep=sleeps.append, attempts=4, endpoint_ip="127.0.0.1")
    assert sleeps == [10.0] * 3 and not endpoint.protocol_file_present(LIB)
    assert endpoint.DETECT_ATTEMPTS == 360


def test_detection_without_dhcp_uses_endpoint_file(tmp_root):
    conf = Config({"Protocol.EndpointDiscovery": "static"})
    seen = []
    endpoint.detect(conf, LIB, lambda ip: seen.append(ip), sleep=lambda s: None)
    assert seen == ["168.63.129.16"]
