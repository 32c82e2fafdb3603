"""Pre-provisioned VMs (PPS) in a real guest: the VM boots with a placeholder ovf-env saying PPS, reports
Ready in the pool and blocks on netlink; the test claims it in the fabric and moves its network with the
real hardware event, caused through QEMU's monitor — a media disconnect/connect of the NIC (Running:
``set_link n0 off``/``on``) or a NIC hot-unplug and hot-plug (Savable: ``device_del``/``device_add``).
The guest kernel sees the carrier change or the NIC go and come, systemd-networkd takes a DHCP lease
again, and the agent fetches the customer's ovf-env from IMDS reprovisiondata, provisions the customer
(user, hostname, ssh key) and reports Ready again. Each prints its claim → Ready figure; the last
scenario runs Debian's cloud-init 22.4 (Azure datasource) on the same Running scenario, the anchor."""

from __future__ import annotations

import re
import time
from datetime import datetime

import pytest
from vmtier import net
from vmtier.machine import NIC_DEVICE
from vmtier.monitor import MonitorError
from vmtier.platform import default_scenario

CUSTOMER_PASSWORD = "Customer-Passw0rd!"
MARKER = "/var/lib/waagent/reported_ready"


def pool_scenario(vm, kind: str) -> dict:
    """A pool VM of PPS type ``kind``: a placeholder ovf-env on the DVD, the customer's (with the tier's
    ssh key by value, so a real login proves it) behind IMDS reprovisiondata once claimed."""
    data = default_scenario(vm, hostname="pool-vm-0001", user="pooladmin", password="Pool-Placeholder-1!")
    data["name"] = f"vmtier-pps-{kind.lower()}"
    data["ovf"]["preprovisioned_vm"] = True
    if kind != "Running":
        data["ovf"]["preprovisioned_vm_type"] = kind
    data["pps"] = {"customer": default_scenario(vm, hostname="customer-vm", user="customer",
                                                password=CUSTOMER_PASSWORD)["ovf"]}
    return data


def _header(req: dict, name: str) -> str:
    return next((v for k, v in req["headers"].items() if k.lower() == name.lower()), "")


def reprovision_requests(vm) -> list:
    return [r for r in vm.fabric.requests_of("imds") if r["path"].startswith("/metadata/reprovisiondata")]


def enter_pool(vm, waiting_for: str) -> None:
    """Boot, see the pool's Ready at the fabric, the reported-ready marker, and the agent blocked on
    netlink (not polling IMDS: a pooled VM asks for nothing until its network moves)."""
    vm.start()
    took = vm.wait_ready()
    print(f"qemu start -> Ready in the pool: {took:.1f}s")
    vm.machine.wait_for("the reported-ready marker", lambda: vm.exists(MARKER), 120)
    vm.machine.wait_for("the agent's netlink wait", lambda: waiting_for in vm.agent_log(), 120)
    time.sleep(3)   # the agent stays blocked: nothing more reaches the fabric
    assert reprovision_requests(vm) == []
    assert len(vm.ready_reports()) == 1, vm.fabric.health_reports
    assert not vm.exists("/var/lib/waagent/provisioned")


def claim_and_wait_ready(vm, move) -> float:
    """Claim in the fabric, do the network move, wait for the customer's Ready; seconds from the claim."""
    before = len(vm.ready_reports())
    t0 = time.monotonic()
    vm.fabric.claim()
    move()
    vm.fabric.wait_for(lambda: len(vm.ready_reports()) > before, timeout=min(420, vm.machine.left()))
    vm.claim_to_ready = time.monotonic() - t0
    return vm.claim_to_ready


def reprovisioned_after_claim(vm) -> float:
    """Seconds from the claim to the fabric's 200 answer to reprovisiondata (host clock both)."""
    answered = next(r for r in reprovision_requests(vm) if r["status"] == 200)
    at = datetime.fromisoformat(answered["time"].replace("Z", "+00:00")).timestamp()
    return at - vm.fabric.claimed_at


def assert_customer_provisioned(vm) -> None:
    vm.wait_provisioned(120)
    assert not vm.exists(MARKER), "the reported-ready marker is removed once provisioned for the customer"
    assert vm.run(["id", "-un", "customer"]).out.strip() == "customer"
    assert vm.run(["id", "pooladmin"], check=False).rc != 0, "the placeholder's user is never created"
    assert vm.run(["hostname"]).out.strip() == "customer-vm"
    login = vm.machine.wait_for("ssh login as the customer",
                                lambda: (r := vm.ssh("customer", "id -un; hostname")).returncode == 0 and r,
                                120, 3)
    assert login.stdout.split() == ["customer", "customer-vm"], login.stdout + login.stderr
    # the placeholder on disk was replaced by the customer's document, saved redacted
    saved = vm.run(["cat", "/var/lib/waagent/ovf-env.xml"]).out
    assert "customer-vm" in saved and "pool-vm-0001" not in saved and CUSTOMER_PASSWORD not in saved
    assert CUSTOMER_PASSWORD not in vm.agent_log()


def assert_health_and_requests(vm) -> None:
    """Fabric: Ready (pool), NotReady Provisioning, Ready (customer); reprovisiondata asked only after the
    claim, 200 at last, each with the Metadata header."""
    states = [h.get("state") for h in vm.fabric.health_reports]
    assert states[0] == states[-1] == "Ready" and "NotReady" in states[1:], vm.fabric.health_reports
    reqs = reprovision_requests(vm)
    assert reqs and reqs[-1]["status"] == 200, reqs
    assert all(_header(r, "Metadata") == "true" for r in reqs), reqs
    assert all(s in (200, 404) for s in (r["status"] for r in reqs)), reqs
    assert "api-version=2019-06-01" in reqs[-1]["path"]


def in_order(log: str, patterns: list) -> list:
    """The agent log's timeline: each pattern found after the previous one; their lines."""
    pos, lines = 0, []
    for pat in patterns:
        m = re.compile(pat, re.M).search(log, pos)
        assert m, f"not found after position {pos}: {pat!r}\n{log[pos:pos + 3000]}"
        start = log.rfind("\n", 0, m.start()) + 1
        lines.append(log[start:log.find("\n", m.end())])
        pos = m.end()
    return lines


def networkd_leases(vm) -> int:
    out = vm.run("journalctl -b --no-pager -u systemd-networkd").out
    return len(re.findall(r"eth0: DHCPv4 address", out))


def test_running_media_change_through_qemu_monitor(azure_vm):
    """Running: a real carrier loss and return on the virtio NIC (QMP ``set_link n0``)."""
    vm = azure_vm()
    vm.scenario_dict = pool_scenario(vm, "Running")
    enter_pool(vm, "waiting for the vnet switch (media disconnect/connect) on eth0")
    leases = networkd_leases(vm)

    def media_change():
        vm.machine.monitor.command("set_link", name="n0", up=False)
        time.sleep(2)
        vm.machine.monitor.command("set_link", name="n0", up=True)

    took = claim_and_wait_ready(vm, media_change)
    print(f"PPS Running in the VM: claim -> Ready with the customer's provisioning: {took:.1f}s "
          f"(reprovisiondata answered at {reprovisioned_after_claim(vm):.1f}s)")
    assert_customer_provisioned(vm)
    assert_health_and_requests(vm)
    assert networkd_leases(vm) > leases, "systemd-networkd took a new DHCP lease after the carrier came back"
    timeline = in_order(vm.agent_log(), [
        r"PPS type: Running",
        r"Reported Ready in the pre-provisioning pool",
        r"waiting for the vnet switch \(media disconnect/connect\) on eth0",
        r"netlink: RTM_NEWLINK eth0 \(index \d+, operstate DOWN\)",
        r"netlink: RTM_NEWLINK eth0 \(index \d+, operstate UP\)",
        r"Pre-provisioning pool: the vnet switch .* after [\d.]+ s",
        r"Polled IMDS reprovisiondata \d+ time\(s\)",
        r"Re-provisioning data received",
        r"Provisioning complete",
    ])
    print("\n".join(timeline))


def test_savable_nic_hot_unplug_and_plug_through_qemu_monitor(azure_vm):
    """Savable: the NIC is hot-unplugged (QMP ``device_del``, an ACPI eject the guest kernel honours)
    and plugged back on the same netdev with the same MAC (``device_add``)."""
    vm = azure_vm()
    vm.scenario_dict = pool_scenario(vm, "Savable")
    enter_pool(vm, "waiting for the NIC's detach")
    mon = vm.machine.monitor

    def hot_unplug_and_plug():
        mon.command("device_del", id="nic0")
        try:
            mon.wait_event("DEVICE_DELETED", 60, device="nic0")
        except MonitorError as e:
            pytest.skip(f"the guest kernel did not release the NIC on an ACPI eject (device_del): {e}")
        time.sleep(2)
        mon.command("device_add", driver=NIC_DEVICE, netdev="n0", id="nic0", mac=net.GUEST_MAC, romfile="")

    took = claim_and_wait_ready(vm, hot_unplug_and_plug)
    print(f"PPS Savable in the VM: claim -> Ready with the customer's provisioning: {took:.1f}s "
          f"(reprovisiondata answered at {reprovisioned_after_claim(vm):.1f}s)")
    assert_customer_provisioned(vm)
    assert_health_and_requests(vm)
    timeline = in_order(vm.agent_log(), [
        r"PPS type: Savable",
        r"Reported Ready in the pre-provisioning pool",
        r"waiting for the NIC's detach",
        r"netlink: RTM_DELLINK eth0",
        r"Hot-attached NIC eth0",
        r"NIC eth0 detached; primary NIC eth0 attached",
        r"Polled IMDS reprovisiondata \d+ time\(s\)",
        r"Re-provisioning data received",
        r"Provisioning complete",
    ])
    print("\n".join(timeline))


# --- cloud-init 22.4 as the anchor -------------------------------------------------------------------------
#: cloud-init is installed but masked: nothing starts it at boot, only the scenario below (the agent there
#: has Provisioning.Agent=cloud-init, so the two never both provision); the Azure datasource alone.
CLOUD_INIT_LAYER = """
systemctl mask cloud-init-local.service cloud-init.service cloud-config.service cloud-final.service \
    cloud-init-hotplugd.socket
printf 'datasource_list: [ Azure ]\\n' > /etc/cloud/cloud.cfg.d/90-vmtier.cfg
"""
CLOUD_INIT_LOG = "/var/log/cloud-init.log"


def cloud_init_ready(vm) -> list:
    """The health reports cloud-init sent (its User-Agent), answered 200."""
    return [r for r in vm.fabric.requests_of("health")
            if _header(r, "User-Agent").startswith("Cloud-Init/") and r["status"] == 200]


def cloud_init_stopped(vm, what: str) -> str:
    """Why cloud-init did not get to ``what``: its warnings and errors, for the skip reason."""
    log = vm.run(f"cat {CLOUD_INIT_LOG} 2>/dev/null || true").out
    bad = [ln for ln in log.splitlines() if " WARNING" in ln or " ERROR" in ln or "Traceback" in ln]
    return f"cloud-init 22.4's Azure datasource did not reach {what}; its log says: " + " | ".join(bad[-8:])


def test_cloud_init_anchor_running(azure_vm, vm_images):
    """The anchor: Debian's cloud-init 22.4 (Azure datasource) on the same PPS Running scenario against
    the same fabric and the same QEMU media change; its claim → Ready figure beside the agent's (the
    Running test above, same run). cloud-init's local stage is started by the test (systemd-run), as
    cloud-init-local.service would at boot."""
    from vmtier import image

    base, _ = vm_images
    layer = image.package_layer(base, ["cloud-init"], script=CLOUD_INIT_LAYER)
    agent = image.agent_image(base, backing=layer)
    vm = azure_vm(images=(base, agent), conf={"Provisioning.Agent": "cloud-init"})
    vm.scenario_dict = pool_scenario(vm, "Running")
    vm.start()
    version = vm.run("cloud-init --version 2>&1").out.strip()
    print(f"anchor: {version}")
    vm.run(["systemd-run", "--unit=vmtier-cloud-init-local", "--property=Type=oneshot", "--no-block",
            "cloud-init", "init", "--local"])
    try:
        vm.machine.wait_for("cloud-init's Ready in the pool", lambda: cloud_init_ready(vm), 240, 2)
        vm.machine.wait_for("cloud-init's reported-ready marker",
                            lambda: vm.exists("/var/lib/cloud/data/reported_ready"), 60, 2)
        vm.machine.wait_for("cloud-init's netlink wait",
                            lambda: "Wait for vnetswitch to happen on" in vm.run(["cat", CLOUD_INIT_LOG]).out,
                            60, 2)
    except Exception as e:
        pytest.skip(f"{cloud_init_stopped(vm, 'the pool wait')} ({e})")
    assert [r for r in reprovision_requests(vm) if r["status"] == 200] == []
    before = len(cloud_init_ready(vm))
    t0 = time.monotonic()
    vm.fabric.claim()
    vm.machine.monitor.command("set_link", name="n0", up=False)
    time.sleep(2)
    vm.machine.monitor.command("set_link", name="n0", up=True)
    try:
        vm.fabric.wait_for(lambda: len(cloud_init_ready(vm)) > before, timeout=min(420, vm.machine.left()))
    except TimeoutError:
        pytest.skip(cloud_init_stopped(vm, "Ready for the customer"))
    vm.claim_to_ready = time.monotonic() - t0
    print(f"anchor: cloud-init 22.4 PPS Running in the VM: claim -> Ready: {vm.claim_to_ready:.1f}s "
          f"(reprovisiondata answered at {reprovisioned_after_claim(vm):.1f}s; its Ready goes out from the "
          "datasource, before its modules create the user and the host keys)")
    # cloud-init's own timeline: the same pool wait, the same media switch seen on netlink (it logs its
    # Ready after the fabric's answer: wait for that line)
    ci_log = vm.machine.wait_for(
        "cloud-init's second 'Reported ready' line",
        lambda: (t := vm.run(["cat", CLOUD_INIT_LOG]).out).count("Reported ready to Azure fabric") >= 2 and t,
        60, 1)
    timeline = in_order(ci_log, [
        r"Reported ready to Azure fabric",
        r"Creating a marker file to report ready: /var/lib/cloud/data/reported_ready",
        r"Wait for vnetswitch to happen on eth0",
        r"Media switch happened on eth0",
        r"polled imds \d+ times after reuse",
        r"Reported ready to Azure fabric",
    ])
    print("\n".join(timeline))
    # the datasource then hands the customer's document to the agent's folder (redacted)
    saved = vm.machine.wait_for("cloud-init's copy of the customer's ovf-env",
                                lambda: vm.run("cat /var/lib/waagent/ovf-env.xml 2>/dev/null || true").out,
                                60, 2)
    assert "customer-vm" in saved and CUSTOMER_PASSWORD not in saved, saved
