"""Helpers for the cgroup scenarios (tests/vm/test_vm_cgroups.py): make the agent see an allow-listed
distribution, read the guest's cgroup v2 files and systemd properties, watch a short-lived scope.

Why the distribution claim: upstream 2.15 enables cgroups only on its allow-list (Ubuntu >= 16, CentOS/RHEL 8,
RHEL 9, Azure Linux 3) and has no configuration key to override it, so on the tier's Debian 12 both upstream
and this agent leave cgroups (and periodic log collection) off. The scenario tells the agent it runs on
Ubuntu 22.04 through the project's documented distribution override, ``GUESTAGENT_DISTRO`` (a systemd
drop-in on its unit), and restarts it — everything else (systemd 252, the kernel's unified hierarchy) is
the real guest.
"""

from __future__ import annotations

import json
from typing import Any, Optional

DISTRO_DROP_IN = "/etc/systemd/system/walinuxagent.service.d/90-vmtier-distro.conf"
CLAIMED_DISTRO = "ubuntu:22.04"
AGENT_UNIT = "walinuxagent.service"


def claim_supported_distro(vm: Any, distro: str = CLAIMED_DISTRO) -> None:
    """Drop-in ``Environment=GUESTAGENT_DISTRO=<distro>`` on the agent's unit and restart the agent."""
    vm.run(["mkdir", "-p", DISTRO_DROP_IN.rsplit("/", 1)[0]])
    vm.machine.write(DISTRO_DROP_IN, f"[Service]\nEnvironment=GUESTAGENT_DISTRO={distro}\n".encode())
    vm.run("systemctl daemon-reload && systemctl restart walinuxagent.service", timeout=180)


def enable_root_cpu_controller(vm: Any) -> list:
    """Have systemd enable the cpu controller at the root (cgroup.subtree_control) the way any unit with a CPU
    weight does: ``CPUWeight=100`` (the default value, set explicitly) on system.slice, until reboot. Upstream
    enforces CPU quotas on v2 only when ``cpu`` is there when it starts. Returns the root's controllers."""
    vm.run(["systemctl", "set-property", "--runtime", "system.slice", "CPUWeight=100"])
    return cat(vm, "/sys/fs/cgroup/cgroup.subtree_control").split()


def restart_agent(vm: Any) -> None:
    vm.run(["systemctl", "restart", AGENT_UNIT], timeout=180)


def wait_log(vm: Any, text: str, timeout: float = 240, since: int = 0) -> str:
    """Until the agent log (from byte ``since``) holds ``text``; returns that part of the log."""
    def seen() -> Optional[str]:
        log = vm.agent_log()[since:]
        return log if text in log else None

    return vm.machine.wait_for(f"{text!r} in the agent log", seen, timeout, interval=3)


def show(vm: Any, unit: str, *props: str) -> dict:
    """``systemctl show <unit> -p A -p B`` → {A: value, B: value}."""
    argv = ["systemctl", "show", unit] + [f"-p{p}" for p in props]
    out = {}
    for line in vm.run(argv).out.splitlines():
        key, _, value = line.partition("=")
        out[key] = value
    return out


def cat(vm: Any, path: str) -> str:
    res = vm.run(["cat", path], check=False)
    return res.out.strip() if res.rc == 0 else ""


def cpu_usage_usec(cpu_stat: str) -> int:
    for line in cpu_stat.splitlines():
        key, _, value = line.partition(" ")
        if key == "usage_usec":
            return int(value)
    raise ValueError(f"no usage_usec in cpu.stat: {cpu_stat!r}")


def read_json(vm: Any, path: str) -> Optional[dict]:
    text = cat(vm, path)
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


# cgroup files report size 0 (test -s is always false): "has a process" is "cgroup.procs has a line"
WATCH_SCRIPT = r"""
out=/var/tmp/vmtier-scope-watch.txt
: > $out
while :; do
    for d in $(find /sys/fs/cgroup/azure.slice -maxdepth 3 -type d -name '%s' 2>/dev/null); do
        if grep -q . $d/cgroup.procs 2>/dev/null && ! grep -q "^dir=$d\$" $out; then
            { echo "dir=$d"; echo "cpu.max=$(cat $d/cpu.max)"; echo "memory.high=$(cat $d/memory.high)";
              echo "procs=$(tr '\n' ' ' < $d/cgroup.procs)";
              for p in $(cat $d/cgroup.procs); do echo "cmdline=$(tr '\0' ' ' < /proc/$p/cmdline)"; done; } >> $out
        fi
    done
    sleep 0.2
done
"""


def start_scope_watch(vm: Any, scope: str = "collect-logs.scope") -> None:
    """A transient guest service that records the first sighting of ``scope`` (its directory, cpu.max,
    memory.high, processes) in /var/tmp/vmtier-scope-watch.txt — the log collector's scope lives seconds."""
    vm.machine.write("/var/tmp/vmtier-scope-watch.sh", (WATCH_SCRIPT % scope).encode(), 0o755)
    vm.run(["systemd-run", "--unit=vmtier-scope-watch", "/bin/sh", "/var/tmp/vmtier-scope-watch.sh"])


def scope_sightings(vm: Any) -> list[dict]:
    out: list[dict] = []
    for line in cat(vm, "/var/tmp/vmtier-scope-watch.txt").splitlines():
        key, _, value = line.partition("=")
        if key == "dir":
            out.append({"dir": value, "cmdlines": []})
        elif out and key == "cmdline":
            out[-1]["cmdlines"].append(value)
        elif out:
            out[-1][key] = value
    return out


def scope_cpu_share(vm: Any, scope: str) -> Optional[tuple]:
    """From the journal: (CPU seconds the scope consumed, seconds it existed), or None when not yet ended."""
    text = vm.run(["journalctl", "-o", "short-monotonic", "--no-pager", "-u", scope], check=False).out
    started = ended = consumed = None
    for line in text.splitlines():
        if not line.startswith("["):
            continue
        stamp = float(line[1:line.index("]")])
        if f"Started {scope}" in line and started is None:
            started = stamp
        elif "Deactivated successfully" in line:
            ended = stamp
        elif "Consumed " in line and "CPU time" in line:
            consumed = _seconds(line.split("Consumed ", 1)[1].split(" CPU time")[0])
    if None in (started, ended, consumed):
        return None
    return consumed, ended - started


def _seconds(text: str) -> float:
    """systemd's timespan (``2.669s``, ``1min 3.2s``, ``850ms``) in seconds."""
    total = 0.0
    for part in text.split():
        for unit, scale in (("min", 60.0), ("ms", 1e-3), ("us", 1e-6), ("s", 1.0), ("h", 3600.0)):
            if part.endswith(unit):
                total += float(part[:-len(unit)]) * scale
                break
    return total
