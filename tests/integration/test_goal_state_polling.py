"""Goal-state polling against the fabric over loopback (issue 3 item 10): vmSettings first, the WireServer
only when vmSettings moved, when forced, or when its last fetch is older than WIRE_SERVER_POLL.

The updater's clock is the only thing moved by hand (a fake monotonic clock), so "30 s later" costs no
waiting; every request is real HTTP to the fabric emulator.
"""

from __future__ import annotations

import json
import os

import pytest

from guestagent.errors import ProtocolError
from guestagent.protocol.goalstate_updater import WIRE_SERVER_POLL
from guestagent.protocol.wire import WireProtocol

PERIOD = 6.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _scenario(vm_settings: str = "supported"):
    from guestagent.fabric.scenario import ExtensionSpec, Scenario, SettingsSpec, Step

    def ext(seq: int) -> ExtensionSpec:
        return ExtensionSpec("GuestAgent.Fabric.Sample", "1.0.0", settings=[SettingsSpec(seq, public={"n": seq})])

    return Scenario(vm_settings=vm_settings, steps=[Step("1", extensions=[ext(0)]), Step("2", extensions=[ext(1)]),
                                                    Step("3", extensions=[ext(1)])])


@pytest.fixture
def make(tmp_path, fabrics):
    count = iter(range(1000))

    def make(vm_settings: str = "supported"):
        fab = fabrics(_scenario(vm_settings))
        lib = str(tmp_path / f"lib{next(count)}")
        os.makedirs(lib)
        from guestagent.protocol.certificates import ensure_transport_cert

        ensure_transport_cert(lib)
        proto = WireProtocol("127.0.0.1", lib, wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                             sleep=lambda s: None)
        clock = Clock()
        proto.updater.clock = clock
        proto.update_goal_state()
        return fab, proto, clock

    return make


def kinds(fab, since: int = 0) -> dict:
    out: dict = {}
    for r in fab.requests[since:]:
        out[r["kind"]] = out.get(r["kind"], 0) + 1
    return out


def idle_minute(proto, clock) -> None:
    for _ in range(int(60 / PERIOD)):
        clock.now += PERIOD
        proto.update_goal_state()


def test_idle_minute_asks_vmsettings_every_period_and_the_wireserver_every_30_s(make):
    fab, proto, clock = make()
    start = len(fab.requests)
    idle_minute(proto, clock)
    assert kinds(fab, start) == {"vmsettings": 10, "goalstate": 2}
    statuses = {r["status"] for r in fab.requests[start:] if r["kind"] == "vmsettings"}
    assert statuses == {304}, "idle vmSettings requests must be conditional (If-None-Match → 304)"
    assert proto.goal_state.incarnation == "1"


def test_an_extension_change_is_seen_at_the_next_update(make):
    fab, proto, clock = make()
    clock.now += PERIOD
    proto.update_goal_state()
    fab.advance()  # new incarnation with new settings: vmSettings (source Fabric) moves too
    clock.now += PERIOD
    before = len(fab.requests)
    gs = proto.update_goal_state()
    assert gs.incarnation == "2" and gs.extensions_goal_state.id == "incarnation_2"
    got = kinds(fab, before)
    assert got["vmsettings"] == 1 and got["goalstate"] == 1 and got["extensionsconfig"] == 1


def test_a_wireserver_only_change_is_seen_within_the_poll_bound(make):
    """A tenant-certificate rotation moves the incarnation but not vmSettings (upstream's goal_state.py
    says so); the fabric's HGAP is made to keep answering 304 to show exactly that."""
    fab, proto, clock = make()
    fab.faults.add("vmsettings", status=304, count=0)
    fab.advance()
    seen_at = None
    for n in range(1, 20):
        clock.now += PERIOD
        if proto.update_goal_state().incarnation == "2":
            seen_at = n * PERIOD
            break
    assert seen_at is not None and seen_at <= WIRE_SERVER_POLL + PERIOD


def test_forced_update_fetches_both(make):
    fab, proto, _ = make()
    before = len(fab.requests)
    proto.update_goal_state(force=True)
    got = kinds(fab, before)
    assert got["goalstate"] == 1 and got["vmsettings"] == 1 and got["extensionsconfig"] == 1


def test_without_vmsettings_the_wireserver_is_polled_every_period(make):
    fab, proto, clock = make("not_supported")
    start = len(fab.requests)
    idle_minute(proto, clock)
    assert kinds(fab, start) == {"goalstate": 10}


def test_a_failing_vmsettings_request_polls_the_wireserver_and_fails_the_update(make):
    fab, proto, clock = make()
    fab.faults.add("vmsettings", status=500, count=2)
    for _ in range(2):
        clock.now += PERIOD
        before = len(fab.requests)
        with pytest.raises(ProtocolError):
            proto.update_goal_state()
        assert kinds(fab, before).get("goalstate") == 1
    fab.advance()
    clock.now += PERIOD
    assert proto.update_goal_state().incarnation == "2"


def test_a_vmsettings_parse_error_is_retried_with_the_wireserver_each_period(make):
    from guestagent.errors import VmSettingsParseError

    fab, proto, clock = make()
    fab.scenario.steps[1].vm_settings = "parse_error"
    fab.advance()
    for _ in range(2):
        clock.now += PERIOD
        before = len(fab.requests)
        with pytest.raises(VmSettingsParseError):
            proto.update_goal_state()
        assert kinds(fab, before).get("goalstate") == 1


def test_a_change_whose_wireserver_fetch_failed_is_fetched_again_at_the_next_update(make):
    fab, proto, clock = make()
    fab.advance()
    fab.faults.add("extensionsconfig", body="malformed")
    clock.now += PERIOD
    with pytest.raises(ProtocolError):
        proto.update_goal_state()  # vmSettings moved, the WireServer goal state failed half-way
    clock.now += PERIOD
    assert proto.update_goal_state().incarnation == "2"  # vmSettings now answers 304: the WireServer is asked


def test_the_child_loop_idle_minute(make, tmp_path):
    """The main loop's share of an idle minute at the default period: 10 vmSettings + 2 goal states, and
    no status upload while nothing changed (the monitor adds one IMDS probe and one HealthService post,
    tests/integration/test_wiring_monitor.py; an unchanged status goes again only after STATUS_REFRESH)."""
    from types import SimpleNamespace

    from guestagent import conf
    from guestagent.exthandler import main as child_main
    from guestagent.exthandler.extensions.manager import ExtensionsManager

    fab, proto, clock = make()
    config = conf.parse(f"Lib.Dir={proto.lib_dir}\nPid.File={tmp_path}/waagent.pid\n")
    child = child_main.ExtHandler(SimpleNamespace(debug=False), config)
    child.protocol = proto
    child.protocol.updater.async_certificates = True
    child.extensions = ExtensionsManager(config, proto, log_root=str(tmp_path / "log"), event=lambda *a, **k: None)
    child.iterate()  # processes the goal state, uploads the first status
    assert child.period == PERIOD and len(fab.status_uploads) == 1
    start = len(fab.requests)
    for _ in range(int(60 / PERIOD)):
        clock.now += PERIOD
        child.iterate()
    assert kinds(fab, start) == {"vmsettings": 10, "goalstate": 2}
    child.last_status_upload -= child.status_refresh
    clock.now += PERIOD
    child.iterate()
    assert kinds(fab, start) == {"vmsettings": 11, "goalstate": 2, "hgap_status": 1}


def _goal_state_events(proto) -> list:
    folder = os.path.join(proto.lib_dir, "events")
    out = []
    for name in sorted(os.listdir(folder)):
        params = {p["name"]: p["value"] for p in json.load(open(os.path.join(folder, name)))["parameters"]}
        if params["Operation"] in ("GoalState", "VmSettings"):
            out.append((params["Operation"], params["OperationSuccess"], params["Message"]))
    return out


def test_goal_state_events_as_upstream(make):
    """Upstream's GoalState/VmSettings events: each new incarnation, each new vmSettings ETag, a refresh; an
    HGAP without vmSettings says so once (until its 6-hour re-check)."""
    _, proto, clock = make()
    clock.now += PERIOD
    proto.update_goal_state()  # nothing new: no event
    proto.update_goal_state(force=True)
    msgs = [m for _, _, m in _goal_state_events(proto)]
    fetched = [m for m in msgs if m.startswith("Fetched new vmSettings [HostGAPlugin correlation ID: ")]
    assert len(fetched) == 2 and fetched[0].endswith(" source: Fabric]")  # the first, and the forced one
    assert [m if m not in fetched else "Fetched new vmSettings" for m in msgs] == [  # upstream's order
        "Fetched a new incarnation for the WireServer goal state [incarnation 1]",
        "Fetched new vmSettings", "The vmSettings originated via Fabric; will ignore them.",
        "Refreshing goal state and vmSettings",
        "Fetched a new incarnation for the WireServer goal state [incarnation 1]",
        "Fetched new vmSettings", "The vmSettings originated via Fabric; will ignore them."]
    _, proto2, clock2 = make("not_supported")
    for _ in range(3):
        clock2.now += PERIOD
        proto2.update_goal_state()
    assert [e for e in _goal_state_events(proto2) if e[0] == "VmSettings"] == [
        ("VmSettings", True, "[VmSettingsNotSupported] HostGAPlugin: 0.0.0.0")]


def test_vm_settings_errors_are_reported_as_upstream(make):
    """The first 3 vmSettings errors of an hour as VmSettings events ([ServerError] GET vmSettings …), then
    none; an hour later one VmSettingsSummary with the counts."""
    fab, proto, clock = make()
    proto.host_plugin.vm_settings_errors.clock = clock  # the hour is the test's
    proto.host_plugin.vm_settings_errors.next_summary = clock() + 3600
    fab.faults.add("vmsettings", status=500, count=5)
    for _ in range(5):
        clock.now += PERIOD
        with pytest.raises(ProtocolError, match=r"GET vmSettings \[correlation ID: .* eTag: .*\]: \[HTTP Failed\] "
                                                r"\[500: "):
            proto.update_goal_state()
    reported = [m for op, _, m in _goal_state_events(proto) if op == "VmSettings"]
    assert len(reported) == 3 and all(m.startswith("[ServerError] GET vmSettings [correlation ID: ")
                                      for m in reported)
    clock.now += 3600
    proto.update_goal_state()
    folder = os.path.join(proto.lib_dir, "events")
    summaries = [p["Message"] for p in ({x["name"]: x["value"] for x in json.load(open(os.path.join(folder, n)))[
        "parameters"]} for n in sorted(os.listdir(folder))) if p["Operation"] == "VmSettingsSummary"]
    assert [json.loads(m) for m in summaries] == [{"requests": 7, "errors": 5, "serverErrors": 5,
                                                   "clientErrors": 0, "timeouts": 0, "failedRequests": 0}]
