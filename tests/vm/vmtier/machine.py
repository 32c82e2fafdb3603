"""One QEMU/TCG guest with Azure-like devices; the fabric is reached through slirp guestfwd rules.

Disks sit on one virtio-scsi controller, vendor "Msft" model "Virtual Disk" as on Azure: LUN 0 the
OS disk (a copy-on-write overlay, /dev/sda), LUN 1 the resource disk (/dev/sdb), LUN 2 the DVD
(/dev/sr0). SMBIOS carries the VM id (system UUID) and Azure's chassis asset tag. The serial console
goes to console.log (appended across boots); the control channel is a virtio-serial port. The NIC
(device ``nic0`` on netdev ``n0``, hot-pluggable on the PCI root bus through ACPI) and the machine itself
are driven through QEMU's monitor (QMP, :mod:`vmtier.monitor`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import net
from .control import Control, ControlError, Result
from .monitor import Monitor

#: the NIC's model; a scenario re-plugs it with ``device_add`` (driver=NIC_DEVICE, netdev=n0, id=nic0)
NIC_DEVICE = "virtio-net-pci"


class VMError(Exception):
    pass


@dataclass
class Forward:
    """guest_ip:guest_port (inside the slirp subnet) → host 127.0.0.1:host_port, one socat per connection."""
    guest_ip: str
    guest_port: int
    host_port: int
    name: str


@dataclass
class MachineConfig:
    image_dir: Path                      # kernel, initrd, cmdline (scripts/vm/build-image)
    disk: Path                           # the qcow2 the overlay is made on (base or agent layer)
    work: Path                           # per-VM folder: overlay, console.log, relay logs
    cpus: int = 1
    mem_mb: int = 1024
    vm_uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    dvd: Optional[Path] = None
    resource_disk: Optional[Path] = None
    forwards: list = field(default_factory=list)
    ssh_port: Optional[int] = None       # host 127.0.0.1:ssh_port → guest :22
    fw_cfg: dict = field(default_factory=dict)  # name → host file; guest /sys/firmware/qemu_fw_cfg/by_name/opt/vmtest/<name>
    timeout: float = 600                 # hard limit for the whole life of this VM (all boots)
    accel: str = os.environ.get("GUESTAGENT_VM_ACCEL", "tcg")


class Machine:
    """A guest: ``boot()`` starts QEMU (again after a power-off), ``run()``/``read()``/``write()``
    go through the control channel, ``reboot()`` and ``poweroff()`` are done from inside the guest."""

    def __init__(self, cfg: MachineConfig):
        self.cfg = cfg
        self.work = Path(cfg.work)
        self.work.mkdir(parents=True, exist_ok=True)
        if "," in str(self.work):
            raise VMError("the VM work folder must not contain a comma (QEMU option syntax)")
        self.console = self.work / "console.log"
        self.overlay = self.work / "os-disk.qcow2"
        self.proc: Optional[subprocess.Popen] = None
        self.ctl: Optional[Control] = None
        self.monitor: Optional[Monitor] = None
        self.boots = 0
        self._deadline = time.monotonic() + cfg.timeout
        self.timed_out = False
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        str(Path(cfg.disk).resolve()), str(self.overlay)], check=True)
        # a unix socket path has at most 107 bytes: keep it short, outside the work folder
        self.ctl_sock = Path(tempfile.mkdtemp(prefix="vmctl-", dir="/tmp")) / "ctl.sock"
        self.qmp_sock = self.ctl_sock.parent / "qmp.sock"

    # --- life cycle -------------------------------------------------------------------------------
    def argv(self) -> list:
        c, img = self.cfg, Path(self.cfg.image_dir)
        kernel = img / "vmlinux" if (img / "vmlinux").exists() else img / "vmlinuz"
        a = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
             "-machine", "pc", "-m", str(c.mem_mb), "-smp", str(c.cpus),
             "-kernel", str(kernel), "-initrd", str(img / "initrd.img"),
             "-append", (img / "cmdline").read_text().strip(),
             "-smbios", f"type=1,manufacturer=Microsoft Corporation,product=Virtual Machine,uuid={c.vm_uuid}",
             "-smbios", f"type=3,manufacturer=Microsoft Corporation,asset={net.ASSET_TAG}",
             "-device", "virtio-scsi-pci,id=scsi0",
             "-drive", f"file={self.overlay},if=none,id=os,format=qcow2,cache=unsafe",
             "-device", "scsi-hd,drive=os,bus=scsi0.0,channel=0,scsi-id=0,lun=0,vendor=Msft,"
                        "product=Virtual Disk,serial=os-disk",
             "-chardev", f"file,id=con,path={self.console},append=on", "-serial", "chardev:con",
             "-device", "virtio-serial-pci,id=vser0",
             "-chardev", f"socket,id=ctl,path={self.ctl_sock},server=on,wait=off",
             "-device", "virtserialport,bus=vser0.0,chardev=ctl,name=vmctl",
             "-chardev", f"socket,id=qmp,path={self.qmp_sock},server=on,wait=off",
             "-mon", "chardev=qmp,mode=control"]
        if c.accel == "kvm":
            a += ["-accel", "kvm", "-cpu", "host"]
        else:  # qemu64 boots ~15 % faster than "max" under TCG
            a += ["-accel", "tcg,thread=multi,tb-size=256", "-cpu", os.environ.get("GUESTAGENT_VM_CPU", "qemu64")]
        if c.resource_disk:
            a += ["-drive", f"file={c.resource_disk},if=none,id=res,format=raw,cache=unsafe",
                  "-device", "scsi-hd,drive=res,bus=scsi0.0,channel=0,scsi-id=0,lun=1,vendor=Msft,"
                             "product=Virtual Disk,serial=resource-disk"]
        if c.dvd:
            a += ["-drive", f"file={c.dvd},if=none,id=dvd,media=cdrom,readonly=on",
                  "-device", "scsi-cd,drive=dvd,bus=scsi0.0,channel=0,scsi-id=0,lun=2"]
        nd = (f"user,id=n0,restrict=on,net={net.NET},host={net.GATEWAY},dhcpstart={net.DHCP_START},"
              f"dns={net.DNS}")
        for f in c.forwards:
            # -cmd: one relay per guest connection; its stderr would reach the guest's TCP stream,
            # so socat logs to a file (-lf)
            nd += (f",guestfwd=tcp:{f.guest_ip}:{f.guest_port}-cmd:socat -lf {self.work}/relay-{f.name}.log"
                   f" - TCP:127.0.0.1:{f.host_port}")
        if c.ssh_port:
            nd += f",hostfwd=tcp:127.0.0.1:{c.ssh_port}-:22"
        a += ["-netdev", nd, "-device", f"{NIC_DEVICE},netdev=n0,id=nic0,romfile=,mac={net.GUEST_MAC}"]
        for name, path in c.fw_cfg.items():
            a += ["-fw_cfg", f"name=opt/vmtest/{name},file={path}"]
        return a

    def left(self) -> float:
        return self._deadline - time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def boot(self, timeout: float = 240) -> str:
        """Start QEMU and wait until the guest's control channel answers; returns the boot_id."""
        if self.alive():
            raise VMError("already running")
        self.ctl_sock.unlink(missing_ok=True)
        self.qmp_sock.unlink(missing_ok=True)
        if self.monitor:
            self.monitor.close()
        self.monitor = Monitor(self.qmp_sock)
        self.boots += 1
        with open(self.console, "ab") as con:
            con.write(f"\n===== vmtier: boot {self.boots} (qemu start) =====\n".encode())
        with open(self.work / f"qemu-{self.boots}.log", "wb") as qemu_log:  # QEMU keeps its own copy
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=qemu_log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self._started = time.monotonic()
        threading.Thread(target=self._watchdog, args=(self.proc,), daemon=True).start()
        self.ctl = Control(self.ctl_sock, self.alive)
        self.ctl.connect(timeout=30)
        try:
            boot_id = self.ctl.wait_boot(min(timeout, self.left()))
        except ControlError as e:
            raise VMError(f"{e}; qemu: {self._qemu_output()}") from None
        self.boot_seconds = time.monotonic() - self._started
        return boot_id

    def _watchdog(self, proc: subprocess.Popen) -> None:
        while proc.poll() is None:
            if self.left() <= 0:
                self.timed_out = True
                self._kill(proc)
                return
            time.sleep(1)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()

    def _qemu_output(self) -> str:
        try:
            return (self.work / f"qemu-{self.boots}.log").read_text(errors="replace").strip()[-2000:] or "(no output)"
        except OSError:
            return "(no output)"

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=min(timeout, max(self.left(), 1)))
        except subprocess.TimeoutExpired:
            raise VMError(f"guest did not power off within {timeout:.0f}s") from None

    def poweroff(self, timeout: float = 120) -> None:
        """Power off from inside the guest (clean shutdown: the journal and the disks are synced)."""
        if not self.alive():
            return
        self.ctl.run(["systemctl", "poweroff"], background=True)
        self.wait_exit(timeout)
        self.ctl.close()

    def reboot(self, timeout: float = 240) -> str:
        """Reboot from inside the guest (same QEMU, same devices); returns the new boot_id."""
        old = self.ctl.boot_id
        self.ctl.run(["systemctl", "reboot"], background=True)
        return self.ctl.wait_boot(min(timeout, self.left()), not_boot_id=old)

    def destroy(self) -> None:
        if self.proc and self.proc.poll() is None:
            self._kill(self.proc)
        if self.ctl:
            self.ctl.close()
        if self.monitor:
            self.monitor.close()
        shutil.rmtree(self.ctl_sock.parent, ignore_errors=True)

    # --- in the guest -----------------------------------------------------------------------------
    def run(self, cmd, timeout: float = 120, check: bool = True, **kw) -> Result:
        res = self.ctl.run(cmd, timeout=min(timeout, max(self.left(), 1)), **kw)
        if check and res.rc != 0:
            raise VMError(f"command failed in the guest:\n{res}")
        return res

    def read(self, path: str) -> bytes:
        return self.ctl.read(path)

    def write(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.ctl.write(path, data, mode)

    def wait_for(self, what: str, predicate, timeout: float, interval: float = 2.0):
        """Poll ``predicate()`` (host side, may use run()) until truthy; VMError naming ``what`` on timeout."""
        deadline = time.monotonic() + min(timeout, max(self.left(), 1))
        last = None
        while time.monotonic() < deadline:
            try:
                last = predicate()
            except ControlError:
                last = None
            if last:
                return last
            if not self.alive():
                raise VMError(f"QEMU exited while waiting for {what}")
            time.sleep(interval)
        raise VMError(f"timed out after {timeout:.0f}s waiting for {what}")

    def collect(self, dest: Path, files=("/var/log/waagent.log",)) -> None:
        """Copy the guest's agent log, journal and files of interest to ``dest`` (best effort)."""
        dest.mkdir(parents=True, exist_ok=True)
        if not self.alive():
            return
        try:
            (dest / "journal.txt").write_text(
                self.ctl.run("journalctl -b --no-pager -o short-monotonic", timeout=60).out)
            for f in files:
                try:
                    (dest / Path(f).name).write_bytes(self.ctl.read(f))
                except ControlError as e:
                    (dest / (Path(f).name + ".missing")).write_text(str(e))
        except ControlError:
            pass

    def console_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no console log)"

    def remove_disks(self) -> None:
        """Drop the big per-VM files (overlay) once a passing test no longer needs them."""
        for p in (self.overlay, self.cfg.resource_disk):
            if p and Path(p).exists() and Path(p).parent == self.work:
                Path(p).unlink()
        shutil.rmtree(self.work / "tmp", ignore_errors=True)
