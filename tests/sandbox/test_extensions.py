"""The extension lifecycle at the real paths (/var/lib/waagent, /var/log/azure) inside a throwaway
namespace sandbox, with the fabric emulator on the sandbox's own loopback: the sample handler is installed,
enabled with protected settings (encrypted by the fabric, decrypted by the handler with openssl and the tenant
certificate the agent fetched), updated,
disabled and uninstalled, exactly as `guestagent ext-test` drives it."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.sandbox

FLOW = r"""
import json, os, stat
from guestagent import log
from guestagent.fabric.scenario import ExtensionSpec, SettingsSpec
from guestagent.kit.lab import ExtensionLab
log.setup(log_file="/var/log/waagent.log")
lab = ExtensionLab("/var/lib/guestagent-kit", lib_dir="/var/lib/waagent", log_root="/var/log/azure")
src = "SAMPLE"
lab.publish("Sandbox.Sample", {"1.0.0": lab.prepare(src, "1.0.0"), "1.1.0": lab.prepare(src, "1.1.0")})
def spec(version, seq, state="enabled"):
    return ExtensionSpec("Sandbox.Sample", version, state=state,
                         settings=[SettingsSpec(seq_no=seq, public={"n": seq}, protected={"secret": "sandbox-protected"})])
out = {}
lab.apply([spec("1.0.0", 0)])
out["enabled"] = lab.manager.handler_statuses()
base = "/var/lib/waagent/Sandbox.Sample-1.0.0"
out["modes"] = {p: oct(stat.S_IMODE(os.stat(os.path.join(base, p)).st_mode)) for p in ("config", "status", "config/0.settings")}
out["env"] = json.load(open(os.path.join(base, "HandlerEnvironment.json")))
lab.apply([spec("1.1.0", 1)])
out["updated"] = lab.manager.handler_statuses()
lab.apply([spec("1.1.0", 1, "disabled")])
out["disabled"] = lab.manager.handler_statuses()
lab.apply([spec("1.1.0", 1, "uninstall")])
out["left"] = sorted(d for d in os.listdir("/var/lib/waagent") if d.startswith("Sandbox"))
out["log"] = open("/var/log/azure/Sandbox.Sample/CommandExecution.log").read()
out["waagent_log"] = open("/var/log/waagent.log").read()
lab.close()
print("RESULT " + json.dumps(out))
"""


def test_sample_handler_lifecycle_at_the_real_paths(sandbox):
    from pathlib import Path

    sample = str(Path(__file__).resolve().parents[2] / "examples" / "sample-handler")
    res = sandbox.python(FLOW.replace("SAMPLE", sample), timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.split("RESULT ", 1)[1])
    st = out["enabled"][0]["runtimeSettingsStatus"]["settingsStatus"]["status"]
    assert st["status"] == "success" and "protected settings decrypted" in st["formattedMessage"]["message"]
    assert out["modes"] == {"config": "0o700", "status": "0o700", "config/0.settings": "0o600"}
    assert out["env"][0]["handlerEnvironment"]["logFolder"] == "/var/log/azure/Sandbox.Sample"
    assert out["updated"][0]["handlerVersion"] == "1.1.0"
    assert out["disabled"][0]["runtimeSettingsStatus"]["sequenceNumber"] == 1
    assert out["left"] == []
    assert "bin/handler.sh enable" in out["log"]
    assert "sandbox-protected" not in out["waagent_log"] and "Executing command" in out["waagent_log"]
