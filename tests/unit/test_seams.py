"""The typed seams between the agent's rooms (issue 12 item 5): collaborators are passed in and declared, so
an attribute nobody declared fails where it is set instead of being read back through a probe."""

from __future__ import annotations

import json
import os
import threading

import pytest

from guestagent import conf, events
from guestagent.exthandler.cgroups import CGroupConfigurator
from guestagent.exthandler.context import ThreadContext
from guestagent.protocol.goalstate_updater import GoalStateUpdater
from guestagent.protocol.history import History
from guestagent.protocol.hostplugin import HostPluginClient
from guestagent.protocol.wire import WireProtocol
from guestagent.protocol.wireserver import WireClient


def _unused(*_args: object) -> bytes:
    raise AssertionError("no traffic in this test")


def test_the_updater_gets_its_collaborators_and_refuses_undeclared_attributes(tmp_path):
    lib = str(tmp_path)
    wire = WireClient("127.0.0.1", lib, 1, 2)
    host_plugin = HostPluginClient("127.0.0.1", 2, lib)
    updater = GoalStateUpdater(wire, host_plugin, History(lib, enabled=False), lib, fetch_vm_settings=_unused,
                               download_text=_unused, fast_track_enabled=False)
    assert updater.wire is wire and updater.host_plugin is host_plugin and updater.async_certificates is False
    updater.async_certificates = True  # declared: what the ext-handler child turns on
    for undeclared in ("p", "async_certificate", "protocol"):
        with pytest.raises(AttributeError):
            setattr(updater, undeclared, True)
    assert host_plugin.last_vm_settings() is None  # the public read of what the plugin last answered


def test_the_protocol_hands_its_own_collaborators_to_its_updater(tmp_path):
    protocol = WireProtocol("127.0.0.1", str(tmp_path), wire_port=1, hgap_port=2, save_history=False)
    updater = protocol.updater
    assert (updater.wire, updater.host_plugin, updater.history) == (protocol.wire, protocol.host_plugin,
                                                                    protocol.history)
    assert updater.fast_track_enabled == protocol.fast_track_enabled and not updater.async_certificates


def test_the_thread_context_declares_what_the_threads_share(tmp_path):
    config = conf.parse(f"Lib.Dir={tmp_path}\n")
    ctx = ThreadContext(config, None, str(tmp_path), threading.Event(), CGroupConfigurator(config))
    assert ctx.telemetry is None and ctx.imds_common_fields is None and ctx.health_signals is None
    with pytest.raises(AttributeError):
        ctx.telemetry_pipeline = object()  # the name a thread used to add without declaring it
    assert not hasattr(ctx, "__dict__")


def test_an_event_names_the_process_it_is_written_for(tmp_path):
    """The lean supervisor's events are written by a fork: the pid is the supervisor's, passed in."""
    events.add_event("Enable", message="m", log_event=False, lib_dir=str(tmp_path), pid=4242)
    events.add_event("Enable", message="m", log_event=False, lib_dir=str(tmp_path))
    pids = sorted(p["value"] for f in (tmp_path / "events").iterdir()
                  for p in json.loads(f.read_text())["parameters"] if p["name"] == "EventPid")
    assert pids == sorted([4242, os.getpid()])
