"""The whole provisioning handler against the fabric emulator, inside a throwaway sandbox: the DVD the
fabric's scenario describes, protocol detection over HTTP, keys derived from the goal state's tenant
certificates, and the health reports the fabric captured (spec 05 §3.3, 01 §9)."""

from __future__ import annotations

import json
import re
import stat
import time

import pytest

pytest.importorskip("guestagent.fabric.server")

WIRE = "127.63.129.16"
CONF = "Provisioning.Agent=waagent\nProvisioning.RegenerateSshHostKeyPair=y\nProvisioning.SshHostKeyPairType=rsa\n"
DRIVER = rf"""
import json, time
from guestagent import conf, log
from guestagent.osutil import distros
from guestagent.protocol.wire import detect
from guestagent.provisioning.handler import run_handler
log.setup(log_file="/var/log/waagent.log", file_verbose=True)
config = conf.load("/etc/waagent.conf")
start = time.monotonic()
r = run_handler(config, detect=lambda c, lib, **kw: detect(c, lib, endpoint_ip="{WIRE}", wire_port=8080,
                                                           hgap_port=32526, sleep=lambda s: None, **kw),
                distro=distros.make("debian", "12"), sleep=lambda s: None)
print(json.dumps({{"ok": r.ok, "error": r.error, "thumbprint": r.thumbprint, "seconds": time.monotonic() - start}}))
"""


def health(sb) -> list:
    p = sb.host_path("/run/fabric/health.jsonl")
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def start_fabric(sb):
    proc = sb.spawn(["python3", "-m", "guestagent.tools", "fabric", "serve", "--host", WIRE, "--wire-port", "8080",
                     "--hgap-port", "32526", "--state-dir", "/run/fabric", "--quiet"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        probe = f"import socket; [socket.create_connection(('{WIRE}', p), 1) for p in (8080, 32526)]"
        if sb.run(["python3", "-c", probe], check=False).ok:
            return proc
        time.sleep(0.1)
    raise AssertionError("fabric did not start")


def provision(sb, fs_image, edit) -> tuple:
    """Start the fabric, put its ovf-env.xml (after ``edit``) on the DVD, run the provisioning handler:
    (the handler's result, the health reports the fabric captured)."""
    sb.write_file("/etc/waagent.conf", CONF)
    sb.write_file("/etc/ssh/sshd_config", "PasswordAuthentication no\n")
    proc = start_fabric(sb)
    try:
        xml = sb.run(["python3", "-m", "guestagent.tools", "fabric", "ovf", "--state-dir", "/run/fabric"]).stdout
        sb.attach_image(fs_image({"ovf-env.xml": edit(xml)}, fstype="ext4"), device="/dev/sr0")
        res = sb.python(DRIVER, timeout=180)
        return json.loads(res.stdout.strip().splitlines()[-1]), health(sb)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("break_it", [False, True])
def test_provisioning_reports_to_the_fabric(sandbox, fs_image, break_it):
    sb = sandbox

    def edit(xml: str) -> str:
        if break_it:  # a key the goal state does not carry
            xml = re.sub(r"<Fingerprint>[0-9A-F]{40}</Fingerprint>", "<Fingerprint>" + "AB" * 20 + "</Fingerprint>",
                         xml, count=1)
        return xml

    result, reports = provision(sb, fs_image, edit)
    states = [(r.get("state") or r.get("status"), r.get("substatus") or r.get("sub_status"),
               r.get("description")) for r in reports]
    assert "Fabric-Passw0rd!" not in sb.read_text("/var/log/waagent.log")
    if not break_it:
        assert result["ok"], result
        assert states[0][:3] == ("NotReady", "Provisioning", "Starting") and states[-1][0] == "Ready", reports
        ak = sb.host_path("/home/azureuser/.ssh/authorized_keys").read_text().splitlines()
        assert len(ak) == 2 and ak[0].startswith("ssh-rsa ") and ak[1].startswith("ssh-ed25519 ")
        key = sb.host_path("/home/azureuser/.ssh/id_rsa")
        assert "PRIVATE KEY" in key.read_text() and stat.S_IMODE(key.stat().st_mode) == 0o644
        assert sb.host_path("/var/lib/waagent/provisioned").is_file()
        print(f"provisioning handler: {result['seconds']:.2f} s")
    else:
        assert not result["ok"]
        assert states[-1][:2] == ("NotReady", "ProvisioningFailed"), reports
        assert "Can't find " + "AB" * 20 + ".crt" in states[-1][2]
        assert not sb.host_path("/var/lib/waagent/provisioned").exists()


@pytest.mark.parametrize("username", ["../x", "root"])
def test_a_hostile_username_fails_provisioning_before_any_account_change(sandbox, fs_image, username):
    """Issue 13 D6: real useradd once made the home /x, a sudoers entry and authorized_keys for ``../x`` and
    the VM reported Ready. The name is refused when ovf-env.xml is read: ProvisioningFailed naming it."""
    sb = sandbox
    passwd, shadow = sb.read_text("/etc/passwd"), sb.read_text("/etc/shadow")
    result, reports = provision(sb, fs_image,
                                lambda xml: xml.replace("<UserName>azureuser</UserName>",
                                                        f"<UserName>{username}</UserName>"))
    assert not result["ok"], result
    last = reports[-1]
    assert ((last.get("state") or last.get("status")), last.get("substatus") or last.get("sub_status")) == \
        ("NotReady", "ProvisioningFailed"), reports
    assert repr(username) in last["description"] and "user name" in last["description"], last
    assert (sb.read_text("/etc/passwd"), sb.read_text("/etc/shadow")) == (passwd, shadow)
    assert not sb.host_path("/x").exists() and not sb.host_path("/home/x").exists()
    assert not sb.host_path("/etc/sudoers.d/waagent").exists()
    assert username in sb.read_text("/var/log/waagent.log")
    assert not sb.host_path("/var/lib/waagent/provisioned").exists()
