"""The doctor's fabric checks against the fabric emulator on loopback: healthy, an unreachable
WireServer (connection reset), an unhealthy HostGAPlugin, and the clock against the Date header."""

from __future__ import annotations

import pytest

from guestagent import conf
from guestagent.doctor import network
from guestagent.doctor.context import DoctorContext
from guestagent.doctor.report import FAIL, OK, WARN


@pytest.fixture
def ctx(fab, tmp_root):
    lib = tmp_root / "var/lib/waagent"
    lib.mkdir(parents=True)
    (lib / "WireServerEndpoint").write_text(fab.host)
    return DoctorContext(conf.parse("Logs.Verbose=n\n"), wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                         timeout=3)


def run(c: DoctorContext):
    return [f for check in (network.check_endpoint, network.check_hostplugin, network.check_clock)
            for f in check(c)]


def test_healthy_fabric(ctx):
    findings = run(ctx)
    assert [f.level for f in findings] == [OK, OK, OK], findings
    assert ctx.fabric_time is not None


def test_unreachable_wireserver(ctx, fab):
    fab.faults.add("versions", reset=True, count=0)
    f = run(ctx)[0]
    assert f.level == FAIL and f"WireServer {fab.host} unreachable" in f.found


def test_versions_error_status(ctx, fab):
    fab.faults.add("versions", status=500, count=0)
    f = run(ctx)[0]
    assert f.level == FAIL and "HTTP 500" in f.found


def test_unhealthy_hostgaplugin(ctx, fab):
    fab.faults.add("hgap_health", status=503, count=0)
    f = run(ctx)[1]
    assert f.level == WARN and "HTTP 503" in f.found


def test_clock_skew(ctx):
    network.check_endpoint(ctx)
    ctx.now += 3600
    f = network.check_clock(ctx)[0]
    assert f.level == WARN and f.found.startswith("clock is +360")
