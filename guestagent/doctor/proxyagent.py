"""The Guest Proxy Agent checks of its troubleshooting guide: installed, service active, status.json,
kernel ≥ 5.15, cgroup v2 listed and mounted, and cloud-init's version against the GPA's presence —
each problem with the guide's remedy."""

from __future__ import annotations

import os
import re
from typing import Optional

from guestagent.doctor.context import DoctorContext
from guestagent.doctor.report import FAIL, INFO, OK, SKIP, WARN, Finding
from guestagent.errors import CommandError
from guestagent.osutil import gpa, system

#: The first cloud-init that waits for the GPA (and fails provisioning without it when asked to).
CLOUD_INIT_GPA_AWARE = (24, 3)
KEY_RESET = ("reset the key: apply a new, strictly increasing ProxyAgentSettings.KeyIncarnationId to the VM "
             "model (PUT); the GPA then acquires a new key by itself")
OPT_OUT_UPGRADE = "opt out of MSP, move to a newer image (kernel >= 5.15), then enable MSP again"
OPT_OUT_UPDATE = "opt out of MSP, update to the latest OS version, then enable MSP again"
CGROUP2_MOUNT = ("mount cgroup v2 by default: grubby --update-kernel=ALL "
                 "--args=\"systemd.unified_cgroup_hierarchy=1\", then reboot")


def _remedy(comp: gpa.Component) -> tuple[str, str]:
    """(why, what to do) for a failing component, from its name and the GPA's message."""
    msg = comp.message
    if comp.name == "ebpfProgramStatus":
        if "bpf_link_create" in msg or "attach" in msg.lower():
            return ("the GPA cannot attach its cgroup/connect4 program: cgroup v2 is not mounted",
                    CGROUP2_MOUNT + " (if 'nodev cgroup2' is missing from /proc/filesystems: " + OPT_OUT_UPDATE + ")")
        return ("the kernel rejected the GPA's eBPF program (it needs Linux >= 5.15)", OPT_OUT_UPGRADE)
    if comp.name == "keyLatchStatus":
        return ("the GPA could not acquire its key: the platform no longer offers it (disk moved to another VM, "
                "OS disk replaced)", KEY_RESET)
    return ("the GPA's listener is not running: WireServer/IMDS traffic is not proxied",
            f"read {gpa.LOG_DIR}/ and 'systemctl status {gpa.SERVICE}'")


def check_status(ctx: DoctorContext) -> list[Finding]:
    status = gpa.read_status()
    if status is None:
        if gpa.installed():
            return [Finding("gpa.status", WARN, f"GPA installed but no {gpa.STATUS_FILE}",
                            "the GPA has not started (or not got far enough to write it)",
                            f"systemctl status {gpa.SERVICE}; read {gpa.LOG_DIR}/")]
        return [Finding("gpa", OK, "Guest Proxy Agent not installed (MSP cannot be enabled on this image)")]
    if status.error:
        return [Finding("gpa.status", FAIL, f"{gpa.STATUS_FILE}: {status.error}", "the GPA's state is unknown",
                        f"systemctl status {gpa.SERVICE}; read {gpa.LOG_DIR}/")]
    age = ctx.now - system.path(gpa.STATUS_FILE).stat().st_mtime
    if age > max(ctx.stale_after, 5 * gpa.REWRITE_PERIOD):
        return [Finding("gpa.status", FAIL, f"{gpa.STATUS_FILE} not rewritten for {int(age)} s "
                        f"(last: {status.summary()})", "the GPA rewrites it every minute: it is hung or stopped",
                        f"systemctl status {gpa.SERVICE}; read {gpa.LOG_DIR}/")]
    if status.healthy:
        return [Finding("gpa.status", OK, status.summary())]
    out = []
    for comp in status.failing():
        why, todo = _remedy(comp)
        out.append(Finding(f"gpa.{comp.name}", FAIL, f"{comp.status or '(missing)'}: {gpa.shorten(comp.message, 200)}",
                           why, todo))
    if not out:
        out.append(Finding("gpa.status", FAIL, f"{gpa.OVERALL} {status.overall or '(missing)'} with every component "
                           "RUNNING", "generic GPA start-up failure", f"read {gpa.LOG_DIR}/"))
    return out


def check_service(ctx: DoctorContext) -> list[Finding]:
    if not gpa.installed():
        return []
    if not system.exists("/run/systemd/system") or system.which("systemctl") is None:
        return [Finding("gpa.service", SKIP, "systemd is not running: service state unknown")]
    try:
        res = system.run(["systemctl", "is-active", gpa.SERVICE], timeout=15, check=False, log=False)
    except CommandError as e:
        return [Finding("gpa.service", SKIP, f"systemctl failed: {e}")]
    state = res.stdout.strip() or "unknown"
    if state != "active":
        return [Finding("gpa.service", FAIL, f"{gpa.SERVICE} is {state}", "MSP protections are not applied",
                        f"systemctl status {gpa.SERVICE}; journalctl -u {gpa.SERVICE}")]
    return [Finding("gpa.service", OK, f"{gpa.SERVICE} active")]


def check_prerequisites(ctx: DoctorContext) -> list[Finding]:
    """Kernel and cgroup v2: problems when the GPA is installed, notes otherwise."""
    need = WARN if gpa.installed() else INFO
    out = []
    release = gpa.kernel_release()
    if gpa.kernel_version(release) < gpa.MIN_KERNEL:
        out.append(Finding("gpa.kernel", need, f"kernel {release} < 5.15", "the GPA's eBPF program cannot load",
                           OPT_OUT_UPGRADE))
    else:
        out.append(Finding("gpa.kernel", OK, f"kernel {release} >= 5.15"))
    listed = gpa.cgroup2_listed(system.read_text("/proc/filesystems", default="") or "")
    mounts = gpa.cgroup2_mounts(system.read_text("/proc/self/mountinfo", default="") or "")
    if not listed:
        out.append(Finding("gpa.cgroup2", need, "'nodev cgroup2' not in /proc/filesystems",
                           "the GPA hooks cgroup/connect4, which needs cgroup v2", OPT_OUT_UPDATE))
    elif not mounts:
        out.append(Finding("gpa.cgroup2", need, "cgroup v2 supported but not mounted",
                           "the GPA cannot attach its program (bpf_link_create fails)", CGROUP2_MOUNT))
    else:
        out.append(Finding("gpa.cgroup2", OK, f"cgroup v2 mounted at {mounts[0]}"))
    return out


def cloud_init_version() -> Optional[tuple[int, int]]:
    if system.which("cloud-init") is None:
        return None
    try:
        res = system.run(["cloud-init", "--version"], timeout=30, check=False, log=False)
    except CommandError:
        return None
    m = re.search(r"(\d+)\.(\d+)", res.stdout + res.stderr)
    return (int(m.group(1)), int(m.group(2))) if m else None


def msp_requested(lib_dir: str) -> bool:
    """ovf-env.xml's ProvisionGuestProxyAgent (what cloud-init >= 24.3 acts on)."""
    text = system.read_text(os.path.join(lib_dir, "ovf-env.xml"), default="", errors="replace") or ""
    return re.search(r"ProvisionGuestProxyAgent>\s*true\s*<", text, re.IGNORECASE) is not None


def check_cloud_init(ctx: DoctorContext) -> list[Finding]:
    """The guide's table: GPA installed or not × cloud-init before or from 24.3."""
    version = cloud_init_version()
    if version is None:
        return [Finding("gpa.cloud-init", OK, "cloud-init not installed: no race with the GPA")]
    shown = f"cloud-init {version[0]}.{version[1]}"
    aware = version >= CLOUD_INIT_GPA_AWARE
    if gpa.installed():
        if aware:
            return [Finding("gpa.cloud-init", OK, f"{shown} waits for the GPA")]
        return [Finding("gpa.cloud-init", FAIL, f"{shown} < 24.3 with the GPA installed",
                        "cloud-init may report ready before the GPA is set up (provisioning fails up to 100%)",
                        "use an image with cloud-init >= 24.3")]
    if aware and msp_requested(ctx.config.lib_dir):
        return [Finding("gpa.cloud-init", FAIL, f"{shown} asked to provision the GPA, which is not installed",
                        "provisioning fails: 'azure-proxy-agent not found'",
                        "bake the GPA into the image, or add the ProxyAgentLinux VM extension before enabling MSP")]
    return [Finding("gpa.cloud-init", OK, f"{shown}; GPA not installed and MSP not requested")]
