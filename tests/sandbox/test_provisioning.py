"""Provisioning and deprovisioning on real OS tools inside a throwaway namespace sandbox (spec 05 §2–§7,
§13): useradd/chpasswd/userdel, ssh-keygen, hostname, mount of the provisioning medium on /dev/sr0.

The kernel here has no udf/iso9660, so the DVD is an ext4 image on a loop device at /dev/sr0: the
agent's mount tries upstream's ``-t udf,iso9660,vfat`` first and falls back to auto-detection.
``ifdown``/``ifup`` (the ifupdown package) are not installed on this host; the publish test installs
two-line stand-ins in the sandbox that record their argv and bounce the link with ``ip``.
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import textwrap

import pytest

from tests.conftest import TESTDATA

PASSWORD = "Sandbox-Pa55w0rd!"
CONF = """\
Provisioning.Agent=waagent
Provisioning.RegenerateSshHostKeyPair=y
Provisioning.SshHostKeyPairType={keytype}
Provisioning.DeleteRootPassword=y
Provisioning.ExecuteCustomData=y
Provisioning.PasswordCryptId={crypt_id}
Provisioning.PasswordCryptSaltLength={salt_len}
OS.SshClientAliveInterval=240
"""
SSHD = "# stock\n#PasswordAuthentication yes\nPasswordAuthentication yes\nUsePAM yes\n"
DHCLIENT = '# sandbox dhclient.conf\n\nsend host-name "old";\nrequest subnet-mask, routers;\n'
STUB = '#!/bin/sh\necho "$(basename "$0") $*" >> /run/ifupdown.log\nip link set "$1" {0}\n'

# Runs inside the sandbox: the DVD copy and the provisioning steps of spec 05 §3.3 (6-13), real tools.
DRIVER = r"""
import json, sys
from guestagent import conf, log
from guestagent.errors import AgentError
from guestagent.osutil import distros
from guestagent.provisioning import marker
from guestagent.provisioning.dvd import copy_ovf_env
from guestagent.provisioning.provision import Provisioner
log.setup(log_file="/var/log/waagent.log", file_verbose=True)
config = conf.load("/etc/waagent.conf")
out = {}
try:
    ovf = copy_ovf_env(config.lib_dir, config.dvd_mount_point, sleep=lambda s: None)
    p = Provisioner(config, distros.make("debian", "12"), sleep=lambda s: None)
    p.provision(ovf)
    out["thumbprint"] = p.reg_ssh_host_key()
    p.restart_ssh_service()
    marker.write_marker(config.lib_dir)
    out["ok"] = True
except AgentError as e:
    log.error("Provisioning failed: {0}", e)
    out["error"] = str(e)
print(json.dumps(out))
"""


def ovf_env(hostname: str, user: str, pubkey: str, password: str = PASSWORD, customdata: str = "") -> str:
    text = (TESTDATA / "provisioning/ovf-env-full.xml").read_text()
    text = text.replace("lab-vm-01", hostname).replace("azureuser", user).replace("Sup3r$ecret-Pa55", password)
    text = re.sub(r"<PublicKey>\s*<Fingerprint>.*?</PublicKey>", "", text, flags=re.S)  # no tenant certs here
    text = re.sub(r"<KeyPairs>.*?</KeyPairs>", "", text, flags=re.S)
    text = re.sub(r"<Value>.*?</Value>", f"<Value>{pubkey}</Value>", text)
    return re.sub(r"<CustomData>.*?</CustomData>", f"<CustomData>{customdata}</CustomData>", text)


def b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def user_key(tmp_path, name: str) -> str:
    key = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "ed25519", "-C", name, "-f", str(key)], check=True)
    return (tmp_path / f"{name}.pub").read_text().strip()


def insert_dvd(sb, fs_image, xml: str) -> None:
    sb.run(["rm", "-f", "/dev/sr0"])
    sb.attach_image(fs_image({"ovf-env.xml": xml}, fstype="ext4", label="CDROM"), device="/dev/sr0")


def prepare(sb, keytype="ed25519", crypt_id="6", salt_len=10) -> None:
    sb.write_file("/etc/waagent.conf", CONF.format(keytype=keytype, crypt_id=crypt_id, salt_len=salt_len))
    sb.write_file("/etc/ssh/sshd_config", SSHD)
    sb.write_file("/etc/dhcp/dhclient.conf", DHCLIENT)
    sb.write_file("/etc/resolv.conf", "nameserver 127.0.0.53\n")
    sb.write_file("/root/.bash_history", "history\n")
    for name, action in (("ifdown", "down"), ("ifup", "up")):
        sb.write_file(f"/usr/local/sbin/{name}", STUB.format(action), mode=0o755)


def provision(sb) -> dict:
    res = sb.python(DRIVER, timeout=120)
    return json.loads(res.stdout.strip().splitlines()[-1])


def shadow_entry(sb, user: str) -> str:
    return next(x for x in sb.read_text("/etc/shadow").splitlines() if x.startswith(user + ":")).split(":")[1]


def check_provisioned(sb, user: str, hostname: str, pubkey: str, crypt_id: str, salt_len: int, keytype: str):
    # account
    entry = next(x for x in sb.read_text("/etc/passwd").splitlines() if x.startswith(user + ":")).split(":")
    uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
    assert home == f"/home/{user}" and uid >= 1000
    # password: scheme and salt as configured, and the system's own openssl agrees with the hash
    hashed = shadow_entry(sb, user)
    m = re.fullmatch(rf"\${crypt_id}\$([A-Za-z0-9]{{{salt_len}}})\$[./A-Za-z0-9]+", hashed)
    assert m, hashed
    again = sb.run(["openssl", "passwd", f"-{crypt_id}", "-salt", m.group(1), "-stdin"], input=PASSWORD + "\n")
    assert again.stdout.strip() == hashed
    assert sb.read_text("/etc/shadow").splitlines()[0] == "root:*LOCK*:14600::::::"
    # sudoers
    sudoers = sb.host_path("/etc/sudoers.d/waagent")
    assert f"{user} ALL=(ALL) ALL" in sudoers.read_text().splitlines()
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    # authorized_keys: content, mode, owner; .ssh 0700
    ak = sb.host_path(f"/home/{user}/.ssh/authorized_keys")
    assert ak.read_text() == pubkey + "\n"
    st = ak.stat()
    assert stat.S_IMODE(st.st_mode) == 0o644 and (st.st_uid, st.st_gid) == (uid, gid)
    assert stat.S_IMODE(ak.parent.stat().st_mode) == 0o700 and ak.parent.stat().st_uid == uid
    # sshd_config (DisableSshPasswordAuthentication=TRUE in the document)
    lines = sb.read_text("/etc/ssh/sshd_config").split("\n")
    for option in ("PasswordAuthentication no", "ChallengeResponseAuthentication no", "ClientAliveInterval 240"):
        assert option in lines
    assert "#PasswordAuthentication yes" in lines
    # host keys: only the configured type after regeneration
    keys = sorted(p.name for p in sb.host_path("/etc/ssh").iterdir() if p.name.startswith("ssh_host_"))
    assert keys == [f"ssh_host_{keytype}_key", f"ssh_host_{keytype}_key.pub"]
    # hostname set and published through dhclient.conf + interface restart
    assert sb.run(["hostname"]).stdout.strip() == hostname
    assert sb.read_text("/etc/hostname") == hostname
    assert sb.read_text("/etc/dhcp/dhclient.conf").endswith(f'send host-name "{hostname}";\n')
    assert sb.read_text("/var/lib/waagent/published_hostname") == hostname
    # the saved ovf-env.xml: 0600, no password; the DVD is unmounted; the password is in no log
    saved = sb.host_path("/var/lib/waagent/ovf-env.xml")
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert PASSWORD not in saved.read_text() and "<UserPassword>*</UserPassword>" in saved.read_text()
    assert "/mnt/cdrom/secure" not in sb.run(["cat", "/proc/mounts"]).stdout
    assert PASSWORD not in sb.read_text("/var/log/waagent.log")
    assert "Successfully mounted dvd" in sb.read_text("/var/log/waagent.log")


def test_provision_deprovision_provision_again(sandbox, fs_image, tmp_path):
    sb = sandbox
    prepare(sb, keytype="ed25519", crypt_id="6", salt_len=10)
    key1 = user_key(tmp_path, "first")
    script = "#!/bin/sh\necho ran > /root/customdata-ran\n"
    insert_dvd(sb, fs_image, ovf_env("prov-vm-1", "alice", key1, customdata=b64(script)))
    result = provision(sb)
    assert result.get("ok"), result
    assert result["thumbprint"].startswith("SHA256")
    check_provisioned(sb, "alice", "prov-vm-1", key1, "6", 10, "ed25519")
    assert sb.read_text("/run/ifupdown.log") == "ifdown eth0\nifup eth0\n"
    assert sb.read_text("/root/customdata-ran") == "ran\n"
    custom = sb.host_path("/var/lib/waagent/CustomData")
    assert custom.read_text() == script and stat.S_IMODE(custom.stat().st_mode) == 0o700
    assert sb.host_path("/var/lib/waagent/provisioned").is_file()  # content: the DMI id (none on this host)

    # the last bake step: -force -deprovision+user through the CLI
    res = sb.run(["python3", "-m", "guestagent.cli", "-force", "-deprovision+user"], timeout=120)
    out = res.stdout
    for warning in ("WARNING! The waagent service will be stopped.", "WARNING! All SSH host key pairs will be deleted.",
                    "WARNING! Cached DHCP leases will be deleted.", "WARNING! root password will be disabled.",
                    "WARNING! /etc/resolv.conf will be deleted.",
                    "WARNING! alice account and entire home directory will be deleted."):
        assert warning in out
    assert "alice:" not in sb.read_text("/etc/passwd")
    assert not sb.host_path("/home/alice").exists()
    assert "alice" not in sb.read_text("/etc/sudoers.d/waagent")
    assert list(sb.host_path("/var/lib/waagent").iterdir()) == []
    assert not sb.host_path("/etc/resolv.conf").exists() and not sb.host_path("/root/.bash_history").exists()
    assert not [p for p in sb.host_path("/etc/ssh").iterdir() if p.name.startswith("ssh_host_")]
    assert sb.run(["hostname"]).stdout.strip() == "localhost.localdomain"
    assert sb.read_text("/etc/dhcp/dhclient.conf").endswith('send host-name "localhost.localdomain";\n')

    # next boot: a new medium, a new user, other password settings — provisions again
    sb.write_file("/etc/waagent.conf", CONF.format(keytype="rsa", crypt_id="5", salt_len=16))
    key2 = user_key(tmp_path, "second")
    insert_dvd(sb, fs_image, ovf_env("prov-vm-2", "bob", key2))
    result = provision(sb)
    assert result.get("ok"), result
    check_provisioned(sb, "bob", "prov-vm-2", key2, "5", 16, "rsa")


def test_deprovision_asks_and_stops_on_no(sandbox):
    sb = sandbox
    sb.write_file("/etc/waagent.conf", "Provisioning.Agent=waagent\n")
    sb.write_file("/var/lib/waagent/keep", "x")
    res = sb.run(["python3", "-m", "guestagent.cli", "-deprovision"], input="n\n", timeout=60)
    assert "Do you want to proceed (y/n)" in res.stdout
    assert sb.host_path("/var/lib/waagent/keep").exists()


@pytest.mark.parametrize("case, expected", [
    ("malformed", "ovf-env.xml is malformed"),
    ("no-user", "Failed to validate OVF: UserName not found"),
    ("bad-key", "Bad public key"),
    ("crypt-id", "Provisioning.PasswordCryptId='9' is not supported"),
    ("thumbprint", "Can't find 0123456789ABCDEF0123456789ABCDEF01234567.crt"),
    ("no-dvd", "Failed to get dvd device"),
])
def test_invalid_inputs_fail_cleanly_and_retry_works(sandbox, fs_image, tmp_path, case, expected):
    sb = sandbox
    prepare(sb, crypt_id="9" if case == "crypt-id" else "6")
    key = user_key(tmp_path, "k")
    xml = ovf_env("bad-vm", "carol", key)
    if case == "malformed":
        xml = xml.replace("</Environment>", "")
    elif case == "no-user":
        xml = xml.replace("<UserName>carol</UserName>", "")
    elif case == "bad-key":
        xml = xml.replace(key, "not-a-key AAAA")
    elif case == "thumbprint":
        xml = (TESTDATA / "provisioning/ovf-env-full.xml").read_text().replace("Sup3r$ecret-Pa55", PASSWORD)
    if case != "no-dvd":
        insert_dvd(sb, fs_image, xml)
    result = provision(sb)
    assert expected in result.get("error", ""), result
    assert not sb.host_path("/var/lib/waagent/provisioned").exists()
    assert PASSWORD not in sb.read_text("/var/log/waagent.log")
    assert "/mnt/cdrom/secure" not in sb.run(["cat", "/proc/mounts"]).stdout  # nothing left mounted
    # a retry with a good document and configuration succeeds
    sb.write_file("/etc/waagent.conf", CONF.format(keytype="ed25519", crypt_id="6", salt_len=10))
    insert_dvd(sb, fs_image, ovf_env("good-vm", "carol", key))
    result = provision(sb)
    assert result.get("ok"), result
    assert textwrap.dedent(sb.read_text("/etc/hostname")) == "good-vm"
