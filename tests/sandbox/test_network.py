"""Netlink for real (osutil/network.py, pyroute2) inside the sandbox's own network namespace: its eth0
is one end of a veth pair (MAC 00:0d:3a:4e:a1:01, 10.0.0.4/24, default route via 10.0.0.1), the other end
``fabric0`` stays in the namespace. Routes are read and added, the link is bounced and its change is
seen on the RTMGRP_LINK feed, the child's helper interpreter does the same, the DHCP helper adds and
removes its broadcast route around an exchange. The host's network is never touched."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.sandbox


def _inside(sb, code: str) -> dict:
    res = sb.python(code, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.split("RESULT ", 1)[1])


def _routes(sb) -> list[str]:
    return [" ".join(line.split()) for line in sb.run(["ip", "-4", "route", "show"]).stdout.splitlines()]


FACTS = r"""
import json
from dataclasses import asdict
from guestagent.osutil import network
print("RESULT " + json.dumps({
    "routes": [asdict(r) for r in network.routes()],
    "default": network.has_default_route(), "wire": network.route_exists("168.63.129.16"),
    "primary": network.primary_interface(), "first": asdict(network.first_interface()),
    "name": network.interface_name(), "dhcp": network.dhcp_interface()[1].hex(),
    "eth0": asdict(network.link("eth0"))}))
"""


def test_route_table_and_primary_interface_facts(sandbox):
    out = _inside(sandbox, FACTS)
    assert {"destination": "0.0.0.0", "prefix": 0, "gateway": "10.0.0.1", "ifname": "eth0", "metric": 0} \
        in out["routes"]
    assert {"destination": "10.0.0.0", "prefix": 24, "gateway": None, "ifname": "eth0", "metric": 0} in out["routes"]
    assert out["default"] is True and out["wire"] is False
    assert out["primary"] == "eth0" and out["name"] == "eth0"
    assert out["first"] == {"name": "eth0", "mac": "000D3A4EA101", "ipv4": "10.0.0.4"}
    assert out["dhcp"] == "000d3a4ea101"
    assert out["eth0"]["up"] is True and out["eth0"]["mac"] == "00:0d:3a:4e:a1:01" and not out["eth0"]["loopback"]


def test_lowest_metric_default_route_wins(sandbox):
    sb = sandbox
    sb.run(["ip", "link", "add", "eth1", "type", "veth", "peer", "name", "peer1"])
    sb.run(["ip", "addr", "add", "10.1.0.4/24", "dev", "eth1"])
    sb.run(["ip", "link", "set", "eth1", "up"])
    sb.run(["ip", "link", "set", "peer1", "up"])
    sb.run(["ip", "route", "del", "default"])
    sb.run(["ip", "route", "add", "default", "via", "10.0.0.1", "dev", "eth0", "metric", "200"])
    sb.run(["ip", "route", "add", "default", "via", "10.1.0.1", "dev", "eth1", "metric", "100"])
    out = _inside(sb, FACTS)
    assert out["primary"] == "eth1" and out["first"]["ipv4"] == "10.1.0.4"


CONFIGURE = r"""
import json
from guestagent.osutil import network
failures = network.configure_routes(GATEWAY, [("168.63.129.16", 32, "10.0.0.1"), ("10.20.0.0", 16, "10.0.0.1"),
                                              ("10.30.0.0", 16, "192.0.2.1")])
print("RESULT " + json.dumps({"failures": failures, "wire": network.route_exists("168.63.129.16")}))
"""


@pytest.mark.parametrize("with_default", [True, False], ids=["default-present", "default-missing"])
def test_classless_static_routes_are_added_through_netlink(sandbox, with_default):
    sb = sandbox
    if not with_default:
        sb.run(["ip", "route", "del", "default"])
    out = _inside(sb, CONFIGURE.replace("GATEWAY", repr("10.0.0.254")))
    routes = _routes(sb)
    assert any(r.startswith("168.63.129.16 via 10.0.0.1 dev eth0") for r in routes)
    assert any(r.startswith("10.20.0.0/16 via 10.0.0.1 dev eth0") for r in routes)
    # the gateway becomes the default route only where there was none
    defaults = [r for r in routes if r.startswith("default ")]
    assert defaults == [r for r in defaults if ("via 10.0.0.1 " in r) == with_default] and len(defaults) == 1
    # an unreachable gateway is reported, not raised, and stops nothing else
    assert len(out["failures"]) == 1 and "10.30.0.0/16" in out["failures"][0] and out["wire"] is True
    assert not any(r.startswith("10.30.0.0") for r in routes)


BOUNCE = r"""
import json
from dataclasses import asdict
from guestagent.osutil import network
with network.LinkWatch() as watch:
    network.bounce("eth0")
    down = watch.wait_for("eth0", "DOWN", 5)
    up = watch.wait_for("eth0", "UP", 5)
print("RESULT " + json.dumps({"down": down and asdict(down), "up": up and asdict(up),
                              "now": asdict(network.link("eth0"))}))
"""


def test_link_bounce_is_seen_as_media_change_events(sandbox):
    out = _inside(sandbox, BOUNCE)
    assert out["down"]["up"] is False and out["down"]["operstate"] == "DOWN"
    assert out["up"]["up"] is True and out["up"]["operstate"] == "UP"
    assert out["now"]["operstate"] == "UP"
    assert "state UP" in sandbox.run(["ip", "-o", "link", "show", "eth0"]).stdout


HELPER = r"""
import json, sys
from guestagent.osutil import nethelper
from guestagent.osutil.network import LinkWatch  # this test process watches; the helper acts
with LinkWatch() as watch:
    name = nethelper.Helper().interface_name()
    nethelper.Helper().bounce(name)
    down = watch.wait_for(name, "DOWN", 5)
    failures = nethelper.Helper().configure_routes(None, [["10.40.0.0", 16, "10.0.0.1"]])
    try:
        nethelper.Helper().bounce("nope0")
        error = None
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
print("RESULT " + json.dumps({"name": name, "down": down is not None, "failures": failures, "error": error}))
"""


def test_the_childs_helper_interpreter_acts_and_exits(sandbox):
    out = _inside(sandbox, HELPER)
    assert out["name"] == "eth0" and out["down"] and out["failures"] == []
    assert out["error"] == ("NetworkError: [NetworkError] network helper (bounce) failed: "
                            "bounce: No network interface named nope0")
    # the bounce flushed eth0's routes as `ip link set down` does; the route added after it is there
    assert any(r.startswith("10.40.0.0/16 via 10.0.0.1 dev eth0") for r in _routes(sandbox))


DISCOVER = r"""
import json, subprocess
from guestagent.protocol import endpoint
seen = []
def exchange(request):
    seen.append(subprocess.run(["ip", "-4", "route", "show"], capture_output=True, text=True).stdout)
    raise OSError("no DHCP server here")
h = endpoint.DhcpHelper(sleep=lambda s: None, exchange_fn=exchange, run=lambda argv, **kw: None, distro=("x", "1"))
try:
    h.send_discover()
except Exception as e:
    error = e.msg
print("RESULT " + json.dumps({"during": seen[0], "tries": len(seen), "error": error}))
"""


def test_dhcp_broadcast_route_lives_only_around_the_exchange(sandbox):
    sb = sandbox
    sb.run(["ip", "route", "del", "default"])
    out = _inside(sb, DISCOVER)
    assert "255.255.255.255 dev eth0" in out["during"] and out["tries"] == 5
    assert out["error"] == "Failed to receive dhcp response."
    assert not any(r.startswith("255.255.255.255") for r in _routes(sb))


def test_dhcp_helper_takes_the_wireserver_route_as_the_endpoint(sandbox):
    sb = sandbox
    sb.run(["ip", "route", "add", "168.63.129.16/32", "via", "10.0.0.1"])
    code = ("import json\nfrom guestagent.protocol import endpoint\n"
            "h = endpoint.DhcpHelper(exchange_fn=None, distro=('x', '1'))\n"
            "print('RESULT ' + json.dumps(h.discover()))")
    assert _inside(sb, code) == "168.63.129.16"
