"""A hostile fabric's names and numbers (issue 13 D1, D2, W1), over loopback against the fabric emulator.

Each case serves one hostile handler beside a good one. The hostile one must be refused before anything is
joined into a path or run — nothing appears outside the agent's lib and log folders — and be reported with
upstream's handler error (NotReady, code -1), an event and a log line naming it; the good one still runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import pytest

import guestagent.protocol.wire
from guestagent import log
from guestagent.conf import Config
from guestagent.exthandler.extensions.manager import ExtensionsManager
from guestagent.fabric.scenario import BUILTIN_DIR, parse_scenario
from guestagent.protocol.status import build_vm_status
from guestagent.protocol.wire import WireProtocol

GOOD = "GuestAgent.Fabric.Sample"
SAMPLE = str(BUILTIN_DIR / "handlers" / "sample")


def _scenario(hostile: dict, fast_track: bool, handler: Optional[tuple] = None):
    name, version = handler or (hostile["name"], hostile["version"])
    good = {"name": GOOD, "version": "1.0.0", "seqNo": 0, "settings": {"message": "good"}}
    step: dict = {"extensions": [hostile, good]}
    steps = [step] if not fast_track else [{"extensions": [good]}, dict(step, fast_track=True)]
    return parse_scenario({"handlers": [{"name": GOOD, "version": "1.0.0", "path": SAMPLE},
                                        {"name": name, "version": version, "path": SAMPLE}],
                           "steps": steps})


class Run:
    def __init__(self, tmp_path: Path, scenario, advance: bool):
        from guestagent.fabric.server import Fabric
        from guestagent.protocol.certificates import ensure_transport_cert

        self.root = tmp_path / "vm"
        self.lib = self.root / "lib" / "waagent"
        self.logs = self.root / "log" / "azure"
        os.makedirs(self.lib)
        os.makedirs(self.logs)
        ensure_transport_cert(str(self.lib))
        self.events: list = []
        self.lines: list = []
        lines = self.lines

        class Capture(log.Appender):
            def write(self, line: str) -> None:
                lines.append(line)

        log.add_appender("hostile", Capture(log.INFO))
        try:
            with Fabric(scenario, state_dir=tmp_path / "fabric") as fab:
                protocol = WireProtocol("127.0.0.1", str(self.lib), wire_port=fab.wire_port,
                                        hgap_port=fab.hgap_port, sleep=lambda s: None)
                manager = ExtensionsManager(Config({"Lib.Dir": str(self.lib)}), protocol, log_root=str(self.logs),
                                            event=lambda op, **kw: self.events.append(dict(kw, op=op)))
                for i in range(2 if advance else 1):
                    if i:
                        fab.advance()
                    gs = protocol.update_goal_state()
                    manager.process(gs)
                    protocol.upload_status(build_vm_status(
                        Config(), gs, manager.handler_statuses(), goal_state_status=manager.goal_state_status(),
                        computer_name="vm", os_name="linux", os_version="0"))
                self.source = gs.extensions_goal_state.source
                self.blob = fab.status_blob
        finally:
            log.remove_appender("hostile")

    def handlers(self) -> dict:
        return {h["handlerName"]: h for h in self.blob["aggregateStatus"]["handlerAggregateStatus"]}

    def outside(self) -> list:
        """Every path under the test's folder that is not the agent's lib or log folder or the fabric's."""
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root.parent):
            here = Path(dirpath)
            if here in (self.lib, self.logs, self.root.parent / "fabric"):
                dirnames[:] = []
                continue
            for n in filenames + dirnames:
                p = here / n
                if p not in (self.root, self.lib.parent, self.logs.parent, self.lib, self.logs,
                             self.root.parent / "fabric"):
                    out.append(str(p))
        return out


def check_refused(run: Run, name: str, words: str) -> None:
    assert run.outside() == [], "written outside the agent's folders"
    handlers = run.handlers()
    assert handlers[GOOD]["status"] == "Ready", handlers
    bad = handlers[name]
    assert (bad["status"], bad["code"]) == ("NotReady", -1), bad
    assert words in bad["formattedMessage"]["message"], bad
    assert any(e["op"] == "InvalidExtensionConfig" and e["name"] == name and not e["is_success"]
               for e in run.events), run.events
    assert any(name in line and words in line for line in run.lines), run.lines
    assert not any(e["op"] in ("Install", "Enable") and e["name"] == name for e in run.events)


@pytest.fixture(autouse=True)
def _direct(monkeypatch):
    monkeypatch.setattr(guestagent.protocol.wire, "_direct_is_primary", True)


@pytest.mark.parametrize("fast_track", [False, True], ids=["ExtensionsConfig", "vmSettings"])
def test_a_handler_name_with_dot_dots_is_refused(tmp_path, fast_track):
    name = "../../../escape"
    run = Run(tmp_path, _scenario({"name": name, "version": "1.0.0", "seqNo": 0}, fast_track), fast_track)
    assert run.source == ("FastTrack" if fast_track else "Fabric")
    check_refused(run, name, "handler name")


@pytest.mark.parametrize("fast_track", [False, True], ids=["ExtensionsConfig", "vmSettings"])
def test_a_handler_version_with_dot_dots_is_refused(tmp_path, fast_track):
    name, version = "Pub.BadVersion", "1.0/../../../../escape"
    run = Run(tmp_path, _scenario({"name": name, "version": version, "seqNo": 0}, fast_track), fast_track)
    check_refused(run, name, "version")


@pytest.mark.parametrize("fast_track", [False, True], ids=["ExtensionsConfig", "vmSettings"])
def test_a_multi_config_extension_name_with_dot_dots_is_refused(tmp_path, fast_track):
    name = "Pub.Multi"
    hostile = {"name": name, "version": "1.0.0", "multi_config": True,
               "extensions": [{"name": "../../../../escape", "seqNo": 0, "settings": {"public": "leaked"}},
                              {"name": "fine", "seqNo": 0}]}
    run = Run(tmp_path, _scenario(hostile, fast_track), fast_track)
    check_refused(run, name, "extension name")
    assert "leaked" not in json.dumps(run.blob)


@pytest.mark.parametrize("fields,words", [
    ({"isMultiConfig": "false"}, "isMultiConfig"),
    ({"settingsSeqNo": 1.5}, "sequence number"),
    ({"settingsSeqNo": True}, "sequence number"),
    ({"settingsSeqNo": -1}, "sequence number"),
    ({"settingsSeqNo": "1"}, "sequence number"),
], ids=["multi-config-string", "float-seq", "bool-seq", "negative-seq", "string-seq"])
def test_ill_typed_vm_settings_fields_are_refused(tmp_path, fields, words):
    name = "Pub.Loose"
    hostile = {"name": name, "version": "1.0.0", "seqNo": 0, "vm_settings_fields": fields}
    run = Run(tmp_path, _scenario(hostile, True), True)
    assert run.source == "FastTrack"
    check_refused(run, name, words)


def test_a_negative_sequence_number_in_extensions_config_is_refused(tmp_path):
    name = "Pub.Negative"
    run = Run(tmp_path, _scenario({"name": name, "version": "1.0.0", "seqNo": -1}, False), False)
    check_refused(run, name, "sequence number")
