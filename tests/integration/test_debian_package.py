"""scripts/build-deb: the .deb an image builder installs with apt — its control fields, its files, and the
agent it carries running from the unpacked tree on Debian's own python3 (lintian when installed)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from guestagent.version import AGENT_VERSION, GUESTAGENT_VERSION

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed")
DEPENDS = ["python3 (>= 3.9)", "python3-requests", "python3-lxml", "python3-pyroute2", "python3-psutil",
           "python3-cryptography", "python3-asn1crypto"]


TRANSITIONAL = f"{AGENT_VERSION}+guestagent{GUESTAGENT_VERSION}"
DEBIAN_WAAGENT = "2.7.3.0-4.1"   # bookworm's; trixie's and a later 2.15.0.1-N must stay below too


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> list:
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([str(REPO / "scripts" / "build-deb"), str(out)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    paths = [Path(line) for line in res.stdout.split()]
    assert paths == [out / f"guestagent_{GUESTAGENT_VERSION}_all.deb", out / f"waagent_{TRANSITIONAL}_all.deb"]
    assert all(p.is_file() for p in paths)
    return paths


@pytest.fixture(scope="module")
def deb(debs) -> Path:
    return debs[0]


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def test_control_fields(deb):
    fields = dict(re.findall(r"^(\S+): (.*)$", dpkg_deb("-f", str(deb)), re.M))
    assert fields["Package"] == "guestagent" and fields["Version"] == GUESTAGENT_VERSION
    assert fields["Architecture"] == "all"
    assert [d.strip() for d in fields["Depends"].split(",")] == DEPENDS
    # a rename as Debian does it: Breaks+Replaces below the transitional waagent (never Conflicts, which
    # makes apt remove Debian's waagent, whose postrm then deletes /var/lib/waagent)
    assert fields["Breaks"] == fields["Replaces"] == f"waagent (<< {TRANSITIONAL})"
    assert "Conflicts" not in fields and "Provides" not in fields
    assert "pip" not in dpkg_deb("-I", str(deb))


def test_transitional_waagent_upgrades_debian_s(debs, tmp_path):
    """The transitional waagent: above Debian's versions, depends on exactly this guestagent, ships only
    its doc, and has no maintainer scripts (Debian's postrm is the one dpkg runs, with "upgrade")."""
    fields = dict(re.findall(r"^(\S+): (.*)$", dpkg_deb("-f", str(debs[1])), re.M))
    assert fields["Package"] == "waagent" and fields["Version"] == TRANSITIONAL
    assert fields["Depends"] == f"guestagent (= {GUESTAGENT_VERSION})" and fields["Architecture"] == "all"
    assert fields["Section"] == "oldlibs" and "transitional" in fields["Description"]
    for older in (DEBIAN_WAAGENT, f"{AGENT_VERSION}-1", f"{AGENT_VERSION}-9+deb13u1"):
        assert subprocess.run(["dpkg", "--compare-versions", TRANSITIONAL, "gt", older]).returncode == 0, older
    files = sorted(line.split()[-1] for line in dpkg_deb("-c", str(debs[1])).splitlines() if line[0] == "-")
    assert files == ["./usr/share/doc/waagent/changelog.gz", "./usr/share/doc/waagent/copyright"]
    subprocess.run(["dpkg-deb", "-e", str(debs[1]), str(tmp_path / "ctrl")], check=True)
    assert sorted(p.name for p in (tmp_path / "ctrl").iterdir()) == ["control", "md5sums"]


def test_files_modes_and_conffiles(deb, tmp_path):
    listing = {}
    for line in dpkg_deb("-c", str(deb)).splitlines():
        mode, owner, _size, _date, _time, name = line.split(None, 5)
        listing[name.lstrip(".")] = (mode, owner)
    expected = {
        "/usr/sbin/waagent": "-rwxr-xr-x", "/usr/bin/guestagent": "-rwxr-xr-x",
        "/etc/waagent.conf": "-rw-r--r--", "/etc/logrotate.d/waagent": "-rw-r--r--",
        "/lib/systemd/system/walinuxagent.service": "-rw-r--r--", "/lib/systemd/system/azure.slice": "-rw-r--r--",
        "/lib/systemd/system/azure-vmextensions.slice": "-rw-r--r--",
        "/lib/udev/rules.d/66-azure-storage.rules": "-rw-r--r--",
        "/lib/udev/rules.d/99-azure-product-uuid.rules": "-rw-r--r--",
        "/usr/lib/python3/dist-packages/guestagent/cli.py": "-rw-r--r--",
        "/usr/lib/python3/dist-packages/guestagent/fabric/scenarios/default.json": "-rw-r--r--",
        "/usr/share/doc/guestagent/copyright": "-rw-r--r--",
    }
    for name, mode in expected.items():
        assert listing.get(name, ("missing",))[0] == mode, name
    assert {owner for _mode, owner in listing.values()} == {"root/root"}
    assert not [n for n in listing if "__pycache__" in n or n.endswith(".pyc") or "/var/lib/waagent" in n]
    ctrl = tmp_path / "ctrl"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(ctrl)], check=True)
    assert (ctrl / "conffiles").read_text().split() == ["/etc/waagent.conf", "/etc/logrotate.d/waagent"]
    for script in ("postinst", "prerm", "postrm"):
        assert os.access(ctrl / script, os.X_OK)
        assert subprocess.run(["sh", "-n", str(ctrl / script)]).returncode == 0
    assert "deb-systemd-helper enable walinuxagent.service" in (ctrl / "postinst").read_text()


def test_udev_and_logrotate_say_what_upstream_says(deb, tmp_path):
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    storage = (tmp_path / "lib/udev/rules.d/66-azure-storage.rules").read_text()
    for fact in ('ATTRS{ID_VENDOR}!="Msft"', 'ATTRS{ID_MODEL}!="Virtual_Disk"', '"?00000000-0000-*"',
                 '"?00000000-0001-*"', "{f8b3781b-1e82-4818-a1c3-63d806ec15bb}", 'SYMLINK+="disk/azure/$env{fabric_name}"',
                 'SYMLINK+="disk/azure/$env{fabric_name}-part%n"', '"$env{fabric_scsi_controller}/lun$result"'):
        assert fact in storage, fact
    uuid = (tmp_path / "lib/udev/rules.d/99-azure-product-uuid.rules").read_text()
    assert 'RUN+="/bin/chmod 0444 /sys/devices/virtual/dmi/id/product_uuid"' in uuid
    rotate = (tmp_path / "etc/logrotate.d/waagent").read_text()
    for directive in ("compress", "size 20M", "rotate 50", "dateext", "dateformat -%Y-%m-%d-%s", "notifempty",
                      "missingok"):
        assert re.search(rf"^\s+{re.escape(directive)}$", rotate, re.M), directive
    assert "/var/log/waagent.log {" in rotate
    if shutil.which("logrotate"):
        res = subprocess.run(["logrotate", "-d", str(tmp_path / "etc/logrotate.d/waagent")], capture_output=True,
                             text=True)
        assert "error" not in res.stderr.lower(), res.stderr
    # udevadm verify exists from systemd 253 on (Debian 12 has 252): the rules' syntax, where it can be checked
    if shutil.which("udevadm") and subprocess.run(["udevadm", "verify", "--help"], capture_output=True).returncode == 0:
        res = subprocess.run(["udevadm", "verify", str(tmp_path / "lib/udev/rules.d/66-azure-storage.rules"),
                              str(tmp_path / "lib/udev/rules.d/99-azure-product-uuid.rules")],
                             capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr


def test_the_packaged_agent_runs_on_the_system_interpreter(deb, tmp_path):
    """/usr/sbin/waagent from the package, its modules from the package's dist-packages, the libraries
    Debian's (no venv): -version and -show-configuration of the packaged /etc/waagent.conf."""
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(tree / "usr/lib/python3/dist-packages"),
           "GUESTAGENT_ROOT": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    ver = subprocess.run([python, str(tree / "usr/sbin/waagent"), "-version"], capture_output=True, text=True,
                         env=env, timeout=60, cwd=tmp_path)
    assert ver.returncode == 0 and f"WALinuxAgent-{AGENT_VERSION}" in ver.stdout, ver.stderr
    (tree / "var/log").mkdir(parents=True)
    show = subprocess.run([python, str(tree / "usr/sbin/waagent"), "-show-configuration"], capture_output=True,
                          text=True, env=env, timeout=60, cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert re.search(r"^Provisioning\.Agent = \S+$", show.stdout, re.M)
    assert str(tree / "usr/lib/python3/dist-packages") in subprocess.run(
        [python, "-c", "import guestagent; print(guestagent.__file__)"], capture_output=True, text=True,
        env=env, cwd=tmp_path).stdout


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian not installed")
def test_lintian_finds_no_error(debs):
    res = subprocess.run(["lintian", "--no-cfg", *map(str, debs)], capture_output=True, text=True, timeout=300)
    errors = [line for line in res.stdout.splitlines() if line.startswith("E:")]
    assert errors == [], res.stdout
