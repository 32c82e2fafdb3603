"""``guestagent lab``: the real daemon against the fabric emulator in a throwaway sandbox (root only).

Inside one :class:`~guestagent.lab.sandbox.Sandbox`: the fabric listens on 127.63.129.16 (WireServer
:80, HostGAPlugin :32526) and 169.254.169.254:80 (IMDS); a dhclient lease carries option 245 so the
agent finds the endpoint through its real discovery path; the OVF DVD is a loop device at /dev/sr0;
then ``waagent -daemon`` runs as it would under systemd. The lab prints a timeline, walks the
scenario's goal-state steps, and ends with what changed. The host is untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from guestagent.fabric.scenario import builtin_scenarios
from guestagent.lab import doctorfaults, resourcedisk
from guestagent.lab import summary as summ
from guestagent.lab.image import (
    IMDS_HOST,
    SSHD_CONFIG,
    WIRE_HOST,
    LabOptionError,
    LabOptions,
    adapt_conf,
    conf_settings,
    firewall_tool,
    install_standins,
    lease_file,
    load_lab_scenario,
    networkd_lease,
    standin_calls,
)
from guestagent.lab.sandbox import (
    Sandbox,
    SandboxError,
    SandboxUnavailable,
    build_image,
    interpreter,
    project_root,
)
from guestagent.lab.timeline import (
    FileFollower,
    Timeline,
    classify_log_line,
    describe_health,
    describe_request,
)

LAB_RUN = "/run/guestagent-lab"          # tmpfs inside: fabric state, events, daemon output
IMAGE_HOSTNAME = "lab-image"
UNTIL = ("ready", "status", "extensions")
RESOURCE_DISK_TOOLS = ("sfdisk", "mkfs.ntfs")  # util-linux, ntfs-3g: to build Azure's NTFS-formatted disk


class LabFailure(Exception):
    """The run failed; the message is the reason shown to the user."""


class Lab:
    def __init__(self, scenario: str, *, keep: bool = False, timeout: float = 300.0, until: str = "extensions",
                 verbose: bool = False, out: Any = None, resource_disk_mb: Optional[int] = None,
                 swap_mb: Optional[int] = None, doctor: bool = False, fault: Optional[str] = None,
                 claim_after: Optional[float] = 1.0, claims: int = 1, pool_timeout: int = 0,
                 restart_in_pool: bool = False):
        self.scenario_arg = scenario
        #: Run `guestagent doctor` inside once the run succeeded, after injecting ``fault`` (if any).
        self.doctor = doctor or fault is not None
        self.fault = fault
        self.resource_disk_mb = resource_disk_mb   # None: the scenario's "lab" object, else the default
        self.swap_mb = swap_mb
        self.keep = keep
        self.timeout = timeout
        self.until = until
        self.verbose = verbose
        self.out = out if out is not None else sys.stdout
        self.tl = Timeline(out=self.out)
        self.sb: Optional[Sandbox] = None
        self.health: list[dict] = []
        self.status: Optional[summ.VmStatus] = None
        self.status_count = 0
        self.requests: dict[str, int] = {}
        self.telemetry: list[dict] = []
        self.healthservice: list[dict] = []
        self.vm_agent_logs: list[dict] = []
        self.options = LabOptions()
        self.daemon_env: dict[str, str] = {}
        self.settings: dict[str, str] = {}
        self.firewall: Optional[str] = None
        self.step = 0
        self.step_started = 0        # status uploads seen when the current step began
        self.result = ""
        # A pre-provisioning pool scenario: claim ``claim_after`` s after the VM waits in the pool (None:
        # never); ``claims`` > 1 claims again once Ready; the daemon may be restarted while it waits.
        self.claim_after = claim_after
        self.claims = claims
        self.pool_timeout = pool_timeout
        self.restart_in_pool = restart_in_pool
        self.pool = False
        self.pool_waiting: Optional[float] = None   # monotonic time the daemon was seen waiting in the pool
        self.restarted = False
        self.claims_made = 0
        self.claimed_at: Optional[float] = None      # wall time the lab's claim began (network move)
        self.claim_to_ready: Optional[float] = None
        self.claim_events: list[dict] = []
        self.stayed_in_pool = False

    def say(self, text: str) -> None:
        self.tl.add("lab", text)

    # -- set-up ---------------------------------------------------------------------------------
    def _load_scenario(self) -> Any:
        try:
            scenario, options = load_lab_scenario(self.scenario_arg)
        except ImportError as e:
            raise LabFailure(f"the fabric emulator is not available ({e})")
        if self.resource_disk_mb is not None:
            options.resource_disk_mb = self.resource_disk_mb
        if self.swap_mb is not None:
            options.swap_mb = self.swap_mb
        try:
            self.options = options.validate()
        except LabOptionError as e:
            raise LabFailure(str(e))
        return scenario

    def _make_visible(self, sb: Sandbox, scenario: Any) -> str:
        """Copy the scenario and its handler folders in when the sandbox cannot see them (e.g. under /tmp)."""
        src = Path(scenario.source).resolve() if scenario.source else None
        for p in [src] + [Path(h.path) for h in scenario.handlers]:
            if p is None or sb.host_path(p).exists():
                continue
            target = sb.host_path(p)
            if p.is_dir():
                shutil.copytree(p, target, symlinks=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(p, target)
        return str(src) if src else self.scenario_arg

    def _prepare(self, sb: Sandbox, scenario: Any, workdir: Path) -> None:
        # A pristine image: no agent state (the host's, seen through the overlay, is hidden, not touched).
        sb.run(["rm", "-rf", "/var/lib/waagent", "/var/log/waagent.log", "/var/log/azure", "/var/lib/dhcp",
                "/var/lib/dhclient", "/etc/waagent.conf"])
        self.daemon_env = install_standins(sb)
        disk = self._attach_resource_disk(sb, workdir)
        self.firewall = firewall_tool()
        base = project_root() / "config" / "waagent.conf"
        text = base.read_text(encoding="utf-8") if base.is_file() else ""
        provisions = bool(getattr(scenario.ovf, "provision_guest_agent", True))
        self.settings = conf_settings(provisions=provisions, verbose=self.verbose, resource_disk=disk,
                                      swap_mb=self.options.swap_mb if disk else 0, firewall=bool(self.firewall))
        sb.write_file("/etc/waagent.conf", adapt_conf(text, self.settings))
        sb.write_file("/var/lib/dhcp/dhclient.eth0.leases", lease_file(WIRE_HOST))
        sb.write_file("/run/systemd/netif/leases/2", networkd_lease(WIRE_HOST))
        sb.run(["mkdir", "-p", f"{LAB_RUN}/fabric", f"{LAB_RUN}/tenant"])
        if not sb.host_path("/etc/ssh/sshd_config").exists():
            # A VM image has openssh-server; this host may not. Give the image its stock config.
            sb.write_file("/etc/ssh/sshd_config", SSHD_CONFIG)
            self.say("image has no /etc/ssh/sshd_config: wrote a stock one (openssh-server not on this host)")
        if self.pool and self.pool_timeout:
            self.settings["Debug.PreprovisionedPoolTimeout"] = str(self.pool_timeout)
            sb.write_file("/etc/waagent.conf", adapt_conf(text, self.settings))
        if not self.firewall:
            self.say("neither iptables nor nft on this host: OS.EnableFirewall=n")
        shown = ("Provisioning.Agent", "ResourceDisk.Format", "ResourceDisk.EnableSwap", "ResourceDisk.SwapSizeMB",
                 "OS.EnableFirewall")
        self.say("sandbox ready: /etc/waagent.conf ("
                 + ", ".join(f"{k}={self.settings[k]}" for k in shown if k in self.settings)
                 + f"), DHCP lease with option 245 = {WIRE_HOST}")

    def _attach_resource_disk(self, sb: Sandbox, workdir: Path) -> Optional[dict[str, str]]:
        """Azure's resource disk (MBR, NTFS "Temporary Storage") at /dev/sdb; the waagent.conf keys for it,
        or None when the scenario has none or this host cannot build one."""
        size = self.options.resource_disk_mb
        if not size:
            return None
        missing = [t for t in RESOURCE_DISK_TOOLS if not shutil.which(t)]
        if missing:
            self.say(f"no resource disk: {', '.join(missing)} not installed on this host (apt: fdisk ntfs-3g); "
                     "ResourceDisk.Format=n")
            return None
        self.daemon_env.update(resourcedisk.attach_resource_disk(sb, workdir, size))
        self.say(f"resource disk attached: /dev/sdb + /dev/sdb1 ({size} MiB, MBR with one NTFS partition "
                 "'Temporary Storage', as Azure hands it out); swapon/swapoff are stand-ins (swap is kernel-wide)")
        return dict(resourcedisk.SETTINGS)

    def _start_fabric(self, sb: Sandbox, scenario_path: str, with_ovf: bool) -> FileFollower:
        cfg = {"run": LAB_RUN, "scenario": scenario_path, "host": WIRE_HOST, "imds_host": IMDS_HOST, "ovf": with_ovf}
        err = open(sb.host_path(f"{LAB_RUN}/fabric.err"), "wb")
        self.fabric = sb.spawn([interpreter(), "-u", "-m", "guestagent.lab.fabricdriver", json.dumps(cfg)],
                               stdout=err, stderr=err)
        err.close()
        events = FileFollower(lambda: sb.host_path(f"{LAB_RUN}/fabric-events.jsonl"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in events.read_lines():
                ev = json.loads(line)
                if ev["type"] == "started":
                    d = ev["data"]
                    self.say(f"fabric listening: WireServer {WIRE_HOST}:{d['wire']}, HostGAPlugin :{d['hgap']}, "
                             f"IMDS {IMDS_HOST}:{d['imds']}, storage :{d['storage']}")
                    return events
            if self.fabric.poll() is not None:
                raise LabFailure("the fabric emulator did not start:\n" + self._tail(f"{LAB_RUN}/fabric.err", 15))
            time.sleep(0.05)
        raise LabFailure("the fabric emulator did not start within 60 s")

    def _attach_dvd(self, sb: Sandbox, workdir: Path) -> None:
        ovf = sb.host_path(f"{LAB_RUN}/ovf-env.xml")
        fs = "ext4"  # the kernel may lack udf/iso9660; the agent's mount falls back to auto-detection
        image = build_image(workdir / "dvd.img", {"ovf-env.xml": ovf.read_bytes()}, fstype=fs, label="CDROM")
        loop = sb.attach_image(image, device="/dev/sr0")
        self.say(f"OVF DVD attached: {loop} -> /dev/sr0 ({fs}, ovf-env.xml {ovf.stat().st_size} bytes)")

    def _start_daemon(self, sb: Sandbox) -> None:
        out = open(sb.host_path(f"{LAB_RUN}/daemon.out"), "wb")
        self.daemon = sb.spawn([interpreter(), "-u", "-m", "guestagent.cli", "-daemon"], env=self.daemon_env or None,
                               stdout=out, stderr=out)
        out.close()
        self.say("started: waagent -daemon")

    # -- following --------------------------------------------------------------------------------
    def _on_fabric_event(self, ev: dict, scenario: Any) -> None:
        kind, data = ev.get("type"), ev.get("data") or {}
        if kind == "request":
            self.requests[str(data.get("kind"))] = self.requests.get(str(data.get("kind")), 0) + 1
            text = describe_request(data, self._seen)
            if text:
                self.tl.add("fabric", text)
        elif kind == "health":
            self.health.append(data)
            self.tl.add("fabric", describe_health(data))
        elif kind == "status":
            self.status = summ.parse_status(data)
            self.status_count += 1
            exts = ", ".join(f"{e.handler} {e.version} {e.status or e.handler_status}" for e in self.status.extensions)
            self.tl.add("fabric", f"status uploaded: agent {self.status.agent_status}"
                                  + (f"; {exts}" if exts else ""))
        elif kind == "telemetry":
            self.telemetry.append(data)
            if summ.is_failure(data):
                self.tl.add("fabric", "event: " + summ.describe_failure(data).split(" ", 1)[1])
        elif kind == "healthservice":
            self.healthservice.append(data)
        elif kind == "vmagentlog":
            self.vm_agent_logs.append(data)
            self.tl.add("fabric", f"collected logs uploaded ({data.get('size')} bytes)")
        elif kind == "advanced":
            self.say(f"fabric moved to step {data.get('step', 0) + 1} of {len(scenario.steps)}")
        elif kind == "claimed":
            self.claim_events.append(data)
            if data.get("error"):
                self.tl.add("fabric", f"claim {data.get('number')} refused: {data['error']}")
            else:
                self.claimed_at = float(data["at"])
                self.tl.add("fabric", f"claim: a customer claims the pooled VM ({data.get('type')}); network move: "
                                      f"{data.get('move')}; IMDS reprovisiondata now answers")
        if kind == "health" and data.get("substatus") == "ProvisioningFailed" and self.claimed_at is not None:
            raise LabFailure(f"provisioning failed after the claim: {data.get('description')}")
        if kind == "health" and data.get("state") == "Ready" and self.claimed_at is not None \
                and self.claim_to_ready is None:
            at = summ.parse_time(str(data.get("time", "")))
            if at is not None and at >= self.claimed_at:
                self.claim_to_ready = at - self.claimed_at
                self.say(f"claim -> Ready with the customer's provisioning: {self.claim_to_ready:.2f} s")

    def _on_agent_line(self, sb: Sandbox, text: str) -> None:
        """Pool scenarios: notice the daemon waiting in the pool (or giving up on it)."""
        if text.startswith(("pool: waiting for", "pool: restarted in the pool", "IMDS reprovisiondata attempt")):
            if self.pool_waiting is None:
                self.pool_waiting = time.monotonic()
        elif text.startswith("Still in the pre-provisioning pool") and "(Debug.PreprovisionedPoolTimeout)" in text:
            self.stayed_in_pool = True

    def _pool_step(self, sb: Sandbox) -> None:
        """Restart the daemon mid-wait, or claim the VM, when their time has come."""
        if self.pool_waiting is None or time.monotonic() - self.pool_waiting < (self.claim_after or 0.0):
            return
        if self.restart_in_pool and not self.restarted:
            self.restarted = True
            self.pool_waiting = None
            self.daemon.terminate()
            self.daemon.wait(30)
            self.say("daemon stopped while waiting in the pool (a reboot in the pool); starting it again")
            self._start_daemon(sb)
            return
        if self.claim_after is not None and self.claims_made == 0:
            self.claims_made = 1
            self.say("the platform claims the VM for a customer")
            sb.write_file(f"{LAB_RUN}/claim", "1")
        elif self.claims_made < self.claims and self.claim_to_ready is not None:
            self.claims_made += 1
            self.say(f"claim {self.claims_made}: the platform claims the VM again")
            sb.write_file(f"{LAB_RUN}/claim", str(self.claims_made))

    def _done(self, sb: Sandbox, scenario: Any) -> bool:
        if self.pool:
            if self.claim_after is None:
                return self.stayed_in_pool
            if self.claim_to_ready is None or len(self.claim_events) < self.claims:
                return False
        if self.until == "ready":
            return any(h.get("state") == "Ready" for h in self.health)
        if self.status is None or self.status.agent_status != "Ready":
            return False
        if self.until == "status":
            return True
        step = scenario.steps[self.step]
        if summ.expected_extensions(step):
            ok, why = summ.extensions_done(self.status, step)
            self._why = why
            if not ok:
                return False
        elif self.status_count <= self.step_started:
            return False
        if self.step + 1 < len(scenario.steps):
            self.step += 1
            self.step_started = self.status_count
            self.say(f"step {self.step} done; asking the fabric for the next goal state")
            sb.write_file(f"{LAB_RUN}/step", str(self.step))
            return False
        return True

    def _tail(self, path: str, n: int) -> str:
        try:
            lines = self.sb.read_text(path).splitlines() if self.sb else []
        except OSError:
            return "  (not found)"
        return "\n".join("  " + line for line in lines[-n:]) or "  (empty)"

    # -- the run ----------------------------------------------------------------------------------
    def run(self) -> int:
        t0 = time.monotonic()
        self._seen: set = set()
        self._why = ""
        workdir = Path(tempfile.mkdtemp(prefix="guestagent-lab-"))
        ok = False
        passwd_before = ""
        try:
            scenario = self._load_scenario()
            self.pool = scenario.pps is not None
            self.say(f"scenario {scenario.name!r}: {len(scenario.steps)} goal-state step(s); until {self.until}")
            self.sb = sb = Sandbox(hostname=IMAGE_HOSTNAME, loopback_addrs=(WIRE_HOST, IMDS_HOST))
            self.say(f"sandbox created in {sb.startup_seconds:.2f}s (init pid {sb.init_pid})")
            passwd_before = sb.read_text("/etc/passwd")
            scenario_path = self._make_visible(sb, scenario)
            self._prepare(sb, scenario, workdir)
            with_ovf = bool(getattr(scenario.ovf, "provision_guest_agent", True))
            events = self._start_fabric(sb, scenario_path, with_ovf)
            if with_ovf:
                self._attach_dvd(sb, workdir)
            self._start_daemon(sb)
            agent_log = FileFollower(lambda: sb.host_path("/var/log/waagent.log"))
            deadline = time.monotonic() + self.timeout
            while True:
                for line in agent_log.read_lines():
                    text = classify_log_line(line)
                    if text:
                        self.tl.add("agent", text)
                        self._on_agent_line(sb, text)
                for line in events.read_lines():
                    self._on_fabric_event(json.loads(line), scenario)
                if self.pool:
                    self._pool_step(sb)
                if self._done(sb, scenario):
                    ok = True
                    self.result = ("success: stayed in the pool (no claim)" if self.pool and self.claim_after is None
                                   else f"success: {self.until} reached")
                    if self.doctor:
                        self._run_doctor(sb)
                    break
                if self.daemon.poll() is not None:
                    raise LabFailure(f"the daemon exited with code {self.daemon.returncode}")
                if self.fabric.poll() is not None:
                    raise LabFailure("the fabric emulator stopped:\n" + self._tail(f"{LAB_RUN}/fabric.err", 15))
                if time.monotonic() > deadline:
                    raise LabFailure(f"timed out after {self.timeout:.0f} s waiting for {self.until}"
                                     + (f" ({self._why})" if self._why else ""))
                time.sleep(0.2)
        except SandboxUnavailable:
            raise
        except (LabFailure, SandboxError) as e:
            self.result = f"FAILED: {e}"
        except Exception as e:  # a scenario error or a bug: still summarise and clean up
            self.result = f"FAILED: {type(e).__name__}: {e}"
        try:
            if self.sb is not None:
                self._summarise(self.sb, passwd_before)
                if self.pool:
                    print(self._pool_summary(), file=self.out, flush=True)
                if not ok:
                    print("\nlast lines of /var/log/waagent.log:\n" + self._tail("/var/log/waagent.log", 30),
                          file=self.out)
                    print("\ndaemon stdout/stderr:\n" + self._tail(f"{LAB_RUN}/daemon.out", 15), file=self.out)
            print(f"\nlab {self.result} (wall time {time.monotonic() - t0:.1f} s)", file=self.out, flush=True)
            if self.keep and self.sb is not None:
                self._keep(self.sb)
        finally:
            if self.sb is not None and not self.keep:
                self.sb.close()
            shutil.rmtree(workdir, ignore_errors=True)
        return 0 if ok else 1

    def _run_doctor(self, sb: Sandbox) -> None:
        """`guestagent doctor` inside the sandbox (after the fault, if one was asked for); its report printed."""
        code, output = doctorfaults.run_doctor(sb, interpreter(), self.fault, WIRE_HOST, self.firewall)
        what = f"after fault {self.fault!r}" if self.fault else "on the healthy sandbox"
        print(f"\nguestagent doctor {what} (exit {code}):\n{output}", file=self.out, flush=True)
        self.result += f"; doctor exit {code}"

    def _summarise(self, sb: Sandbox, passwd_before: str) -> None:
        changes = summ.agent_changes(sb.change_set())
        lib = []
        root = sb.host_path("/var/lib/waagent")
        if root.is_dir():
            for dirpath, _dirs, files in os.walk(root):
                for name in sorted(files):
                    p = Path(dirpath) / name
                    st = p.lstat()
                    lib.append(("/var/lib/waagent/" + str(p.relative_to(root)), st.st_mode & 0o7777, st.st_size))
        try:
            host_after = sb.run(["hostname"], check=False).stdout.strip()
        except Exception:
            host_after = "?"
        print(summ.format_summary(
            changes=changes, users=summ.users_added(passwd_before, sb.read_text("/etc/passwd")),
            hostname=(IMAGE_HOSTNAME, host_after), health=self.health, status=self.status,
            requests=self.requests, lib_files=sorted(lib), platform=self._platform_lines(sb),
            reported=summ.telemetry_lines(self.telemetry, self.healthservice, self.vm_agent_logs,
                                          summ.queued_events(sb.host_path("/var/lib/waagent/events").glob("*.tld")))),
            file=self.out, flush=True)

    def _pool_summary(self) -> str:
        figure = f"{self.claim_to_ready:.2f} s" if self.claim_to_ready is not None else "not reached"
        lines = [f"pre-provisioning pool: claim -> Ready with the customer's provisioning: {figure}"]
        for c in self.claim_events:
            lines.append(f"  claim {c.get('number')}: " + (f"refused ({c['error']})" if c.get("error")
                                                            else f"{c.get('type')}, network move: {c.get('move')}"))
        if self.stayed_in_pool:
            lines.append("  no claim came: the agent gave up waiting (Debug.PreprovisionedPoolTimeout) and the VM "
                         "stays a pool member (reported_ready kept, not provisioned)")
        return "\n".join(lines)

    def _platform_lines(self, sb: Sandbox) -> list[str]:
        out = []
        if self.settings.get("ResourceDisk.Format") == "y":
            mount_point = self.settings.get("ResourceDisk.MountPoint", "/mnt/resource")
            out.extend(resourcedisk.summary(sb, mount_point))
            if self.settings.get("ResourceDisk.EnableSwap") == "y":
                out.append("  (swap is one table for the whole kernel: a real swapon here would add swap to the "
                           "host, so swapon/swapoff in the sandbox only record their calls; real swap is the VM "
                           "tier's)")
        else:
            out.append("resource disk: none (ResourceDisk.Format=n)")
        if self.firewall:
            argv = (["iptables", "-w", "-t", "security", "-S", "OUTPUT"] if self.firewall == "iptables"
                    else ["nft", "list", "table", "ip", "walinuxagent"])
            try:
                res = sb.run(argv, check=False, timeout=20)
                rules = [line for line in res.stdout.splitlines() if WIRE_HOST in line]
            except Exception as e:
                rules, res = [], None
                out.append(f"firewall: cannot list the rules ({e})")
            out.append(f"firewall ({' '.join(argv)}): " + (f"{len(rules)} rule(s) for {WIRE_HOST}" if rules
                                                           else "no rules for the WireServer"))
            out.extend(f"  {r.strip()}" for r in rules)
        else:
            out.append("firewall: not enabled (no iptables or nft on this host)")
        calls = standin_calls(sb)
        out.append("interface restart to publish the hostname: " + (", ".join(calls) if calls else "none")
                   + " (ifdown/ifup are stand-ins that record the call: no DHCP server in the sandbox)")
        return out

    def _keep(self, sb: Sandbox) -> None:
        enter = " ".join(sb.enter_argv()[:-1])
        sb.keep()
        print(f"""
the sandbox keeps running (keeper pid {sb.keeper_pid}, init pid {sb.init_pid}):
  look inside:   {enter} /bin/bash
  agent log:     /proc/{sb.init_pid}/root/var/log/waagent.log
  fabric state:  /proc/{sb.init_pid}/root{LAB_RUN}/fabric   (events: {LAB_RUN}/fabric-events.jsonl)
  stop it:       kill {sb.keeper_pid}""", file=self.out, flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="guestagent lab", description=__doc__.split("\n")[0],
                                epilog="built-in scenarios: " + ", ".join(builtin_scenarios()))
    p.add_argument("--scenario", default="default",
                   help="scenario file or built-in name (default: default; built-in: "
                        + ", ".join(builtin_scenarios()) + ")")
    p.add_argument("--keep", action="store_true", help="leave the sandbox running and print how to look inside")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the expected state")
    p.add_argument("--until", choices=UNTIL, default="extensions",
                   help="ready: Ready health report; status: a Ready status upload; extensions: every "
                        "scenario step applied with all extensions succeeded (default)")
    p.add_argument("--verbose", action="store_true", help="run the agent with Logs.Verbose=y")
    p.add_argument("--resource-disk-mb", type=int, default=None, metavar="N",
                   help="size of the resource disk at /dev/sdb; 0: none (default: the scenario's lab.resource_disk_mb, "
                        "else 96)")
    p.add_argument("--swap-mb", type=int, default=None, metavar="N",
                   help="ResourceDisk.EnableSwap=y with SwapSizeMB=N on the resource disk; 0: no swap (default: the "
                        "scenario's lab.swap_mb, else 0)")
    p.add_argument("--doctor", action="store_true", help="run `guestagent doctor` inside once the run succeeded")
    p.add_argument("--fault", choices=doctorfaults.FAULTS, metavar="NAME",
                   help="inject a fault the doctor must name, then run it: " + ", ".join(doctorfaults.FAULTS))
    p.add_argument("--claim-after", type=float, default=1.0, metavar="S",
                   help="pool scenarios: claim the VM S seconds after it waits in the pool; negative: never "
                        "(default 1)")
    p.add_argument("--claims", type=int, default=1, metavar="N", help="pool scenarios: claim N times (default 1)")
    p.add_argument("--pool-timeout", type=int, default=0, metavar="S",
                   help="pool scenarios: Debug.PreprovisionedPoolTimeout for the agent (default 0: no bound)")
    p.add_argument("--restart-in-pool", action="store_true",
                   help="pool scenarios: restart the daemon while it waits in the pool (PPS type Unknown)")
    args = p.parse_args(list(argv) if argv is not None else None)
    if os.geteuid() != 0:
        print("guestagent lab needs root: it builds a namespace sandbox (mounts, loop devices, its own network); "
              "run it with sudo.", file=sys.stderr)
        return 2
    try:
        return Lab(args.scenario, keep=args.keep, timeout=args.timeout, until=args.until, verbose=args.verbose,
                   resource_disk_mb=args.resource_disk_mb, swap_mb=args.swap_mb, doctor=args.doctor,
                   fault=args.fault, claim_after=None if args.claim_after < 0 else args.claim_after,
                   claims=args.claims, pool_timeout=args.pool_timeout, restart_in_pool=args.restart_in_pool).run()
    except SandboxUnavailable as e:
        print(f"guestagent lab: {e}", file=sys.stderr)
        return 2
