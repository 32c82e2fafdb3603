"""The extensions code against the fabric emulator over loopback: the real goal-state path (WireServer
ExtensionsConfig, then a FastTrack vmSettings upgrade), the fabric's own packages and tenant certificate,
and the aggregate status uploaded to the fabric's status blob."""

from __future__ import annotations

import json
import os
import time

from guestagent.conf import Config
from guestagent.exthandler.extensions.manager import ExtensionsManager
from guestagent.protocol.status import build_vm_status
from guestagent.protocol.wire import WireProtocol


def cycle(protocol, manager):
    gs = protocol.update_goal_state()
    start = time.monotonic()
    manager.process(gs)
    elapsed = time.monotonic() - start
    protocol.upload_status(build_vm_status(Config(), gs, manager.handler_statuses(),
                                           goal_state_status=manager.goal_state_status(), computer_name="vm",
                                           os_name="linux", os_version="0"))
    return gs, elapsed


def test_enable_reenable_and_fast_track_upgrade_against_the_fabric(fab, tmp_path):
    from guestagent.protocol.certificates import decrypt_protected_settings, ensure_transport_cert

    lib = str(tmp_path / "lib")
    os.makedirs(lib)
    ensure_transport_cert(lib)
    protocol = WireProtocol("127.0.0.1", lib, wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                            sleep=lambda s: None)
    manager = ExtensionsManager(Config({"Lib.Dir": lib}), protocol, log_root=str(tmp_path / "log"),
                                event=lambda *a, **k: None)
    name = "GuestAgent.Fabric.Sample"

    gs, _ = cycle(protocol, manager)
    assert gs.extensions_goal_state.source == "Fabric"
    handler = fab.status_blob["aggregateStatus"]["handlerAggregateStatus"][0]
    assert (handler["handlerName"], handler["handlerVersion"], handler["status"]) == (name, "1.0.0", "Ready")
    assert handler["runtimeSettingsStatus"]["sequenceNumber"] == 0
    settings = json.load(open(os.path.join(lib, f"{name}-1.0.0", "config", "0.settings")))
    hs = settings["runtimeSettings"][0]["handlerSettings"]
    plain = json.loads(decrypt_protected_settings(hs["protectedSettings"], hs["protectedSettingsCertThumbprint"], lib))
    assert plain == {"secret": "fabric-protected-value"}
    assert (os.stat(os.path.join(lib, f"{name}-1.0.0", "config", "0.settings")).st_mode & 0o777) == 0o600

    fab.advance()
    cycle(protocol, manager)
    handler = fab.status_blob["aggregateStatus"]["handlerAggregateStatus"][0]
    assert handler["runtimeSettingsStatus"]["sequenceNumber"] == 1

    fab.advance()
    gs, elapsed = cycle(protocol, manager)
    assert gs.extensions_goal_state.source == "FastTrack"
    handler = fab.status_blob["aggregateStatus"]["handlerAggregateStatus"][0]
    assert handler["handlerVersion"] == "1.1.0" and handler["status"] == "Ready"
    assert handler["runtimeSettingsStatus"]["sequenceNumber"] == 2
    assert not os.path.exists(os.path.join(lib, f"{name}-1.0.0"))
    gsa = fab.status_blob["aggregateStatus"]["vmArtifactsAggregateStatus"]["goalStateAggregateStatus"]
    assert gsa["status"] == "Success" and gsa["code"] == 0
    assert elapsed < 1.0, f"update from fetched goal state took {elapsed:.3f} s"
    assert "fabric-protected-value" not in json.dumps(fab.status_blob)
