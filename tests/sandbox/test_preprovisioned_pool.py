"""Pre-provisioned VMs end to end: the real daemon in the lab's sandbox, a fabric whose first ovf-env
says PPS, IMDS reprovisiondata answering 404 until the lab claims the VM, and the network move done to
the sandbox's veth (link down/up for Running, delete and re-add for Savable). Each run ~5-10 s."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from guestagent.fabric.scenario import BUILTIN_DIR
from guestagent.lab.sandbox import project_root

pytestmark = pytest.mark.sandbox


def _lab(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(project_root()))
    res = subprocess.run([sys.executable, "-m", "guestagent.tools", "lab", "--until", "ready", "--timeout", "90",
                          *args], capture_output=True, text=True, timeout=200, env=env, check=False)
    print(res.stdout[-8000:], res.stderr[-2000:])
    return res


def _health(out: str) -> list[str]:
    block = out.split("health reports:", 1)[1].split("telemetry events", 1)[0]
    return [line.strip() for line in block.splitlines()[1:] if line.strip()]


def _claim_to_ready(out: str) -> float:
    m = re.search(r"claim -> Ready with the customer's provisioning: ([\d.]+) s", out)
    assert m, "no claim -> Ready figure"
    return float(m.group(1))


def _provisioned_for_the_customer(out: str) -> None:
    assert "added    /home/customer/.ssh/authorized_keys" in out  # the customer's document, not the placeholder
    assert "/home/pooladmin" not in out
    assert "/var/lib/waagent/provisioned" in out and "/var/lib/waagent/reported_ready" not in out
    assert "hostname set to customer-vm" in out


def test_running_waits_for_the_vnet_switch_then_provisions_the_customer():
    res = _lab("--scenario", "pps-running")
    out = res.stdout
    assert res.returncode == 0, out[-3000:]
    assert "pre-provisioned VM: PPS type Running" in out
    assert "pool: waiting for the vnet switch (media disconnect/connect) on eth0" in out
    assert re.search(r"netlink: RTM_NEWLINK eth0 \(index \d+, operstate DOWN\)", out)
    assert re.search(r"netlink: RTM_NEWLINK eth0 \(index \d+, operstate UP\)", out)
    assert "claim 1: Running, network move: link down/up of eth0" in out
    # Ready in the pool, then the customer's provisioning and Ready again
    health = _health(out)
    assert health[0].startswith("Ready") and health[1].startswith("NotReady Provisioning") \
        and health[-1].startswith("Ready"), health
    _provisioned_for_the_customer(out)
    assert _claim_to_ready(out) < 30


def test_savable_waits_for_the_nic_to_go_and_the_primary_to_come():
    res = _lab("--scenario", "pps-savable")
    out = res.stdout
    assert res.returncode == 0, out[-3000:]
    assert "pre-provisioned VM: PPS type Savable" in out
    assert re.search(r"netlink: RTM_DELLINK eth0", out)
    assert "pool: NIC eth0 detached, primary NIC eth0 attached" in out
    assert [h.split()[0] for h in _health(out)] == ["Ready", "NotReady", "Ready"]
    _provisioned_for_the_customer(out)


def test_os_disk_reports_ready_and_waits_to_be_shut_down():
    res = _lab("--scenario", "pps-osdisk", "--claim-after", "-1", "--pool-timeout", "3")
    out = res.stdout
    assert res.returncode == 0, out[-3000:]
    assert "pool: waiting for the host to shut the VM down" in out
    assert _health(out) == ["Ready [incarnation 1]"]
    assert "/var/lib/waagent/reported_ready" not in out  # cloud-init writes no marker for an OS disk
    assert "imds" not in out.split("requests:", 1)[1].splitlines()[0]  # never asked for reprovisiondata


def test_restart_in_the_pool_is_unknown_no_second_ready_then_polls():
    res = _lab("--scenario", "pps-running", "--restart-in-pool")
    out = res.stdout
    assert res.returncode == 0, out[-3000:]
    assert "daemon stopped while waiting in the pool" in out
    assert "pool: restarted in the pool (Unknown): no second Ready" in out
    assert "PPS type Unknown" in out
    assert re.search(r"IMDS reprovisiondata attempt 1: Status Code 404", out)  # polled before the claim
    assert [h.split()[0] for h in _health(out)] == ["Ready", "NotReady", "Ready"]  # one pool Ready only
    _provisioned_for_the_customer(out)


def test_a_claim_that_never_comes_leaves_the_vm_in_the_pool():
    res = _lab("--scenario", "pps-running", "--claim-after", "-1", "--pool-timeout", "3")
    out = res.stdout
    assert res.returncode == 0, out[-3000:]
    assert re.search(r"Still in the pre-provisioning pool after \d s \(Debug.PreprovisionedPoolTimeout\), "
                     r"still waiting for the vnet switch", out)
    assert "lab success: stayed in the pool (no claim)" in out
    assert _health(out) == ["Ready [incarnation 1]"]  # no ProvisioningFailed: still a Ready pool member
    assert "/var/lib/waagent/reported_ready" in out and "/var/lib/waagent/provisioned" not in out


def test_a_second_claim_is_refused_and_changes_nothing():
    res = _lab("--scenario", "pps-running", "--claims", "2")
    out = res.stdout
    assert res.returncode == 0, out[-3000:]
    assert "claim 2: refused (the VM was claimed already)" in out
    assert [h.split()[0] for h in _health(out)] == ["Ready", "NotReady", "Ready"]
    _provisioned_for_the_customer(out)


def test_reprovisiondata_that_is_not_an_ovf_env_fails_provisioning_and_stays_in_the_pool(tmp_path: Path):
    doc = json.loads((BUILTIN_DIR / "pps-running.json").read_text())
    doc["name"] = "pps-bad-document"
    doc["pps"]["body"] = "<Environment>not the customer's provisioning</Environment>"
    scenario = tmp_path / "pps-bad.json"
    scenario.write_text(json.dumps(doc))
    res = _lab("--scenario", str(scenario))
    out = res.stdout
    assert res.returncode == 1
    assert re.search(r"provisioning failed after the claim: .*The re-provisioning data is not a valid ovf-env.xml", out)
    assert "/var/lib/waagent/reported_ready" in out and "/var/lib/waagent/provisioned" not in out
    assert "/home/customer" not in out


SAVABLE_NETWORKD_ORDER = r"""
import json, subprocess, tempfile, threading, time
from guestagent.provisioning import preprovisioned as pps

def ip(*args):
    subprocess.run(["ip", *args], check=True)

address_at = []

def hot_unplug_and_attach():
    time.sleep(0.5)
    ip("link", "del", "eth0")
    time.sleep(0.3)
    ip("link", "add", "eth0", "type", "veth", "peer", "name", "fabric0")
    ip("link", "set", "fabric0", "up")
    ip("link", "set", "eth0", "up")
    # systemd-networkd's order: the static Gateway= route at carrier, the DHCP lease's address later
    ip("route", "add", "default", "via", "10.0.0.1", "dev", "eth0", "onlink")
    time.sleep(1.5)
    address_at.append(time.monotonic())
    ip("addr", "add", "10.0.0.4/24", "dev", "eth0")

threading.Thread(target=hot_unplug_and_attach, daemon=True).start()
pool = pps.Pool(tempfile.mkdtemp(), lambda: None, 30)
pool._savable()
done = time.monotonic()
print("RESULT " + json.dumps({"address_at": address_at[0] if address_at else None, "done": done}))
"""


def test_savable_waits_for_the_primary_nics_address_not_only_its_route(sandbox):
    """Seen in the VM tier: networkd puts the static default route on the hot-attached NIC before DHCP
    gives it an address; taking the route alone as "primary attached" sent the first reprovisiondata
    request with no source address, and it hung for its whole 30-s timeout."""
    res = sandbox.python(SAVABLE_NETWORKD_ORDER, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.split("RESULT ", 1)[1])
    assert out["address_at"] is not None and out["done"] >= out["address_at"], out
