"""The emulated platform itself, before any agent feature: the guest boots the agent layer, the
agent's unit is installed and enabled from the project's files, and the devices look like Azure's."""

from __future__ import annotations

import uuid

from vmtier import devices, net
from vmtier.machine import Machine, MachineConfig


def test_guest_boots_with_azure_like_devices(vm_images, tmp_path):
    base, agent = vm_images
    work = tmp_path / "vm"
    work.mkdir()
    vm_id = str(uuid.uuid4())
    dvd = devices.make_dvd(work / "ovf.iso", {"ovf-env.xml": "<Environment/>\n"})
    m = Machine(MachineConfig(image_dir=base, disk=agent, work=work, cpus=2, vm_uuid=vm_id, dvd=dvd,
                              resource_disk=devices.make_resource_disk(work / "res.img", 256), timeout=300))
    try:
        m.boot()
        assert m.read("/sys/class/dmi/id/product_uuid").decode().strip() == vm_id
        assert m.read("/sys/class/dmi/id/chassis_asset_tag").decode().strip() == net.ASSET_TAG
        assert m.read("/sys/class/dmi/id/sys_vendor").decode().strip() == "Microsoft Corporation"
        # endpoint discovery step 1: the WireServer route is in /proc/net/route (once networkd is up:
        # the control channel answers earlier in boot)
        m.wait_for("the route to 168.63.129.16", lambda: "10813FA8" in m.read("/proc/net/route").decode(), 120, 1)
        # the provisioning DVD and the NTFS resource disk, where the agent looks for them
        assert m.run(["blkid", "-o", "value", "-s", "TYPE", "/dev/sr0"]).out.strip() == "udf"
        # (LUN 1, but not always sdb: SCSI probe order varies, as on Azure)
        res = m.run("readlink -f /dev/disk/azure/resource").out.strip()
        assert res in ("/dev/sda", "/dev/sdb"), res
        assert m.run(["sfdisk", "--part-type", res, "1"]).out.strip() == "7"
        assert m.run(["blkid", "-o", "value", "-s", "TYPE", res + "1"]).out.strip() == "ntfs"
        assert m.run(["cat", f"/sys/block/{res[5:]}/device/vendor"]).out.strip() == "Msft"
        assert m.run(["cat", f"/sys/block/{res[5:]}/device/model"]).out.strip() == "Virtual Disk"
        # the agent: installed from its .deb with apt, its unit enabled by the package
        assert m.run("/usr/sbin/waagent -version").out.startswith("WALinuxAgent-2.15.0.1")
        assert m.run("python3 -c 'import guestagent, os; print(os.path.dirname(guestagent.__file__))'").out.strip() \
            == "/usr/lib/python3/dist-packages/guestagent"
        assert m.run(["dpkg-query", "-W", "-f=${Status}", "guestagent"]).out == "install ok installed"
        for path in ("/lib/udev/rules.d/66-azure-storage.rules", "/lib/udev/rules.d/99-azure-product-uuid.rules",
                     "/etc/logrotate.d/waagent"):
            assert m.run(["dpkg", "-S", path]).out.startswith("guestagent: "), path
        assert m.run(["systemctl", "is-enabled", "walinuxagent.service"]).out.strip() == "enabled"
        unit = m.run(["systemctl", "show", "-p", "ExecStart", "-p", "Slice", "walinuxagent.service"]).out
        assert "/usr/bin/python3 -u /usr/sbin/waagent -daemon" in unit and "Slice=azure.slice" in unit
        # the agent started at boot under systemd (whatever it managed to do without a fabric)
        m.wait_for("the agent daemon", lambda: m.run(["pgrep", "-f", "waagent -daemon"], check=False).rc == 0, 60)
        # nothing outside the forwarded addresses is reachable (slirp restrict=on)
        probe = "import socket; socket.create_connection(('168.63.129.1', 22), timeout=3)"
        assert m.run(["python3", "-c", probe], check=False).rc != 0
        m.poweroff()
        assert not m.alive()
    finally:
        m.destroy()
        if m.console.exists():
            print(m.console_tail(30))
