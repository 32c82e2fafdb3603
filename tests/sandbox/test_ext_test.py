"""``guestagent ext-test`` on the command line: the handler runs inside the lab's namespace sandbox at the real
paths, finds the goal state's certificate where upstream puts it (/var/lib/waagent/<THUMBPRINT>.crt/.prv) and
decrypts its protected settings with it as CustomScript does, its logs and status files land in the report
folder, and the host's /var/lib/waagent, /var/log/waagent.log, /var/log/azure and /etc/passwd are untouched."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest

from guestagent.tools import main as tools_main

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
HOST_PATHS = ("/var/lib/waagent", "/var/log/waagent.log", "/var/log/azure", "/etc/passwd", "/etc/shadow")

#: A handler of ours that reads its certificate as CustomScript's HandlerUtil does: the thumbprint from
#: config/<seq>.settings, the files from the hard-coded /var/lib/waagent, ``openssl cms -decrypt``; like its
#: bundled waagent 2.0.16 it also appends to /var/log/waagent.log (the old kit let that reach the host).
HANDLER = r'''#!/usr/bin/env python3
import base64, hashlib, json, os, subprocess, sys, time
op, seq = sys.argv[1], os.environ.get("ConfigSequenceNumber", "0")
if op != "enable":
    sys.exit(0)
with open(f"config/{seq}.settings") as f:
    hs = json.load(f)["runtimeSettings"][0]["handlerSettings"]
thumb = hs["protectedSettingsCertThumbprint"]
crt, prv = f"/var/lib/waagent/{thumb}.crt", f"/var/lib/waagent/{thumb}.prv"
res = subprocess.run(["openssl", "cms", "-inform", "DER", "-decrypt", "-recip", crt, "-inkey", prv],
                     input=base64.b64decode(hs["protectedSettings"]), capture_output=True)
if res.returncode == 0:
    token = json.loads(res.stdout)["token"]
    state, message = "success", f"decrypted with {prv}: sha256 {hashlib.sha256(token.encode()).hexdigest()[:16]}"
else:
    state, message = "error", f"cannot decrypt with {prv}: {res.stderr.decode()[-200:]}"
print(f"enable seq {seq}: {state}")
with open("/var/log/waagent.log", "a") as log:  # as CustomScript's bundled waagent 2.0.16 does
    log.write(f"cert-reader: enable seq {seq}: {state}\n")
status = [{"version": 1.0, "timestampUTC": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "status": {"name": "Kit.CertReader", "operation": "Enable", "status": state, "code": 0,
                      "formattedMessage": {"lang": "en-US", "message": message}}}]
with open(f"status/{seq}.status", "w") as f:
    json.dump(status, f)
'''


def _handler(tmp_path: Path, manifest: Optional[object] = None) -> Path:
    folder = tmp_path / "cert-reader"
    folder.mkdir()
    (folder / "handler.py").write_text(HANDLER)
    (folder / "handler.py").chmod(0o755)
    commands = {f"{op}Command": f"handler.py {op}" for op in ("install", "enable", "disable", "uninstall", "update")}
    doc = manifest if manifest is not None else [{"version": 1.0, "name": "CertReader", "handlerManifest": commands}]
    (folder / "HandlerManifest.json").write_text(json.dumps(doc))
    return folder


def _host_state() -> dict:
    """mtime and content digest of every file under the paths the kit must never touch on the host."""
    state = {}
    for top in HOST_PATHS:
        entries = [top] if not os.path.isdir(top) else \
            [top] + [os.path.join(d, n) for d, dirs, files in os.walk(top) for n in dirs + files]
        for p in entries:
            if not os.path.lexists(p):
                state[p] = None
                continue
            st = os.lstat(p)
            digest = hashlib.sha256(Path(p).read_bytes()).hexdigest() if os.path.isfile(p) else ""
            state[p] = (st.st_mtime_ns, st.st_size, digest)
    return state


@pytest.fixture
def sandbox_or_skip():
    from guestagent.lab.sandbox import Sandbox, SandboxUnavailable

    try:
        Sandbox().close()
    except SandboxUnavailable as e:
        pytest.skip(str(e))


def test_handler_reads_its_certificate_at_the_real_path_and_the_host_is_untouched(tmp_path, capsys,
                                                                                   sandbox_or_skip):
    token = f"kit-sandbox-token-{os.getpid()}"
    before = _host_state()
    report = tmp_path / "report"
    code = tools_main(["ext-test", str(_handler(tmp_path)), "--name", "Kit.CertReader",
                       "--protected-settings", json.dumps({"token": token}), "--report", str(report)])
    out = capsys.readouterr().out
    assert _host_state() == before
    assert code == 0, out
    digest = hashlib.sha256(token.encode()).hexdigest()[:16]
    assert out.count("success code 0 operation Enable: decrypted with /var/lib/waagent/") == 4, out  # enables, disable
    assert f".prv: sha256 {digest}" in out and token not in out
    assert "lib dir /var/lib/waagent, logs /var/log/azure" in out and "(mode 600)" in out
    assert "the handler kept the contract" in out and f"report folder {report}" in out
    # the report folder: the kit's text, each command, the status files of every step, the handler's logs
    assert "the handler kept the contract" in (report / "report.txt").read_text()
    assert len(list((report / "commands").glob("*-enable.txt"))) == 3
    status = json.loads((report / "status" / "3-update" / "status" / "2.status").read_text())
    assert status[0]["status"]["status"] == "success"
    log = (report / "logs" / "Kit.CertReader" / "CommandExecution.log").read_text()
    assert "handler.py enable" in log and token not in log
    agent_log = (report / "logs" / "waagent.log").read_text()
    assert "Executing command" in agent_log and "cert-reader: enable seq 2: success" in agent_log
    assert "/var/lib/waagent/" in (report / "changes.txt").read_text()


def test_a_manifest_upstream_fails_on_is_refused(tmp_path, capsys, sandbox_or_skip):
    folder = _handler(tmp_path, manifest={"version": 1.0, "handlerManifest": {"enableCommand": "handler.py enable"}})
    report = tmp_path / "report"
    assert tools_main(["ext-test", str(folder), "--report", str(report)]) == 1
    out = capsys.readouterr().out
    assert "is a JSON object, not a list: upstream reads data[0] and fails" in out
    assert "refused" in out and "-- install" not in out
    assert "refused" in (report / "report.txt").read_text()


def test_without_root_one_clear_line():
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
                          "guestagent.tools", "ext-test", str(ROOT / "examples" / "sample-handler")],
                         capture_output=True, text=True, env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)},
                         cwd="/", timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        "guestagent ext-test needs root: the handler runs as root inside a namespace sandbox (mounts, its own "
        "network); run it with sudo."]
