"""One emulated Azure VM: the fabric on host loopback, its devices, and the QEMU guest.

The guest sees the platform at Azure's addresses: WireServer 168.63.129.16:80, HostGAPlugin :32526,
IMDS 169.254.169.254:80; QEMU forwards each guest connection to this VM's own fabric ports on
127.0.0.1. The fabric builds document and blob URLs from the request's Host (168.63.129.16) and its
own port numbers, so those ports are forwarded on 168.63.129.16 as well. The agent finds the WireServer through the
/32 route in /proc/net/route (QEMU's DHCP has no option 245).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from . import devices, net
from .image import REPO
from .machine import Forward, Machine, MachineConfig

SAMPLE_HANDLER = REPO / "guestagent/fabric/scenarios/handlers/sample"

# the tier's agent configuration: the project's stock conf plus what this platform needs
BASE_CONF = {
    "Logs.Verbose": "y",
    "ResourceDisk.Format": "y",
    "ResourceDisk.Filesystem": "ext4",
}


def start_fabric(scenario, state_dir: Path):
    """The fabric for one VM on host loopback, on ephemeral ports."""
    from guestagent.fabric.server import Fabric

    fab = Fabric(scenario, host="127.0.0.1", wire_port=0, hgap_port=0, imds_port=0, storage_port=0,
                 state_dir=state_dir)
    fab.start()
    return fab


class AzureVM:
    def __init__(self, work: Path, images: tuple, scenario: Optional[dict] = None, conf: Optional[dict] = None,
                 cpus: int = 1, timeout: float = 900, resource_disk_mb: int = 1024, kvp: bool = False,
                 os_release: Optional[str] = None):
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.base, self.agent_disk = images
        self.conf = dict(BASE_CONF, **(conf or {}))
        self.cpus, self.timeout, self.resource_disk_mb = cpus, timeout, resource_disk_mb
        # kvp: the guest setup creates /var/lib/hyperv before the agent starts (the KVP daemon's folder
        # on Azure; without it the agent writes no KVP report)
        self.kvp = kvp
        # os_release: the text of /etc/os-release for this boot (written before the agent starts): Debian
        # running another family's network stack, named as that family
        self.os_release = os_release
        self.fabric = None
        self.machine: Optional[Machine] = None
        self.ready_seconds: Optional[float] = None   # qemu start → the fabric saw Ready (last boot)
        self.claim_to_ready: Optional[float] = None  # a pooled VM: the claim → the customer's Ready
        self.ssh_key = self.work / "id_ed25519"
        if not self.ssh_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vmtier", "-f", str(self.ssh_key)],
                           check=True)
        self.scenario_dict = scenario if scenario is not None else default_scenario(self)

    @property
    def ssh_public_key(self) -> str:
        return Path(str(self.ssh_key) + ".pub").read_text().strip()

    def load_scenario(self, data: dict):
        from guestagent.fabric.scenario import parse_scenario

        (self.work / "scenario.json").write_text(json.dumps(data, indent=2))
        return parse_scenario(data, base_dir=self.work, origin=str(self.work / "scenario.json"))

    def make_dvd(self, scenario) -> Path:
        from guestagent.fabric.ovf import build_ovf_env

        self.dvd_count = getattr(self, "dvd_count", 0) + 1
        return devices.make_dvd(self.work / f"ovf-{self.dvd_count}.iso", {"ovf-env.xml": build_ovf_env(scenario)})

    def _forwards(self) -> list:
        f = self.fabric
        return [Forward(net.WIRESERVER, 80, f.wire_port, "wire"),
                Forward(net.WIRESERVER, net.HGAP_PORT, f.hgap_port, "hgap"),
                Forward(net.IMDS, 80, f.imds_port, "imds"),
                # the fabric writes the URLs of its documents and blobs with the host the request
                # named (168.63.129.16) and its own ports: forward those ports too
                Forward(net.WIRESERVER, f.wire_port, f.wire_port, "wire-docs"),
                Forward(net.WIRESERVER, f.storage_port, f.storage_port, "storage")]

    def start(self) -> AzureVM:
        """Start the fabric, make the devices, boot; returns once the guest's control channel answers
        (the agent is then starting under systemd, as on a new Azure VM)."""
        self.scenario = self.load_scenario(self.scenario_dict)
        self.fabric = start_fabric(self.scenario, self.work / "fabric")
        conf_file = self.work / "waagent.conf"
        conf_file.write_text(devices.waagent_conf((REPO / "config/waagent.conf").read_text(), self.conf))
        self.ssh_port = net.free_port()
        fw_cfg = {"waagent.conf": conf_file}
        if self.kvp:
            fw_cfg["kvp"] = self.work / "kvp"
            fw_cfg["kvp"].write_text("1\n")
        if self.os_release is not None:
            fw_cfg["os-release"] = self.work / "os-release"
            fw_cfg["os-release"].write_text(self.os_release)
        cfg = MachineConfig(image_dir=self.base, disk=self.agent_disk, work=self.work, cpus=self.cpus,
                            dvd=self.make_dvd(self.scenario),
                            resource_disk=devices.make_resource_disk(self.work / "resource.img",
                                                                     self.resource_disk_mb),
                            forwards=self._forwards(), ssh_port=self.ssh_port,
                            fw_cfg=fw_cfg, timeout=self.timeout)
        self.machine = Machine(cfg)
        self.t_start = time.monotonic()
        self.machine.boot()
        return self

    def boot_again(self, scenario_dict: Optional[dict] = None, new_vm_id: bool = False) -> str:
        """Start the powered-off VM again on the same disks. With a scenario: a new fabric and a new
        ovf-env on the DVD (an image captured after deprovisioning, deployed as a new VM)."""
        if scenario_dict is not None:
            self.fabric.stop()
            self.scenario_dict = scenario_dict
            self.scenario = self.load_scenario(scenario_dict)
            self.fabric = start_fabric(self.scenario, self.work / f"fabric-{self.machine.boots + 1}")
            self.machine.cfg.forwards = self._forwards()
            self.machine.cfg.dvd = self.make_dvd(self.scenario)
        if new_vm_id:
            self.machine.cfg.vm_uuid = str(uuid.uuid4())
        self.t_start = time.monotonic()
        return self.machine.boot()

    # --- observations -----------------------------------------------------------------------------
    def run(self, cmd, **kw):
        return self.machine.run(cmd, **kw)

    def agent_log(self) -> str:
        return self.machine.run("cat /var/log/waagent.log 2>/dev/null || true").out

    def exists(self, path: str) -> bool:
        return self.machine.run(["test", "-e", path], check=False).rc == 0

    def ready_reports(self) -> list:
        return [h for h in self.fabric.health_reports if h.get("state") == "Ready"]

    def wait_ready(self, timeout: float = 420) -> float:
        """Until the fabric has received a Ready health report; returns seconds since the first boot."""
        self.machine.wait_for("the agent's Ready health report", self.ready_reports, timeout, interval=2)
        self.ready_seconds = time.monotonic() - self.t_start
        return self.ready_seconds

    def wait_provisioned(self, timeout: float = 420) -> None:
        self.machine.wait_for("/var/lib/waagent/provisioned", lambda: self.exists("/var/lib/waagent/provisioned"),
                              timeout, interval=3)

    def ssh(self, user: str, command: str, timeout: float = 90) -> subprocess.CompletedProcess:
        """A real ssh login through the forwarded port, with the key the ovf-env gave the user."""
        argv = ["ssh", "-i", str(self.ssh_key), "-p", str(self.ssh_port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={self.work / 'known_hosts'}",
                "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR", f"{user}@127.0.0.1", command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def process_pids(self, pattern: str) -> list:
        res = self.machine.run(["pgrep", "-f", pattern], check=False)
        return [int(p) for p in res.out.split()]

    # --- teardown ---------------------------------------------------------------------------------
    def close(self, failed: bool) -> str:
        """Collect the guest's logs, stop everything; on failure keep the work folder and return a
        report (console tail, agent log tail, fabric requests) for the test output."""
        report = ""
        m = self.machine
        if m is not None:
            m.collect(self.work / "collected", files=("/var/log/waagent.log", "/etc/waagent.conf"))
            try:
                m.poweroff(timeout=60)
            except Exception:
                pass
            m.destroy()
        if self.fabric is not None:
            try:
                self.fabric.stop()
            except Exception:
                pass
        if failed:
            report = self.failure_report()
        elif m is not None:
            m.remove_disks()
        return report

    def failure_report(self) -> str:
        parts = [f"VM work folder kept: {self.work}"]
        if self.machine:
            parts.append("--- console (tail) ---\n" + self.machine.console_tail(60))
            if self.machine.timed_out:
                parts.append(f"--- the VM hit its {self.timeout:.0f}s timeout and was killed ---")
        log = self.work / "collected" / "waagent.log"
        if log.exists():
            parts.append("--- /var/log/waagent.log (tail) ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-60:]))
        for state in sorted(self.work.glob("fabric*/requests.jsonl")):
            lines = state.read_text(errors="replace").splitlines()[-60:]
            reqs = []
            for line in lines:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                reqs.append(f"{r.get('time', '')} {r.get('method', '')} {r.get('kind', '')} {r.get('path', '')} "
                            f"-> {r.get('status', '')}")
            parts.append(f"--- {state.parent.name}: requests (last 60) ---\n" + "\n".join(reqs))
        if not list(self.work.glob("fabric*/requests.jsonl")):
            parts.append("--- fabric: no request log (the guest never reached the fabric) ---")
        return "\n".join(parts)

    def remove(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def default_scenario(vm: Any = None, *, hostname: str = "vmtier-vm", user: str = "azureuser",
                     password: str = "VmTier-Passw0rd!", extensions: bool = False) -> dict:
    """A scenario for the tier: the user gets the tier's ssh key (by value), a password, a hostname."""
    ovf: dict = {"hostname": hostname, "username": user, "password": password,
                 "disable_ssh_password_auth": True, "provision_guest_agent": True}
    if vm is not None:
        ovf["ssh_public_keys"] = [{"path": f"/home/{user}/.ssh/authorized_keys", "value": vm.ssh_public_key}]
    step: dict = {"extensions": []}
    data: dict = {"name": "vmtier", "ovf": ovf, "steps": [step]}
    if extensions:
        data["handlers"] = [{"name": "GuestAgent.Fabric.Sample", "version": "1.0.0", "path": str(SAMPLE_HANDLER)}]
        step["extensions"] = [{"name": "GuestAgent.Fabric.Sample", "version": "1.0.0", "seqNo": 0,
                               "settings": {"message": "hello from the VM tier"},
                               "protected_settings": {"secret": "vmtier-protected-value"}}]
    return data
