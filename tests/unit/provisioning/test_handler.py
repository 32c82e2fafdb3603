"""Handler choice, marker, cloud-init waits and health reports (spec 05 §3) against a temporary root.

The protocol here is a recorder of the health calls (the unit tier has no WireServer); the sandbox
tier runs the same flows against the fabric emulator over HTTP.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from guestagent import conf as confmod
from guestagent.errors import ProvisionError
from guestagent.osutil import distros, kvp
from guestagent.provisioning import handler, marker
from tests.conftest import TESTDATA

SMBIOS = "544CDFD0-CB4E-4B4A-9954-5BDF3ED5C3B8"
VMID = "D0DF4C54-4ECB-4A4B-9954-5BDF3ED5C3B8"


class Recorder:
    def __init__(self):
        self.reports: list[tuple] = []

    def report_ready(self):
        self.reports.append(("Ready",))

    def report_not_ready(self, substatus, description):
        self.reports.append(("NotReady", substatus, description))


@pytest.fixture
def env(tmp_root, monkeypatch):
    (tmp_root / "sys/class/dmi/id").mkdir(parents=True)
    (tmp_root / "sys/class/dmi/id/product_uuid").write_text(SMBIOS + "\n")
    (tmp_root / "var/lib/waagent").mkdir(parents=True)
    monkeypatch.setattr(handler.cloudinit, "cloud_init_is_enabled", lambda: False)
    rec = Recorder()
    detected = []

    def detect(conf, lib_dir, **kw):
        detected.append(kw.get("certificates"))
        return rec

    return tmp_root, rec, detect, detected


def cfg(text: str = "") -> confmod.Config:
    return confmod.parse(text)


def test_instance_id_byte_order():
    assert marker.correct_instance_id(SMBIOS) == VMID
    assert marker.correct_instance_id("not-a-uuid") == "not-a-uuid"


def test_disabled_writes_marker_and_reports_ready(env):
    root, rec, detect, detected = env
    protocol = handler.provision(cfg("Provisioning.Agent=disabled\n"), detect=detect)
    assert protocol is rec and rec.reports == [("Ready",)]
    assert detected == [False]  # nothing needs certificates: no transport cert, no Certificates fetch
    assert (root / "var/lib/waagent/provisioned").read_text() == VMID


def test_legacy_provisioning_enabled_n_means_disabled(env):
    _root, rec, detect, _ = env
    handler.provision(cfg("Provisioning.Enabled=n\n"), detect=detect)
    assert rec.reports == [("Ready",)]
    assert handler.provisioning_agent(cfg("Provisioning.Enabled=n\nProvisioning.UseCloudInit=y\n")) == "cloud-init"
    assert handler.provisioning_agent(cfg("Provisioning.Agent=waagent\nProvisioning.Enabled=n\n")) == "waagent"


@pytest.mark.parametrize("recorded", [VMID, SMBIOS, VMID.lower()])
def test_already_provisioned_skips_everything(env, recorded):
    root, rec, detect, detected = env
    (root / "var/lib/waagent/provisioned").write_text(recorded)
    result = handler.run_handler(cfg(), detect=detect)
    assert result.ok and result.skipped and rec.reports == []
    assert handler.provision(cfg(), detect=detect) is rec  # the daemon still gets its protocol
    assert detected == [False]


def test_changed_unique_id_cleans_state_and_reports_ready(env):
    root, rec, detect, _ = env
    lib = root / "var/lib/waagent"
    (lib / "provisioned").write_text("11111111-2222-3333-4444-555555555555")
    for name in ("Incarnation", "GoalState.3.xml", "ExtensionsConfig.3.xml", "published_hostname", "keep.me"):
        (lib / name).write_text("x")
    ext = lib / "Microsoft.CPlat.Core.RunCommandLinux-1.0.5"
    (ext / "status").mkdir(parents=True)
    (ext / "config").mkdir()
    (ext / "status/0.status").write_text("{}")
    (ext / "config/0.settings").write_text("{}")
    (ext / "config/HandlerState").write_text("Enabled")
    (lib / "WALinuxAgent-2.15.0.1/config").mkdir(parents=True)
    (lib / "WALinuxAgent-2.15.0.1/config/0.settings").write_text("agent dir is not touched")
    result = handler.run_handler(cfg(), detect=detect, distro=distros.make("debian", "12"))
    assert result.skipped and rec.reports == [("Ready",)]
    assert sorted(x for x in os.listdir(lib) if x != "events") == [
            "Microsoft.CPlat.Core.RunCommandLinux-1.0.5", "WALinuxAgent-2.15.0.1", "keep.me", "provisioned"]
    assert not (ext / "status/0.status").exists() and not (ext / "config/0.settings").exists()
    assert (ext / "config/HandlerState").exists()
    assert (lib / "WALinuxAgent-2.15.0.1/config/0.settings").exists()
    assert (lib / "provisioned").read_text() == VMID


def test_no_dvd_is_provisioning_failed_and_no_marker(env):
    root, rec, detect, _ = env
    (root / "dev").mkdir()
    (root / "dev/null").write_text("")
    result = handler.run_handler(cfg("Provisioning.Agent=waagent\n"), detect=detect)
    assert not result.ok
    assert rec.reports[-1][:2] == ("NotReady", "ProvisioningFailed")
    assert "[CopyOvfEnv] Error mounting dvd" in rec.reports[-1][2] and "Failed to get dvd device" in rec.reports[-1][2]
    assert not (root / "var/lib/waagent/provisioned").exists()


def test_cloud_init_enabled_under_waagent_handler_fails(env, monkeypatch):
    _root, rec, detect, _ = env
    monkeypatch.setattr(handler.cloudinit, "cloud_init_is_enabled", lambda: True)
    result = handler.run_handler(cfg("Provisioning.Agent=waagent\n"), detect=detect)
    assert "cloud-init appears to be installed and enabled" in result.error
    assert rec.reports[-1][1] == "ProvisioningFailed"


def test_detection_failure_is_reported_once_and_daemon_goes_on(env):
    root, _rec, _, _ = env
    from guestagent.errors import ProtocolError

    calls = []

    def failing(conf, lib_dir, **kw):
        calls.append(1)
        raise ProtocolError("no endpoint")

    (root / "dev").mkdir()
    assert handler.provision(cfg("Provisioning.Agent=waagent\n"), detect=failing) is None
    assert calls == [1]


def test_cloud_init_flow(env, tmp_root):
    root, rec, detect, _ = env
    ovf = (TESTDATA / "provisioning/ovf-env-full.xml").read_text().replace(
        "<wa:ProvisionGuestAgent>true<", "<wa:ProvisionGuestAgent>FALSE<")
    (root / "var/lib/waagent/ovf-env.xml").write_text(ovf)
    (root / "etc/ssh").mkdir(parents=True)
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-N", "", "-t", "rsa", "-b", "2048", "-f",
                    str(root / "etc/ssh/ssh_host_rsa_key")], check=True)
    result = handler.run_handler(cfg("Provisioning.Agent=cloud-init\n"), detect=detect, sleep=lambda s: None)
    assert result.ok and result.thumbprint.startswith("SHA256")
    assert rec.reports == [("NotReady", "Provisioning", "Starting"), ("Ready",)]
    assert (root / "var/lib/waagent/disable_agent").exists()
    assert (root / "var/lib/waagent/provisioned").read_text() == VMID


def test_cloud_init_flow_gives_up(env):
    root, rec, detect, _ = env
    from guestagent.provisioning import cloudinit

    slept = []
    with pytest.raises(ProvisionError, match=r"Giving up, ovf-env\.xml was not copied"):
        cloudinit.wait_for_ovf_env("/var/lib/waagent", max_retry=3, sleep=slept.append)
    assert slept == [1.0, 1.0]
    (root / "var/lib/waagent/ovf-env.xml").write_text("<broken")
    result = handler.run_handler(cfg("Provisioning.Agent=cloud-init\n"), detect=detect, sleep=lambda s: None)
    assert not result.ok and rec.reports[-1][1] == "ProvisioningFailed"
    assert "OVF xml could not be parsed" in rec.reports[-1][2]


def test_cloud_init_host_key_wait_sees_a_late_key_and_gives_up_on_garbage(env):
    root, _, _, _ = env
    from guestagent.provisioning import cloudinit

    ssh_dir = root / "etc/ssh"
    ssh_dir.mkdir(parents=True, exist_ok=True)
    for f in ssh_dir.glob("ssh_host_rsa_key*"):
        f.unlink()
    slept = []

    def late_key(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:  # cloud-init writes the key during the second wait
            subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f",
                            str(ssh_dir / "ssh_host_rsa_key")], check=True)

    thumbprint = cloudinit.wait_for_host_key("/etc/ssh", "auto", max_retry=5, sleep=late_key)
    assert thumbprint.startswith("SHA256") and ":" not in thumbprint
    assert slept == [1.0, 1.0]

    (ssh_dir / "ssh_host_rsa_key.pub").write_text("not a key\n")
    slept.clear()
    with pytest.raises(ProvisionError, match=r"Giving up, ssh host key was not found"):
        cloudinit.wait_for_host_key("/etc/ssh", "rsa", max_retry=3, sleep=slept.append)
    assert slept == [1.0, 1.0]


def test_only_keys_by_thumbprint_make_provisioning_need_certificates():
    from guestagent.provisioning.ovfenv import KeyPair, OvfEnv, PublicKey

    base = OvfEnv(version="1.0", hostname="h", username="u", user_password="secret-pw")
    assert not handler.needs_certificates(base)
    by_value = PublicKey("/home/u/.ssh/authorized_keys", "ABCD", "ssh-rsa AAAA u@h")
    by_thumbprint = PublicKey("/home/u/.ssh/authorized_keys", "ABCD", None)
    assert not handler.needs_certificates(OvfEnv("1.0", "h", "u", ssh_pubkeys=[by_value]))
    assert handler.needs_certificates(OvfEnv("1.0", "h", "u", ssh_pubkeys=[by_value, by_thumbprint]))
    assert handler.needs_certificates(OvfEnv("1.0", "h", "u", ssh_keypairs=[KeyPair("/home/u/.ssh/id_rsa", "AB")]))


def test_a_failure_is_reported_to_the_host_over_kvp(env):
    root, _rec, detect, _ = env
    (root / "proc").mkdir()
    (root / "proc/uptime").write_text("100.0 1.0\n")
    (root / "var/lib/hyperv").mkdir(parents=True)
    result = handler.run_handler(cfg("Provisioning.Agent=waagent\n"), detect=detect)
    assert not result.ok
    (key, value), = kvp.read_pool(kvp.POOL_FILE)
    assert key == "PROVISIONING_REPORT"
    assert value.startswith("result=error|") and "reason=[ProtocolError] [CopyOvfEnv] Error mounting dvd" in value
    assert "|agent=WALinuxAgent/2.15.0.1|" in value and f"|vm_id={VMID}|" in value


def test_an_unwritable_kvp_pool_never_fails_provisioning_reports(env):
    root, rec, detect, _ = env
    (root / "var/lib/hyperv/.kvp_pool_1").mkdir(parents=True)  # writing it fails
    result = handler.run_handler(cfg("Provisioning.Agent=waagent\n"), detect=detect)
    assert not result.ok and rec.reports[-1][1] == "ProvisioningFailed"
