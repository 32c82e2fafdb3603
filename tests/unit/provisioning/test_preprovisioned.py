"""Pre-provisioned VMs: the PPS type (cloud-init's order), the pool's failures before any wait, and a
netlink socket that cannot be opened (a real one, refused by the fd limit)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from guestagent.errors import HttpError, NetworkError, ProvisionError
from guestagent.provisioning import preprovisioned as pps
from guestagent.provisioning.ovfenv import OvfEnv


def ovf(vm: bool = False, kind=None) -> OvfEnv:
    return OvfEnv(version="1.0", hostname="h", username="u", preprovisioned_vm=vm, preprovisioned_vm_type=kind)


def test_pps_type_follows_cloud_inits_order(tmp_root):
    lib = str(tmp_root)
    assert pps.pps_type(ovf(), lib) is pps.PpsType.NONE
    assert pps.pps_type(ovf(vm=True), lib) is pps.PpsType.RUNNING
    assert pps.pps_type(ovf(kind="Running"), lib) is pps.PpsType.RUNNING
    assert pps.pps_type(ovf(vm=True, kind="Savable"), lib) is pps.PpsType.SAVABLE
    assert pps.pps_type(ovf(vm=True, kind="PreprovisionedOSDisk"), lib) is pps.PpsType.OS_DISK
    assert pps.pps_type(ovf(), lib, imds_pps_type="Savable") is pps.PpsType.SAVABLE
    assert pps.pps_type(ovf(kind="None"), lib) is pps.PpsType.NONE
    (tmp_root / pps.REPORTED_READY).write_text("1: 2\n")
    assert pps.pps_type(ovf(), lib) is pps.PpsType.UNKNOWN  # the marker wins: a restart in the pool


def _no_watch() -> pps.network.LinkWatch:
    raise NetworkError("Cannot open a netlink socket: [Errno 24] Too many open files")


def test_a_netlink_socket_that_cannot_be_opened_fails_before_ready(tmp_root):
    readies = []
    pool = pps.Pool(str(tmp_root), lambda: readies.append(1), 5, watch=_no_watch, interface=lambda: "eth0")
    for kind in (pps.PpsType.RUNNING, pps.PpsType.SAVABLE):
        with pytest.raises(ProvisionError, match="Cannot wait for the pre-provisioning claim: Cannot open a netlink"):
            pool.run(kind)
    assert readies == [] and not (tmp_root / pps.REPORTED_READY).exists()


def test_ready_failing_in_the_pool_is_a_failure_except_for_savable(tmp_root):
    def fail() -> None:
        raise HttpError("connection reset")

    pool = pps.Pool(str(tmp_root), fail, 1, interface=lambda: "eth0")
    with pytest.raises(ProvisionError, match="Failed reporting ready while in the preprovisioning pool"):
        pool._ready(expect_failure=False)
    pool._ready(expect_failure=True)  # Savable: the NIC may be gone before the answer; marker written
    assert (tmp_root / pps.REPORTED_READY).is_file()


def test_link_watch_reports_a_socket_it_cannot_open():
    """A real RTMGRP_LINK subscription refused by the kernel (no file descriptor left): a NetworkError."""
    code = textwrap.dedent("""
        import resource
        from guestagent.errors import NetworkError
        from guestagent.osutil.network import LinkWatch
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        held = []
        try:
            while True:
                held.append(open("/dev/null"))
        except OSError:
            pass
        try:
            LinkWatch()
        except NetworkError as e:
            print("refused:", e.msg)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "refused: Cannot open a netlink socket" in res.stdout, res.stderr
