"""Monitor-thread wiring against the fabric emulator over loopback HTTP: answers are recorded by the HTTP client
itself (no wrapping), IMDS calls of the monitor make one short attempt, and telemetry's IMDS common fields are
filled by a background operation that retries with back-off."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time

import pytest

from guestagent import conf, events
from guestagent.conf import Config
from guestagent.errors import HttpError
from guestagent.exthandler import cgroups, monitor, telemetry
from guestagent.exthandler.context import ThreadContext
from guestagent.protocol import activity
from guestagent.protocol.http import HttpClient
from guestagent.protocol.imds import QUICK_TIMEOUT, ImdsClient
from guestagent.protocol.wire import detect
from tests.loopback import LoopbackListener

LIB = "/var/lib/waagent"


@pytest.fixture
def proto(tmp_root, fab):
    return detect(Config(), LIB, endpoint_ip="127.0.0.1", wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                  sleep=lambda s: None)


@pytest.fixture
def clean_state():
    """The process-wide pieces these tests touch: activity table, telemetry common fields."""
    activity.reset()
    saved = dataclasses.replace(events.common)
    yield
    events.common = saved
    activity.reset()


class BlackHole(LoopbackListener):
    """A loopback listener that accepts connections and never answers (an IMDS that hangs)."""

    def __init__(self):
        self.connections: list = []
        super().__init__()

    def accepted(self, conn):
        self.connections.append(conn)

    def close(self):
        super().close()
        for c in self.connections:
            c.close()


def _ctx(tmp_root, protocol=None):
    config = conf.parse("")
    return ThreadContext(config, protocol, LIB, threading.Event(), cgroups.CGroupConfigurator(config))


def test_every_answer_is_recorded_by_the_http_client(tmp_root, fab, clean_state):
    client = HttpClient(sleep=lambda s: None)
    assert not activity.answered_within(fab.hgap_port, 60)
    client.get(f"http://127.0.0.1:{fab.hgap_port}/versions")
    assert activity.answered_within(fab.hgap_port, 60)
    fab.faults.add("versions", status=500, count=1)
    with pytest.raises(HttpError):
        client.get(f"http://127.0.0.1:{fab.wire_port}/?comp=versions", max_retry=1)
    assert not activity.answered_within(fab.wire_port, 60)  # a 5xx proves nothing
    client.get(f"http://127.0.0.1:{fab.wire_port}/?comp=versions")
    assert activity.answered_within(fab.wire_port, 60)


def test_monitor_no_longer_wraps_the_client_and_skips_redundant_hgap_probes(tmp_root, fab, proto, clean_state,
                                                                             monkeypatch):
    monkeypatch.setenv("GUESTAGENT_IMDS_HOST", "127.0.0.1")
    monkeypatch.setenv("GUESTAGENT_IMDS_PORT", str(fab.imds_port))
    ctx = _ctx(tmp_root, proto)
    ops = {op.name: op for op in monitor.operations(ctx)}
    assert "request" not in vars(proto.http)  # the instance's method is the class's: nothing wrapped
    health = ctx.health_signals
    activity.reset()
    ops["SendHealthSignals"].func()
    assert health.probes["hgap_health"] == 1
    proto.host_plugin.health()  # any HGAP answer (status upload, vmSettings) proves it is up
    before = len(fab.requests)
    ops["SendHealthSignals"].func()
    assert health.probes["hgap_skipped"] == 1
    assert sorted(r["kind"] for r in fab.requests[before:]) == ["healthservice", "imds"]


def test_imds_single_attempt_mode_costs_one_short_try(tmp_root, clean_state):
    hole = BlackHole()
    try:
        client = ImdsClient("127.0.0.1", hole.port, http=HttpClient(sleep=lambda s: None))
        start = time.monotonic()
        assert client.probe(single_attempt=True)[0]  # a hanging IMDS is not blamed for this minute
        elapsed = time.monotonic() - start
        assert QUICK_TIMEOUT - 0.1 <= elapsed < QUICK_TIMEOUT + 1.0
        assert len(hole.connections) == 1
        start = time.monotonic()
        with pytest.raises(HttpError):
            client.get_compute(single_attempt=True)
        assert time.monotonic() - start < QUICK_TIMEOUT + 1.0 and len(hole.connections) == 2
    finally:
        hole.close()


def test_common_fields_come_from_imds_in_the_background_with_back_off(tmp_root, fab, proto, clean_state,
                                                                      monkeypatch):
    with socket.socket() as s:  # a port nobody listens on: IMDS unreachable
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("GUESTAGENT_IMDS_HOST", "127.0.0.1")
    monkeypatch.setenv("GUESTAGENT_IMDS_PORT", str(dead))
    op = next(o for o in monitor.operations(_ctx(tmp_root)) if o.name == "UpdateImdsCommonFields")
    assert op.initial_delay == 0
    start = time.monotonic()
    op.run(start)
    op.run(time.monotonic())
    assert time.monotonic() - start < 1.0  # one attempt each, no retry sleeps
    assert op.failures == 2 and events.common.vm_id == ""
    assert 29 < op.next_run - time.monotonic() <= 30  # 15 s, then 30 s, ... at most an hour
    monkeypatch.setenv("GUESTAGENT_IMDS_PORT", str(fab.imds_port))
    ctx = _ctx(tmp_root)
    op = next(o for o in monitor.operations(ctx) if o.name == "UpdateImdsCommonFields")
    op.run(time.monotonic())
    compute = fab.imds_document()["compute"]
    assert (events.common.vm_id, events.common.location, events.common.subscription_id,
            events.common.resource_group_name) == (compute["vmId"], compute["location"], compute["subscriptionId"],
                                                   compute["resourceGroupName"])
    imds_calls = len(fab.requests_of("imds"))
    op.run(time.monotonic())  # once: later runs do nothing
    assert len(fab.requests_of("imds")) == imds_calls and ctx.imds_common_fields.attempts == 1
    # events sent from now on carry them
    events.add_event("CommonFields", message="x", lib_dir=LIB)
    telemetry.TelemetryPipeline(LIB, proto, read_retry_delay=0, sleep=lambda s: None).flush()
    sent = next(e["params"] for e in fab.telemetry if e["params"].get("Operation") == "CommonFields")
    assert sent["VMId"] == compute["vmId"] and sent["Location"] == compute["location"]
