"""The protocol client against the fabric emulator over loopback (written independently of the client).

Sleeps are injected (fast); the slow-answer case uses a
short client timeout so the real timeout path is exercised.
"""

import json
import time

import pytest

from guestagent.conf import Config
from guestagent.errors import ProtocolError, ResourceGoneError
from guestagent.protocol.status import build_vm_status
from guestagent.protocol.wire import detect, from_files

LIB = "/var/lib/waagent"


def _scenario(blob_type="BlockBlob", fast_track=False):
    from guestagent.fabric.scenario import Scenario, Step

    return Scenario(vm_settings="supported" if fast_track else "not_supported",
                    steps=[Step(incarnation="1", status_blob_type=blob_type, fast_track=fast_track),
                           Step(incarnation="2", status_blob_type=blob_type, fast_track=fast_track)])


def _detect(fab, **kw):
    return detect(Config(), LIB, endpoint_ip="127.0.0.1", wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                  sleep=lambda s: None, **kw)


def _status(proto):
    return build_vm_status(Config(), proto.goal_state, [], computer_name="vm", os_name="debian", os_version="12")


def test_detect_goal_state_and_ready(tmp_root, fabrics):
    fab = fabrics(_scenario())
    proto = _detect(fab)
    gs = proto.goal_state
    assert gs.incarnation == "1" and gs.container_id and gs.role_instance_id
    assert gs.hosting_env is not None and gs.shared_config is not None
    assert (tmp_root / "var/lib/waagent/Protocol").read_text() == "WireProtocol"
    assert all(c.has_private_key in (True, False) for c in gs.certs)
    proto.report_ready()
    assert "Ready" in json.dumps(fab.health_reports[-1], default=str)
    again = from_files(Config(), LIB, wire_port=fab.wire_port, hgap_port=fab.hgap_port)
    assert again.update_goal_state().incarnation == "1"


def test_new_incarnation_after_advance(tmp_root, fabrics):
    fab = fabrics(_scenario())
    proto = _detect(fab)
    fab.advance()
    assert proto.update_goal_state().incarnation == "2"


@pytest.mark.parametrize("fault", [dict(status=500, count=2), dict(status=503), dict(status=429), dict(reset=True),
                                   dict(body="truncated"), dict(delay=0.6)],
                         ids=["500", "503", "429", "reset", "truncated", "slow"])
def test_goal_state_retries(tmp_root, fabrics, fault):
    fab = fabrics(_scenario())
    proto = _detect(fab)
    proto.http.timeout = 0.3
    fab.faults.add("goalstate", **fault)
    assert proto.update_goal_state(force=True).incarnation == "1"


def test_410_and_malformed(tmp_root, fabrics):
    fab = fabrics(_scenario())
    proto = _detect(fab)
    fab.faults.add("goalstate", status=410)
    with pytest.raises(ResourceGoneError):
        proto.update_goal_state()
    fab.faults.add("goalstate", body="malformed")
    with pytest.raises(ProtocolError):
        proto.update_goal_state(force=True)
    assert proto.update_goal_state(force=True).incarnation == "1"
    fab.faults.add("extensionsconfig", body="malformed")
    with pytest.raises(ProtocolError, match="Error fetching goal state"):
        proto.update_goal_state(force=True)
    assert proto.goal_state.incarnation == "1"


@pytest.mark.parametrize("blob_type", ["BlockBlob", "PageBlob"])
@pytest.mark.parametrize("channel", ["HostGAPlugin", "Direct"])
def test_status_upload(tmp_root, fabrics, blob_type, channel):
    fab = fabrics(_scenario(blob_type))
    proto = _detect(fab)
    if channel == "Direct":
        fab.faults.add("hgap_status", status=500, count=0)
    status = _status(proto)
    assert proto.upload_status(status) == channel
    assert fab.status_blob["aggregateStatus"]["guestAgentStatus"]["status"] == "Ready"
    assert fab.status_blob["timestampUTC"] == status["timestampUTC"]


def test_fast_track_goal_state(tmp_root, fabrics):
    fab = fabrics(_scenario(fast_track=True))
    proto = _detect(fab)
    gs = proto.goal_state
    etag = proto.host_plugin._vm_settings_cache.etag
    assert gs.history_folder.endswith(f"__1-{etag}") and gs.fast_track_supported
    # the fabric stamps ExtensionsConfig and vmSettings with the same ticks: a tie picks ExtensionsConfig (02 §4.1)
    assert gs.extensions_goal_state.id == "incarnation_1"
    n = len(fab.requests)
    proto.update_goal_state()
    deadline = time.monotonic() + 2  # the fabric records a request just after answering it
    while "vmsettings" not in [r.get("kind") for r in fab.requests[n:]] and time.monotonic() < deadline:
        time.sleep(0.01)
    kinds = [r.get("kind") for r in fab.requests[n:]]
    assert "vmsettings" in kinds and "extensionsconfig" not in kinds
