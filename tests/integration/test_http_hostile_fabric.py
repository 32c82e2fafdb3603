"""The protocol against a fabric that sends hostile bodies (a 200 MB goal state, an endless chunked
ExtensionsConfig, a trickled goal state): each request ends with a clear error, the process stays
small, and the next goal state is fetched as if nothing happened."""

from __future__ import annotations

import resource
import time

import pytest

from guestagent.conf import Config
from guestagent.errors import HttpError, ProtocolError
from guestagent.fabric.scenario import Scenario, Step
from guestagent.fabric.server import Fabric
from guestagent.protocol import http
from guestagent.protocol.wire import detect

LIB = "/var/lib/waagent"


@pytest.fixture
def fab(tmp_path):
    with Fabric(Scenario(vm_settings="not_supported", steps=[Step(incarnation="1")]), host="127.0.0.1",
                state_dir=str(tmp_path / "fabric")) as fabric:
        yield fabric


@pytest.fixture
def proto(tmp_root, fab):
    return detect(Config(), LIB, endpoint_ip="127.0.0.1", wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                  sleep=lambda s: None)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize(("kind", "mode", "error"), [
    ("goalstate", "huge", "Response too large: GET .*comp=goalstate -- more than 10485760 bytes, the cap for a "
                          r"fabric document \(Content-Length: 209715200\)"),
    ("extensionsconfig", "endless", "Error fetching goal state"),
])
def test_a_hostile_body_ends_early_and_the_next_goal_state_is_fine(fab, proto, kind, mode, error):
    peak = _peak_mb()
    fab.faults.add(kind, body=mode)
    start = time.monotonic()
    with pytest.raises(ProtocolError, match=error) as err:
        proto.update_goal_state(force=True)
    assert time.monotonic() - start < 10
    assert "Response too large" in str(err.value)  # the inner error is named
    assert _peak_mb() - peak < 20  # never more than the 10 MB cap held (a no-op if an earlier peak was higher)
    assert proto.update_goal_state(force=True).incarnation == "1"


def test_a_trickled_goal_state_ends_at_the_deadline(fab, proto):
    fab.faults.add("goalstate", body="trickle")
    client = http.HttpClient(sleep=lambda s: None)
    start = time.monotonic()
    with pytest.raises(HttpError, match="no complete response within 2 s"):
        client.get(f"{proto.wire.base_url}/machine/?comp=goalstate", proto.wire.standard_headers(),
                   kind=http.Kind("goal state", http.DOCUMENT.cap, 2.0))
    assert time.monotonic() - start < 3
    assert proto.update_goal_state(force=True).incarnation == "1"


def test_connections_to_the_wireserver_and_the_hostgaplugin_are_reused(fab, proto):
    wire, hgap = fab.connections("wire"), fab.connections("hgap")
    for _ in range(5):
        proto.wire.fetch_goal_state_xml()
        assert proto.host_plugin.health()
    assert fab.connections("wire") - wire <= 1 and fab.connections("hgap") - hgap <= 1
    assert len([r for r in fab.requests if r["kind"] == "goalstate"]) >= 5
