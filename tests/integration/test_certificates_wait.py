"""The certificate helper runs beside the loop (issue 5 item 11): a new goal state starts it, and only a
command that needs a certificate not yet on disk waits for it.

Real pieces: the ext-handler child's iteration, the protocol client, the fabric over loopback (its tenant
certificate, CMS-encrypted protected settings, status blob) and a handler that decrypts its protected
settings with openssl as real extensions do (tests/data/exthandler/certwait). The one seam: the helper is
held on an event the test releases (after a short sleep) so "did the command wait?" is an order, not a race.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import guestagent.protocol.wire
from guestagent import conf, log
from guestagent.exthandler import main as child_main
from guestagent.exthandler.extensions.manager import ExtensionsManager
from guestagent.protocol import certificates, goalstate_updater
from guestagent.protocol.certificates import ensure_transport_cert
from guestagent.protocol.wire import WireProtocol

HANDLER = Path(__file__).resolve().parents[1] / "data" / "exthandler" / "certwait"
NAME = "GuestAgent.Test.CertWait"
SECRET = {"secret": "certwait-protected-value-7f3a"}


def _scenario(lib: str):
    from guestagent.fabric.scenario import ExtensionSpec, HandlerPackage, Scenario, SettingsSpec, Step

    def ext(version: str, seq: int, state: str = "enabled") -> ExtensionSpec:
        return ExtensionSpec(NAME, version, state=state,
                             settings=[SettingsSpec(seq, public={"libDir": lib}, protected=SECRET)])

    return Scenario(vm_settings="not_supported",
                    handlers=[HandlerPackage(NAME, "1.0.0", HANDLER), HandlerPackage(NAME, "1.1.0", HANDLER)],
                    steps=[Step("1", extensions=[ext("1.0.0", 0)]),              # install + enable
                           Step("2", extensions=[ext("1.1.0", 0)]),              # update, certificate on disk
                           Step("3", extensions=[ext("1.1.0", 0, "disabled")]),  # disable, certificate on disk
                           Step("4", extensions=[ext("1.1.0", 1)])])             # enable, .prv deleted before


@pytest.fixture
def setup(tmp_path, monkeypatch, log_lines):
    from guestagent.fabric.server import Fabric

    monkeypatch.setattr(guestagent.protocol.wire, "_direct_is_primary", True)
    lib = str(tmp_path / "lib")
    os.makedirs(lib)
    ensure_transport_cert(lib)
    helper_done: list[float] = []
    delay = [0.2]
    gate = threading.Event()  # cleared: the helper holds until the test lets it go (no race with load)
    gate.set()
    real = certificates.process_certificates_isolated

    def slower(xml_text: str, lib_dir: str):
        time.sleep(delay[0])
        gate.wait(60)
        try:
            return real(xml_text, lib_dir)
        finally:
            helper_done.append(time.monotonic())

    monkeypatch.setattr(goalstate_updater, "process_certificates_isolated", slower)
    lines = log_lines
    with Fabric(_scenario(lib), state_dir=tmp_path / "fabric") as fab:
        config = conf.parse(f"Lib.Dir={lib}\nExtensions.GoalStatePeriod=1\nPid.File={tmp_path}/waagent.pid\n")
        child = child_main.ExtHandler(SimpleNamespace(debug=False), config)
        child.protocol = WireProtocol("127.0.0.1", lib, config, wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                                      sleep=lambda s: None)
        child.extensions = ExtensionsManager(config, child.protocol, log_root=str(tmp_path / "log"),
                                             event=lambda *a, **k: None)
        child.protocol.update_goal_state()  # start-up: synchronous, as run() does before the loop
        child.protocol.updater.async_certificates = True
        yield SimpleNamespace(fab=fab, child=child, lib=lib, helper_done=helper_done, lines=lines, delay=delay,
                              gate=gate)
    log.remove_appender("certwait")


def ops(lib: str) -> list[dict]:
    out = []
    for version in ("1.0.0", "1.1.0"):
        path = os.path.join(lib, f"{NAME}-{version}", "ops.jsonl")
        if os.path.exists(path):
            out += [json.loads(line) for line in open(path)]
    return sorted(out, key=lambda r: r["t"])


def test_commands_wait_for_the_helper_only_when_their_certificate_is_missing(setup):
    s = setup
    s.child.iterate()
    first = ops(s.lib)
    assert [r["op"] for r in first] == ["install", "enable"]
    expected = hashlib.sha256(json.dumps(SECRET).encode()).hexdigest()
    assert first[-1]["decrypted"] and first[-1]["sha256"] == expected
    thumb = json.load(open(os.path.join(s.lib, f"{NAME}-1.0.0", "config", "0.settings")))[
        "runtimeSettings"][0]["handlerSettings"]["protectedSettingsCertThumbprint"]

    # update, certificate on disk: every command runs while the helper is still decrypting
    started = time.monotonic()
    s.gate.clear()  # the helper holds until the iteration is over: a command that waited would hang here
    s.fab.advance()
    s.child.iterate()
    s.gate.set()
    s.child.protocol.goal_state.wait_for_certificates()  # nothing in the iteration did
    update = [r for r in ops(s.lib) if r["t"] >= started]
    assert "update" in [r["op"] for r in update] and update[-1]["op"] == "enable"
    assert all(r["t"] < s.helper_done[-1] for r in update), "an update with its certificate on disk waited"
    assert update[-1]["decrypted"] and update[-1]["sha256"] == expected

    # disable, certificate on disk: no wait; the status showing it went out before the helper finished
    started = time.monotonic()
    uploads = len(s.fab.status_uploads)
    s.gate.clear()
    s.fab.advance()
    s.child.iterate()
    s.gate.set()
    s.child.protocol.goal_state.wait_for_certificates()
    disable = [r for r in ops(s.lib) if r["t"] >= started]
    assert [r["op"] for r in disable] == ["disable"]
    assert disable[0]["t"] < s.helper_done[-1], "a disable waited for the certificate helper"
    assert len(s.fab.status_uploads) > uploads
    handler = s.fab.status_blob["aggregateStatus"]["handlerAggregateStatus"][0]
    assert handler["status"] == "NotReady"

    # enable with the .prv gone: the command waits for the helper, then decrypts its settings
    for suffix in (".prv", ".crt"):
        os.remove(os.path.join(s.lib, thumb + suffix))
    started = time.monotonic()
    s.gate.clear()
    threading.Timer(0.5, s.gate.set).start()  # the enable must wait for this release, then decrypt
    s.fab.advance()
    s.child.iterate()
    enable = [r for r in ops(s.lib) if r["t"] >= started]
    assert [r["op"] for r in enable] == ["enable"]
    assert enable[0]["t"] > s.helper_done[-1], "the enable ran before its certificate was on disk"
    assert enable[0]["prv"] and enable[0]["decrypted"] and enable[0]["sha256"] == expected
    assert s.child.protocol.goal_state.wait_for_certificates(0) == s.child.protocol.goal_state.certs
    assert {c.thumbprint for c in s.child.protocol.goal_state.certs} >= {thumb}

    # secrets: 0600 on disk, never in a log line, the status blob or the history
    assert os.stat(os.path.join(s.lib, thumb + ".prv")).st_mode & 0o777 == 0o600
    assert os.stat(os.path.join(s.lib, "Certificates.pem")).st_mode & 0o777 == 0o600
    secret = SECRET["secret"]
    assert not [line for line in s.lines.lines if secret in line or "PRIVATE KEY" in line]
    assert secret not in json.dumps(s.fab.status_blob)
    for root, _dirs, files in os.walk(os.path.join(s.lib, "history")):
        for name in files:
            data = open(os.path.join(root, name), "rb").read()
            assert secret.encode() not in data and b"PRIVATE KEY" not in data, name


def test_the_certificates_summary_reaches_the_history_of_its_goal_state(setup):
    s = setup
    s.child.iterate()
    s.gate.clear()
    s.fab.advance()
    s.child.iterate()
    gs = s.child.protocol.goal_state
    assert gs.certificates_pending, "the iteration waited for the helper"
    s.gate.set()
    gs.wait_for_certificates()
    folder = gs.history_folder
    summary = json.load(open(os.path.join(folder, "Certificates.json")))
    assert summary and all(set(item) == {"thumbprint", "hasPrivateKey"} for item in summary)
    assert {item["thumbprint"] for item in summary} == {c.thumbprint for c in s.child.protocol.goal_state.certs}


def test_a_new_bundle_waits_for_the_previous_helper(setup):
    """Two incarnations in a row: the second helper starts only after the first finished (same files)."""
    s = setup
    before = len(s.helper_done)  # the start-up update ran it synchronously
    s.fab.advance()
    s.child.protocol.update_goal_state()
    first = s.child.protocol.goal_state.certificates_job
    assert first is not None and not first.done()
    s.fab.advance()
    s.child.protocol.update_goal_state()
    assert first.done()
    s.child.protocol.goal_state.wait_for_certificates()
    assert len(s.helper_done) == before + 2 and s.helper_done[-2] < s.helper_done[-1]
