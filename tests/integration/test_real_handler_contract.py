"""The contract details the public Python handlers (Azure/azure-linux-extensions' CustomScriptForLinux and
VMAccessForLinux, the Go CustomScript's shell shim) rely on, pinned with a small handler of our own that leans
on each of them the same way (docs/real-handlers.md tells how the real ones were run). The handler is
packaged, served over loopback HTTP by the fabric emulator and driven by the real ExtensionsManager; it
records what it found.

Contract details, each checked below:
* ``HandlerEnvironment.json`` in the base dir, a list, ``version`` 1.0, written with ``": "`` separators so a
  shell prefix match (``${ENV#*\\"logFolder\\": \\"}``) finds the log folder;
* the sequence number found three ways agrees: ``ConfigSequenceNumber``, the ``config/*.settings`` file with
  the newest mtime (``os.walk`` over the config folder, every path joined to the folder itself: no
  sub-directories there), and the highest-numbered settings file; every ``config/*.settings`` and
  ``status/*.status`` name is ``<integer>.<ext>`` (the Go CustomScript fails on any other name);
* protected settings decrypted by the handler itself with ``openssl cms`` (``smime`` fallback) using
  ``<lib>/<thumbprint>.crt`` and ``.prv`` next to the handler directory;
* ``enable`` forks a detached worker and exits at once with ``transitioning``; the agent neither waits for
  nor kills it, and reports the worker's later ``success`` (status written as ``.tmp`` + rename, ``code`` a
  string) with the command's stdout in the message;
* the handler re-opens ``/dev/stdout`` for writing (as the bundled waagent's logger does): it must be a file;
* ``mrseq`` in the base dir and the status files are carried over on update, so the new version's enable
  with the same sequence number exits without re-running the command and success is still reported;
* a legacy XML ``.tld`` event written into ``<lib>/events`` is collected;
* protected values never reach the agent's log nor CommandExecution.log.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Optional

import pytest

import guestagent.protocol.wire
from guestagent import log
from guestagent.exthandler.extensions.state import HandlerFiles
from guestagent.fabric.crypto import TENANT_CERT_NAME
from guestagent.fabric.scenario import ExtensionSpec, SettingsSpec
from guestagent.kit.lab import ExtensionLab

NAME = "Contract.PyHandler"

MANIFEST = [{"version": 1.0, "handlerManifest": {
    "installCommand": "bin/shim.sh -install", "uninstallCommand": "bin/shim.sh -uninstall",
    "updateCommand": "bin/shim.sh -update", "enableCommand": "bin/shim.sh -enable",
    "disableCommand": "bin/shim.sh -disable", "rebootAfterInstall": False, "reportHeartbeat": False}}]

# The shim finds the log folder the way the Go CustomScript's shell shim does: prefix matching on the text.
SHIM = r"""#!/bin/sh
dir=$(dirname "$0")
env_text=$(cat "$dir/../HandlerEnvironment.json")
tmp=${env_text#*\"logFolder\": \"}
SHIM_LOG_DIR=${tmp%%\"*}
export SHIM_LOG_DIR
mkdir -p "$SHIM_LOG_DIR"
echo "shim: starting $1"
exec "${CONTRACT_PYTHON:-python3}" "$dir/../handler.py" "$@"
"""

HANDLER = r'''"""Contract test handler: relies on the agent the way the public Python handlers do."""
import base64, json, os, re, shlex, subprocess, sys, time

BASE = os.getcwd()
LIB = os.path.dirname(BASE)


def environment():
    with open("HandlerEnvironment.json") as f:
        doc = json.load(f)
    return doc[0] if isinstance(doc, list) else doc


def newest_settings_seq(config_dir):
    best, seq = None, -1
    for _root, _dirs, files in os.walk(config_dir):
        for name in files:
            try:
                n = int(name.split(".")[0])
            except ValueError:
                continue
            mtime = os.path.getmtime(os.path.join(config_dir, name))
            if best is None or mtime > best:
                best, seq = mtime, n
    return seq


def highest_settings_seq(config_dir):
    nums = [int(n.split(".")[0]) for n in os.listdir(config_dir) if re.fullmatch(r"[0-9]+\.settings", n)]
    return max(nums) if nums else -1


def decrypt(hs):
    thumb = hs["protectedSettingsCertThumbprint"]
    crt, prv = os.path.join(LIB, thumb + ".crt"), os.path.join(LIB, thumb + ".prv")
    data = base64.standard_b64decode(hs["protectedSettings"])
    for tool in ("cms", "smime"):
        p = subprocess.run(["openssl", tool, "-inform", "DER", "-decrypt", "-recip", crt, "-inkey", prv],
                           input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if p.returncode == 0 and p.stdout:
            return json.loads(p.stdout), tool
    raise RuntimeError("protected settings could not be decrypted")


def write_status(env, seq, op, status, message):
    he = env["handlerEnvironment"]
    doc = [{"version": str(env["version"]), "timestampUTC": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "status": {"name": env["name"], "operation": op, "status": status, "code": "0",
                       "formattedMessage": {"lang": "en-US", "message": message}}}]
    path = os.path.join(he["statusFolder"], "%s.status" % seq)
    with open(path + ".tmp", "w") as f:
        f.write(json.dumps(doc))
    os.rename(path + ".tmp", path)


def legacy_event(op, ok, message):
    params = [("Name", "ContractPy", "mt:wstr"), ("Version", "1.0", "mt:wstr"), ("IsInternal", "False", "mt:bool"),
              ("Operation", op, "mt:wstr"), ("OperationSuccess", str(ok), "mt:bool"),
              ("Message", message, "mt:wstr"), ("Duration", "0", "mt:uint64")]
    body = "".join('<Param Name="%s" Value="%s" T="%s" />' % p for p in params)
    xml = '<Data><Provider id="69B669B9-4AF8-4C50-BDC4-6006FA76E975"/><Event id="1"/>%s</Data>' % body
    d = os.path.join(LIB, "events")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "%d.tld" % int(time.time() * 1000000)), "w") as f:
        f.write(xml)


def main():
    op = sys.argv[1].lstrip("-")
    console = open("/dev/stdout", "w")
    env = environment()
    he = env["handlerEnvironment"]
    cfg = he["configFolder"]
    seq = int(os.environ.get("ConfigSequenceNumber", "-1"))
    record = {"op": op, "seq_env": seq, "seq_mtime": newest_settings_seq(cfg), "seq_highest": highest_settings_seq(cfg),
              "shim_log_dir": os.environ.get("SHIM_LOG_DIR"), "log_folder": he["logFolder"],
              "config_subdirs": [d for d in os.listdir(cfg) if os.path.isdir(os.path.join(cfg, d))]}
    if op == "daemon":
        return daemon(env, int(sys.argv[2]))
    with open(os.path.join(BASE, "contract-%s.json" % op), "w") as f:
        json.dump(record, f)
    console.write("handler: %s seq %d\n" % (op, seq))
    console.flush()
    if op != "enable":
        write_status(env, seq, op.capitalize(), "success", op.capitalize() + " succeeded")
        return 0
    mrseq = os.path.join(BASE, "mrseq")
    if os.path.exists(mrseq) and seq <= int(open(mrseq).read()):
        console.write("handler: seq %d already executed\n" % seq)
        return 0
    with open(mrseq, "w") as f:
        f.write(str(seq))
    write_status(env, seq, "Enable", "transitioning", "Launching the script...")
    devnull = open(os.devnull, "w")
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "-daemon", str(seq)], stdout=devnull, stderr=devnull)
    return 0


def daemon(env, seq):
    with open(os.path.join(env["handlerEnvironment"]["configFolder"], "%d.settings" % seq)) as f:
        hs = json.load(f)["runtimeSettings"][0]["handlerSettings"]
    public = hs.get("publicSettings") or {}
    protected, tool = decrypt(hs) if hs.get("protectedSettings") else ({}, None)
    time.sleep(float(public.get("delay", 0)))
    cmd = protected.get("commandToExecute") or public.get("commandToExecute")
    p = subprocess.run(shlex.split(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    with open(public["runs_file"], "a") as f:
        f.write("%s seq=%d tool=%s\n" % (os.path.basename(BASE), seq, tool))
    legacy_event("Daemon", p.returncode == 0, "(01302)Command is finished.")
    write_status(env, seq, "Daemon", "success" if p.returncode == 0 else "error",
                 "Command is finished.\n---stdout---\n%s\n---errout---\n%s\n" % (p.stdout, p.stderr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def make_handler(root: Path) -> str:
    folder = root / "contract-handler"
    (folder / "bin").mkdir(parents=True)
    (folder / "HandlerManifest.json").write_text(json.dumps(MANIFEST))
    (folder / "bin" / "shim.sh").write_text(SHIM)
    (folder / "handler.py").write_text(HANDLER)
    for p in (folder / "bin" / "shim.sh", folder / "handler.py"):
        p.chmod(0o755)
    return str(folder)


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.setattr(guestagent.protocol.wire, "_direct_is_primary", True)
    monkeypatch.setenv("CONTRACT_PYTHON", sys.executable)
    agent_log = tmp_path / "waagent.log"
    log.add_appender("contract-file", log.FileAppender(log.INFO, str(agent_log)))
    outputs: list = []
    lab = ExtensionLab(str(tmp_path / "w"), sink=outputs.append)
    lab.outputs = outputs
    lab.agent_log = agent_log
    lab.runs = tmp_path / "runs.log"
    lab.thumb = next(c.thumbprint for c in lab.fabric.tenant_certs() if c.name == TENANT_CERT_NAME)
    src = make_handler(tmp_path)
    lab.publish(NAME, {"1.0.0": lab.prepare(src, "1.0.0"), "1.1.0": lab.prepare(src, "1.1.0")})
    yield lab
    lab.close()
    log.remove_appender("contract-file")


def spec(lab, version: str, seq: int, public: dict, protected: Optional[dict] = None,
         state: str = "enabled") -> ExtensionSpec:
    public = dict(public, runs_file=str(lab.runs))
    return ExtensionSpec(NAME, version, state=state,
                         settings=[SettingsSpec(seq_no=seq, public=public, protected=protected)])


def ext_status(lab) -> dict:
    entry = next(h for h in lab.manager.handler_statuses() if h["handlerName"] == NAME)
    rs = entry["runtimeSettingsStatus"]
    return dict(rs["settingsStatus"]["status"], sequenceNumber=rs["sequenceNumber"], handlerVersion=entry["handlerVersion"])


def wait_terminal(lab, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = ext_status(lab)
        if st["status"] != "transitioning" or time.monotonic() > deadline:
            return st
        time.sleep(0.05)


def files(lab, version: str) -> HandlerFiles:
    return HandlerFiles(lab.lib_dir, NAME, version, lab.log_root)


def assert_numeric_stems(f: HandlerFiles) -> None:
    for folder, ext in ((f.config_dir, ".settings"), (f.status_dir, ".status")):
        names = [n for n in os.listdir(folder) if n.endswith(ext)]
        assert names and all(n[:-len(ext)].isdigit() for n in names), names


def record(lab, version: str, op: str) -> dict:
    return json.loads(Path(files(lab, version).base_dir, f"contract-{op}.json").read_text())


def test_detached_worker_reports_protected_command_output(lab):
    marker = f"contract-secret-{os.getpid()}"
    start = time.monotonic()
    lab.apply([spec(lab, "1.0.0", 0, {"delay": 1.0}, {"commandToExecute": f"echo ran {marker}"})])
    # enable returned while the worker still sleeps: not waited for, and reported as the handler left it
    assert time.monotonic() - start < 10
    assert [c.op for c in lab.outputs] == ["install", "enable"]
    first = ext_status(lab)
    assert first["status"] == "transitioning" and first["formattedMessage"]["message"] == "Launching the script..."
    st = wait_terminal(lab)
    assert st["status"] == "success" and st["code"] == "0" and st["operation"] == "Daemon"
    assert st["sequenceNumber"] == 0
    assert f"---stdout---\nran {marker}\n" in st["formattedMessage"]["message"]
    # the worker decrypted with openssl cms and the tenant certificate next to the handler directory
    assert lab.runs.read_text() == f"{NAME}-1.0.0 seq=0 tool=cms\n"
    assert stat.S_IMODE(os.stat(os.path.join(lab.lib_dir, f"{lab.thumb}.prv")).st_mode) == 0o600
    # /dev/stdout re-opened by the handler is the captured output file
    enable = lab.outputs[1]
    assert "handler: enable seq 0" in enable.output
    # the protected value is the command: it never reaches the agent's logs
    cmdlog = Path(lab.log_root, NAME, "CommandExecution.log").read_text()
    assert marker not in lab.agent_log.read_text() and marker not in cmdlog
    assert all(marker not in c.output for c in lab.outputs)


def test_environment_and_sequence_number_agree_three_ways(lab):
    lab.apply([spec(lab, "1.0.0", 0, {"commandToExecute": "echo zero"})])
    wait_terminal(lab)
    time.sleep(0.02)  # a distinct mtime for the next settings file even on coarse clocks
    lab.apply([spec(lab, "1.0.0", 1, {"commandToExecute": "echo one"})])
    assert wait_terminal(lab)["formattedMessage"]["message"].startswith("Command is finished.\n---stdout---\none\n")
    f = files(lab, "1.0.0")
    rec = record(lab, "1.0.0", "enable")
    assert rec["seq_env"] == rec["seq_mtime"] == rec["seq_highest"] == 1
    assert rec["shim_log_dir"] == rec["log_folder"] == f.log_dir
    assert rec["config_subdirs"] == []
    assert_numeric_stems(f)
    env = json.loads(Path(f.base_dir, "HandlerEnvironment.json").read_text())
    assert isinstance(env, list) and env[0]["version"] == 1.0 and env[0]["name"] == NAME
    assert stat.S_IMODE(os.stat(f.settings_file(1)).st_mode) == 0o600
    # the install saw the same sequence number as the enable that followed it
    assert record(lab, "1.0.0", "install")["seq_env"] == 0


def test_update_carries_mrseq_and_status_so_the_command_does_not_run_again(lab):
    public = {"commandToExecute": "echo once"}
    lab.apply([spec(lab, "1.0.0", 3, public)])
    assert wait_terminal(lab)["status"] == "success"
    lab.outputs.clear()
    lab.apply([spec(lab, "1.1.0", 3, public)])
    assert [c.op for c in lab.outputs] == ["disable", "update", "uninstall", "install", "enable"]
    assert "handler: seq 3 already executed" in lab.outputs[-1].output
    new = files(lab, "1.1.0")
    assert Path(new.base_dir, "mrseq").read_text() == "3"
    st = wait_terminal(lab)
    assert st["status"] == "success" and st["handlerVersion"] == "1.1.0" and st["sequenceNumber"] == 3
    assert lab.runs.read_text().count("seq=3") == 1
    assert_numeric_stems(new)
    # a new sequence number on the new version runs the command again
    lab.apply([spec(lab, "1.1.0", 4, {"commandToExecute": "echo again"})])
    assert "---stdout---\nagain\n" in wait_terminal(lab)["formattedMessage"]["message"]
    assert lab.runs.read_text().splitlines()[-1] == f"{NAME}-1.1.0 seq=4 tool=None"


def test_disable_and_uninstall_after_a_detached_enable(lab):
    lab.apply([spec(lab, "1.0.0", 0, {"commandToExecute": "echo hi"})])
    wait_terminal(lab)
    lab.apply([spec(lab, "1.0.0", 0, {"commandToExecute": "echo hi"}, state="disabled")])
    entry = next(h for h in lab.manager.handler_statuses() if h["handlerName"] == NAME)
    assert entry["status"] == "NotReady"
    assert ext_status(lab)["operation"] == "Disable"
    lab.apply([spec(lab, "1.0.0", 0, {"commandToExecute": "echo hi"}, state="uninstall")])
    assert not files(lab, "1.0.0").exists()
    assert [h for h in lab.manager.handler_statuses() if h["handlerName"] == NAME] == []


def test_legacy_xml_event_written_by_the_handler_is_collected(lab):
    from guestagent.exthandler.telemetry import TelemetryPipeline

    lab.apply([spec(lab, "1.0.0", 0, {"commandToExecute": "echo hi"})])
    wait_terminal(lab)
    pipeline = TelemetryPipeline(lab.lib_dir, None)
    assert pipeline.collect() >= 1
    events = []
    while not pipeline.queue.empty():
        events.append(dict(pipeline.queue.get().event.parameters))
    mine = [e for e in events if e.get("Name") == "ContractPy"]
    assert mine and mine[0]["Operation"] == "Daemon" and mine[0]["OperationSuccess"] is True
    assert "GAVersion" in mine[0] and "ContainerId" in mine[0]
