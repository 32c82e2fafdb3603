"""OS file effects of provisioning against a temporary root: sshd_config, sudoers, shadow, DHCP
client configuration, keys derived from the goal state's certificates (spec 05 §4–§6)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from guestagent.errors import NetworkError, OSUtilError, ProvisionError
from guestagent.osutil import dhcpclient, distros, hostname, ssh, sshkeys, users
from tests.conftest import TESTDATA

DATA = TESTDATA / "provisioning"


# --- sshd_config --------------------------------------------------------------------------------------
def test_set_ssh_config_replaces_outside_match_and_keeps_match_blocks():
    lines = (DATA / "sshd_config.match").read_text().split("\n")
    ssh.set_ssh_config(lines, "PasswordAuthentication", "no")
    ssh.set_ssh_config(lines, "ClientAliveInterval", "180")
    ssh.set_ssh_config(lines, "ChallengeResponseAuthentication", "no")
    text = "\n".join(lines)
    assert "#PasswordAuthentication yes" in text            # comments never match
    assert "\nPasswordAuthentication no\n" in text
    assert "    PasswordAuthentication yes" in text         # inside Match User alice: untouched
    # Not found outside a block: inserted before the first Match of the block open at the end.
    i_ci, i_cr, i_match = (lines.index("ClientAliveInterval 180"), lines.index("ChallengeResponseAuthentication no"),
                           lines.index("Match User alice"))
    assert i_ci < i_match and i_cr < i_match


def test_set_ssh_config_appends_when_no_block_is_open():
    lines = "UsePAM yes\nMatch User bob\n  X 1\nMatch all\n".split("\n")
    ssh.set_ssh_config(lines, "ClientAliveInterval", "180")
    assert lines[-2:] == ["ClientAliveInterval 180", ""]


def test_conf_sshd_on_upstream_sample(tmp_root, upstream):
    (tmp_root / "etc/ssh").mkdir(parents=True)
    shutil.copy(upstream / "wire/sshd_config", tmp_root / "etc/ssh/sshd_config")
    ssh.conf_sshd("/etc/ssh/sshd_config", True, 180)
    lines = (tmp_root / "etc/ssh/sshd_config").read_text().split("\n")
    for option, value in (("PasswordAuthentication", "no"), ("ChallengeResponseAuthentication", "no"),
                          ("ClientAliveInterval", "180")):
        assert f"{option} {value}" in lines
        assert not [x for x in lines if x.startswith(option) and x != f"{option} {value}"]


# --- users, sudoers, shadow ---------------------------------------------------------------------------
@pytest.fixture
def passwd(tmp_root):
    (tmp_root / "etc").mkdir(exist_ok=True)
    uid, gid = os.getuid(), os.getgid()
    (tmp_root / "etc/passwd").write_text(f"root:x:0:0:root:/root:/bin/bash\nbin:x:2:2:bin:/bin:/usr/sbin/nologin\n"
                                         f"azureuser:x:{uid}:{gid}::/home/azureuser:/bin/bash\n")
    (tmp_root / "etc/login.defs").write_text("# defs\nUID_MIN\t\t\t 1000\n")
    return tmp_root


def test_system_user_guard(passwd):
    assert users.is_sys_user("bin") and not users.is_sys_user("bin", allow_reset_sys_user=True)
    with pytest.raises(OSUtilError, match="system user"):
        users.set_password("bin", "secret-pw", "6", 10)


def test_sudoers_file_lines_and_mode(tmp_root):
    (tmp_root / "etc/sudoers.d").mkdir(parents=True)
    users.conf_sudoer("alice", nopasswd=False)
    users.conf_sudoer("alice", nopasswd=False)
    users.conf_sudoer("bob", nopasswd=True)
    p = tmp_root / "etc/sudoers.d/waagent"
    assert p.read_text() == "alice ALL=(ALL) ALL\nbob ALL=(ALL) NOPASSWD: ALL\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o440
    users.remove_sudoer("alice")
    assert p.read_text() == "bob ALL=(ALL) NOPASSWD: ALL\n"


def test_sudoers_dir_created_with_includedir(tmp_root):
    (tmp_root / "etc").mkdir()
    (tmp_root / "etc/sudoers").write_text("root ALL=(ALL) ALL\n")
    users.conf_sudoer("alice")
    assert (tmp_root / "etc/sudoers").read_text().endswith("\n#includedir /etc/sudoers.d\n")


def test_del_root_password(tmp_root):
    (tmp_root / "etc").mkdir()
    shadow = tmp_root / "etc/shadow"
    shadow.write_text("daemon:*:19000:0:99999:7:::\nroot:$6$abc$def:19000:0:99999:7:::\n")
    shadow.chmod(0o640)
    users.del_root_password("/etc/shadow")
    assert shadow.read_text() == "root:*LOCK*:14600::::::\ndaemon:*:19000:0:99999:7:::\n"
    assert stat.S_IMODE(shadow.stat().st_mode) == 0o640


# --- hostname and DHCP client ---------------------------------------------------------------------------
def test_dhclient_with_gethostname_is_left_alone(tmp_root):
    (tmp_root / "etc/dhcp").mkdir(parents=True)
    original = (DATA / "dhclient.conf.debian").read_text()
    (tmp_root / "etc/dhcp/dhclient.conf").write_text(original)
    assert dhcpclient.set_dhclient_hostname("vm1") == []
    assert (tmp_root / "etc/dhcp/dhclient.conf").read_text() == original


def test_dhclient_static_name_is_replaced_and_empty_lines_dropped(tmp_root):
    (tmp_root / "etc/dhcp").mkdir(parents=True)
    (tmp_root / "etc/dhcp/dhclient.conf").write_text((DATA / "dhclient.conf.static").read_text())
    (tmp_root / "etc/dhclient.conf").write_text("")
    changed = dhcpclient.set_dhclient_hostname("vm1")
    assert changed == ["/etc/dhcp/dhclient.conf", "/etc/dhclient.conf"]
    assert (tmp_root / "etc/dhcp/dhclient.conf").read_text() == \
        '# static name\nrequest subnet-mask, routers;\nsend host-name "vm1";\n'


def test_ifcfg_dhcp_hostname_and_nm_controlled(tmp_root):
    d = tmp_root / "etc/sysconfig/network-scripts"
    d.mkdir(parents=True)
    (d / "ifcfg-eth0").write_text('DEVICE=eth0\nDHCP_HOSTNAME=old\n\nNM_CONTROLLED="no"\n')
    dhcpclient.set_dhcp_hostname("vm2", distros.make("rhel", "9.4"), "eth0")
    assert (d / "ifcfg-eth0").read_text() == 'DEVICE=eth0\nNM_CONTROLLED="no"\nDHCP_HOSTNAME=vm2\n'
    assert dhcpclient._nm_controlled("eth0") is False


class FlakyLink:
    """A link that refuses the first bounce (netlink itself is tested in tests/sandbox/test_network.py)."""

    def __init__(self):
        self.bounced = []

    def interface_name(self):
        return "eth7"

    def bounce(self, ifname):
        self.bounced.append(ifname)
        if len(self.bounced) == 1:
            raise NetworkError("Could not set eth0 down: (1, 'Operation not permitted')")


def test_link_bounce_is_netlink_with_upstream_retries(tmp_root):
    net, slept = FlakyLink(), []
    ran = dhcpclient.restart_interface("eth0", distros.make("fedora", "40"), net, sleep=slept.append)
    assert ran == [["netlink", "bounce", "eth0"]] * 2 and net.bounced == ["eth0", "eth0"] and slept == [5.0]


def test_ifcfg_hostname_asks_netlink_for_the_interface(tmp_root):
    dhcpclient.set_dhcp_hostname("vm3", distros.make("rhel", "9.4"), net=FlakyLink())
    assert (tmp_root / "etc/sysconfig/network-scripts/ifcfg-eth7").read_text() == "DHCP_HOSTNAME=vm3\n"


def test_restart_interface_missing_tool_does_not_wait(tmp_root, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_root))  # nothing installed
    slept = []
    ran = dhcpclient.restart_interface("eth0", distros.make("debian", "12"), FlakyLink(), sleep=slept.append)
    assert ran == [["ifdown", "eth0"], ["ifup", "eth0"]] and slept == []


def test_hostname_record_falls_back_to_cloud_init(tmp_root, upstream):
    (tmp_root / "var/lib/cloud/data").mkdir(parents=True)
    shutil.copy(upstream / "cloud-init/set-hostname", tmp_root / "var/lib/cloud/data/set-hostname")
    assert hostname.get_hostname_record("/var/lib/waagent") == "a-sample-set-hostname"
    assert (tmp_root / "var/lib/waagent/published_hostname").read_text() == "a-sample-set-hostname"


# --- keys from the goal state's certificates -------------------------------------------------------------
@pytest.fixture
def goal_state_certs(passwd, upstream):
    """Run the real certificate pipeline on upstream's Certificates sample."""
    from guestagent.protocol.certificates import process_certificates

    lib = passwd / "var/lib/waagent"
    lib.mkdir(parents=True)
    shutil.copy(upstream / "wire/trans_prv", lib / "TransportPrivate.pem")
    shutil.copy(upstream / "wire/trans_cert", lib / "TransportCert.pem")
    summary = process_certificates((upstream / "wire/certs.xml").read_text(), "/var/lib/waagent")
    assert summary.error is None
    return passwd, {c.thumbprint: c.has_private_key for c in summary}


def test_thumbprints_consumed_from_the_goal_state(goal_state_certs):
    root, thumbs = goal_state_certs
    assert thumbs == {"F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9": True,
                      "8979F1AC8C4215827BF3B5A403E6137B504D02A4": False}
    for thumb in thumbs:
        der = subprocess.run(["openssl", "x509", "-in", str(root / f"var/lib/waagent/{thumb}.crt"), "-outform", "DER"],
                             check=True, capture_output=True).stdout
        import hashlib

        assert hashlib.sha1(der).hexdigest().upper() == thumb


def test_public_key_from_certificate_matches_ssh_keygen(goal_state_certs):
    root, _ = goal_state_certs
    thumb = "8979F1AC8C4215827BF3B5A403E6137B504D02A4"
    path = ssh.deploy_ssh_pubkey("azureuser", "$HOME/azureuser/.ssh/authorized_keys", thumb, None,
                                 "/var/lib/waagent", "/home")
    assert path == "/home/azureuser/.ssh/authorized_keys"
    ak = root / "home/azureuser/.ssh/authorized_keys"
    pub = root / f"var/lib/waagent/{thumb}.pub"
    assert stat.S_IMODE(ak.stat().st_mode) == 0o644 and stat.S_IMODE(pub.stat().st_mode) == 0o600
    assert stat.S_IMODE(ak.parent.stat().st_mode) == 0o700
    expected = subprocess.run(["ssh-keygen", "-i", "-m", "PKCS8", "-f", str(pub)], check=True,
                              capture_output=True, text=True).stdout.strip()
    assert ak.read_text() == expected + "\n"
    ssh.deploy_ssh_pubkey("azureuser", "$HOME/azureuser/.ssh/authorized_keys", None, "ssh-rsa AAAAB3 by-value",
                          "/var/lib/waagent", "/home")
    assert ak.read_text().splitlines() == [expected, "ssh-rsa AAAAB3 by-value"]


def test_key_pair_from_private_key(goal_state_certs):
    root, _ = goal_state_certs
    thumb = "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9"
    ssh.deploy_ssh_keypair("azureuser", "$HOME/azureuser/.ssh/id_rsa", thumb, "/var/lib/waagent", "/home")
    key, pub = root / "home/azureuser/.ssh/id_rsa", root / "home/azureuser/.ssh/id_rsa.pub"
    assert key.read_bytes() == (root / f"var/lib/waagent/{thumb}.prv").read_bytes()
    assert (stat.S_IMODE(key.stat().st_mode), stat.S_IMODE(pub.stat().st_mode)) == (0o644, 0o600)
    assert pub.read_text() == sshkeys.pem_public_key_from_private_key(key.read_bytes())
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")


@pytest.mark.parametrize("fp, value, msg", [
    ("0000000000000000000000000000000000000000", None, "Can't find 0000000000000000000000000000000000000000.crt"),
    (None, "not-a-key AAAA", "Bad public key"),
    (None, None, "Fingerprint and Value are None"),
])
def test_public_key_errors(goal_state_certs, fp, value, msg):
    with pytest.raises(OSUtilError, match=msg):
        ssh.deploy_ssh_pubkey("azureuser", "$HOME/azureuser/.ssh/authorized_keys", fp, value, "/var/lib/waagent",
                              "/home")


def test_key_pair_missing_private_key(goal_state_certs):
    with pytest.raises(OSUtilError, match=r"Can.t find 8979F1AC8C4215827BF3B5A403E6137B504D02A4\.prv"):
        ssh.deploy_ssh_keypair("azureuser", "$HOME/azureuser/.ssh/id_rsa", "8979F1AC8C4215827BF3B5A403E6137B504D02A4",
                               "/var/lib/waagent", "/home")


def test_host_key_regeneration_and_thumbprint(tmp_root):
    (tmp_root / "etc/ssh").mkdir(parents=True)
    (tmp_root / "etc/ssh/ssh_host_dsa_key").write_text("old")
    ssh.regenerate_host_keys("/etc/ssh", "ed25519")
    assert sorted(os.listdir(tmp_root / "etc/ssh")) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"]
    thumb = ssh.host_key_thumbprint("/etc/ssh", "ed25519")
    assert thumb.startswith("SHA256") and ":" not in thumb
    with pytest.raises(ProvisionError, match="Failed to generate ssh host key"):
        ssh.host_key_thumbprint("/etc/ssh", "rsa")
    with pytest.raises(ProvisionError, match="Unsupported SSH host key type"):
        ssh.regenerate_host_keys("/etc/ssh", "rsa1024")


@pytest.mark.parametrize("path", ["$HOME/../etc/ssh/authorized_keys", "/root/.ssh/authorized_keys",
                                  "$HOME/other/.ssh/authorized_keys", "$HOME/azureuserX/.ssh/authorized_keys"])
def test_a_key_path_outside_the_users_home_is_refused(tmp_root, path):
    """Issue 13: the ovf-env's key paths are fabric data; they must resolve inside /home/<user>."""
    from guestagent.errors import PathEscapeError

    with pytest.raises(PathEscapeError, match="outside /home/azureuser"):
        ssh.deploy_ssh_pubkey("azureuser", path, None, "ssh-rsa AAAAB3 by-value", "/var/lib/waagent", "/home")
    with pytest.raises(PathEscapeError):
        ssh.deploy_ssh_keypair("azureuser", path, "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9", "/var/lib/waagent",
                               "/home")
    assert not any(p.is_file() for p in tmp_root.rglob("*"))


def test_an_existing_system_account_is_not_provisioned(passwd):
    from guestagent.conf import Config
    from guestagent.errors import ProvisionError
    from guestagent.provisioning.ovfenv import OvfEnv
    from guestagent.provisioning.provision import Provisioner

    prov = Provisioner(Config({}), distro=None, net=object())  # type: ignore[arg-type]
    with pytest.raises(ProvisionError, match=r"'bin'.*existing system account"):
        prov.config_user_account(OvfEnv(version="1.0", hostname="h", username="bin"))
    assert not (passwd / "etc/sudoers.d/waagent").exists()


def test_a_key_fingerprint_that_leaves_the_lib_dir_is_refused(goal_state_certs):
    """The ovf-env's Fingerprint names <lib>/<fp>.crt, .pub and .prv: fabric data, kept inside the lib dir."""
    from guestagent.errors import PathEscapeError

    root, _ = goal_state_certs
    fp = "../../../tmp/F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9"
    with pytest.raises(PathEscapeError):
        ssh.deploy_ssh_pubkey("azureuser", "$HOME/azureuser/.ssh/authorized_keys", fp, None, "/var/lib/waagent",
                              "/home")
    with pytest.raises(PathEscapeError):
        ssh.deploy_ssh_keypair("azureuser", "$HOME/azureuser/.ssh/id_rsa", fp, "/var/lib/waagent", "/home")
    assert not (root / "tmp").exists() or not any((root / "tmp").iterdir())
