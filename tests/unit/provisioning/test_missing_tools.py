"""What the agent says when an image lacks a tool it calls during provisioning (the lab's image lacks
eject and ifupdown), and what the "(N s)" in the provisioning event is.

Real commands: PATH points at a directory holding only the executables a test writes.
"""

from __future__ import annotations

import io
import os

import pytest

from guestagent import log
from guestagent.errors import OSUtilError
from guestagent.osutil import dhcpclient, distros
from guestagent.osutil.dvd import eject_dvd
from guestagent.osutil.nethelper import Helper
from guestagent.provisioning import dvd, handler


@pytest.fixture
def captured():
    stream = io.StringIO()
    log.add_appender("test", log.StreamAppender(log.VERBOSE, stream))
    yield stream
    log.remove_appender("test")


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    return d


def _tool(bin_dir, name: str, script: str) -> None:
    p = bin_dir / name
    p.write_text("#!/bin/sh\n" + script)
    p.chmod(0o755)


def test_missing_eject_is_one_clear_line(bin_dir, captured):
    with pytest.raises(OSUtilError) as err:
        eject_dvd("/dev/sr0")
    assert err.value.msg == "Cannot eject dvd /dev/sr0: eject is not installed"
    dvd._cleanup("/dev/sr0", "/mnt/cdrom/secure", mounted=False)  # what copy_ovf_env does after the copy
    warnings = [line for line in captured.getvalue().splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and warnings[0].endswith("[OSUtilError] Cannot eject dvd /dev/sr0: eject is not installed")
    assert "ret=None" not in captured.getvalue()


def test_failing_eject_keeps_upstreams_report(bin_dir):
    _tool(bin_dir, "eject", "echo 'eject: unable to open /dev/sr0' >&2\nexit 1\n")
    with pytest.raises(OSUtilError) as err:
        eject_dvd("/dev/sr0")
    assert err.value.msg == "Failed to eject dvd: ret=1\n[stdout]\n\n\n[stderr]\neject: unable to open /dev/sr0\n"


def test_eject_success_and_virtio_disk_is_not_ejected(bin_dir, tmp_path):
    record = tmp_path / "ejected"
    _tool(bin_dir, "eject", f'echo "$1" >> {record}\n')
    eject_dvd("/dev/sr0")
    eject_dvd("/dev/vdb")  # a data disk, not a CD-ROM: left alone
    assert record.read_text() == "/dev/sr0\n"


def test_missing_ifdown_warns_once_and_does_not_retry(bin_dir, captured):
    slept: list[float] = []
    ran = dhcpclient.restart_interface("eth0", distros.make("debian", "12"), Helper(), sleep=slept.append)
    assert ran == [["ifdown", "eth0"], ["ifup", "eth0"]] and slept == []
    lines = captured.getvalue().splitlines()
    assert [line.split(" ", 3)[3] for line in lines if " WARNING " in line] == [
        "Cannot restart the network interface to publish the hostname: ifdown is not installed "
        "(the DHCP client sends the new name when it next starts)"]
    assert not any("retry" in line for line in lines)


def test_ifdown_then_ifup_run_in_order(bin_dir, tmp_path, captured):
    record = tmp_path / "calls"
    for name in ("ifdown", "ifup"):
        _tool(bin_dir, name, f'echo "${{0##*/}} $*" >> {record}\n')
    dhcpclient.restart_interface("eth0", distros.make("debian", "12"), Helper(), sleep=lambda s: None)
    assert record.read_text() == "ifdown eth0\nifup eth0\n"
    assert " WARNING " not in captured.getvalue()


def test_provisioning_event_time_is_the_uptime_as_upstream(tmp_root):
    # "Provisioning succeeded (2833.66s)" is seconds since boot (/proc/uptime), as upstream reports it,
    # not the provisioning's duration (that is the event's Duration field, in milliseconds). In the lab
    # the sandbox's time namespace starts the boot clock at zero, so the value is the sandbox's age.
    (tmp_root / "proc").mkdir()
    (tmp_root / "proc/uptime").write_text("12.34 40.01\n")
    assert handler._uptime() == "12.34"
    os.remove(tmp_root / "proc/uptime")
    assert handler._uptime() == "0"
