"""The VM image the lab boots: its waagent.conf, DHCP leases, sshd config, and what the scenario asks of
the lab (a resource disk, swap).

A scenario file may carry a ``"lab"`` object, which only the lab reads (it is removed before the
fabric's scenario parser sees the document, so the fabric itself needs no knowledge of it)::

    "lab": {"resource_disk_mb": 96, "swap_mb": 16}

``--resource-disk-mb`` and ``--swap-mb`` on the command line override it.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from guestagent.lab.resourcedisk import STUB_DIR

WIRE_HOST, IMDS_HOST = "127.63.129.16", "169.254.169.254"
DEFAULT_RESOURCE_DISK_MB = 96
MIN_RESOURCE_DISK_MB = 16  # mkfs.ntfs and the agent's ext4 need a few MiB; below this the lab refuses
LAB_KEYS = ("resource_disk_mb", "swap_mb", "comment")

SSHD_CONFIG = """\
Include /etc/ssh/sshd_config.d/*.conf
KbdInteractiveAuthentication no
UsePAM yes
X11Forwarding yes
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp /usr/lib/openssh/sftp-server
"""


#: Stand-ins the lab puts first on the daemon's PATH. ifupdown: a real ``ifdown eth0`` in the sandbox
#: fails (no stanza for eth0) or runs a DHCP client that waits for a server that does not exist, and
#: the host may not have it at all; the agent's call (hostname publishing) is recorded instead.
STANDIN_DIR = STUB_DIR  # the resource disk's swapon/swapoff stand-ins live there too
STANDINS = {name: ('#!/bin/sh\n# guestagent lab stand-in: records the call (see docs/lab.md)\n'
                   'echo "$(basename "$0") $*" >> /run/ifupdown.log\n') for name in ("ifdown", "ifup")}


class LabOptionError(ValueError):
    """A bad ``"lab"`` object in a scenario or a bad lab option."""


@dataclass
class LabOptions:
    resource_disk_mb: int = DEFAULT_RESOURCE_DISK_MB   # 0: no resource disk
    swap_mb: int = 0                                   # 0: ResourceDisk.EnableSwap=n

    def validate(self) -> LabOptions:
        if self.resource_disk_mb and self.resource_disk_mb < MIN_RESOURCE_DISK_MB:
            raise LabOptionError(f"resource_disk_mb must be 0 (none) or at least {MIN_RESOURCE_DISK_MB}")
        if self.swap_mb and not self.resource_disk_mb:
            raise LabOptionError("swap_mb needs a resource disk (the swap file lives on it)")
        if self.swap_mb and self.swap_mb > self.resource_disk_mb // 2:
            raise LabOptionError(f"swap_mb {self.swap_mb} does not fit on a {self.resource_disk_mb} MiB resource "
                                 f"disk (at most {self.resource_disk_mb // 2})")
        return self


def parse_lab_options(raw: Any, where: str = "lab") -> LabOptions:
    if not isinstance(raw, dict):
        raise LabOptionError(f"{where}: expected an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(LAB_KEYS))
    if unknown:
        raise LabOptionError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(LAB_KEYS)})")
    out = LabOptions()
    for key in ("resource_disk_mb", "swap_mb"):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LabOptionError(f"{where}.{key}: expected a non-negative integer, got {value!r}")
            setattr(out, key, value)
    return out


def scenario_file(name_or_path: str) -> Path:
    """The file a ``--scenario`` argument names (a path, or a built-in name such as ``default``)."""
    from guestagent.fabric.scenario import BUILTIN_DIR

    p = Path(name_or_path)
    if not p.exists() and (BUILTIN_DIR / f"{name_or_path}.json").is_file():
        return BUILTIN_DIR / f"{name_or_path}.json"
    return p


def load_lab_scenario(name_or_path: str) -> tuple[Any, LabOptions]:
    """(Scenario, LabOptions): the scenario as the fabric parses it, minus the lab's own ``"lab"`` object.
    Unreadable or invalid files go to the fabric's loader, whose errors name the problem."""
    from guestagent.fabric.scenario import load_scenario, parse_scenario

    p = scenario_file(name_or_path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return load_scenario(name_or_path), LabOptions()
    if isinstance(data, dict) and "lab" in data:
        options = parse_lab_options(data.pop("lab"), f"{p}: lab")
        return parse_scenario(data, p.parent, str(p)), options
    return load_scenario(name_or_path), LabOptions()


def firewall_tool() -> Optional[str]:
    """The tool the agent will use for the WireServer rules (iptables first, as upstream), or None."""
    return next((t for t in ("iptables", "nft") if shutil.which(t)), None)


def conf_settings(*, provisions: bool, verbose: bool, resource_disk: Optional[dict[str, str]],
                  swap_mb: int, firewall: bool) -> dict[str, str]:
    """The waagent.conf keys the lab sets on top of the project's config/waagent.conf."""
    settings = {"Provisioning.Agent": "waagent" if provisions else "disabled",
                "Logs.Verbose": "y" if verbose else "n",
                "OS.EnableFirewall": "y" if firewall else "n"}
    if resource_disk:
        settings.update(resource_disk)
        settings["ResourceDisk.EnableSwap"] = "y" if swap_mb else "n"
        if swap_mb:
            settings["ResourceDisk.SwapSizeMB"] = str(swap_mb)
    else:
        settings["ResourceDisk.Format"] = "n"
    return settings


def adapt_conf(text: str, settings: dict[str, str]) -> str:
    """Set ``key=value`` for each setting: the first (possibly commented) line of the key is replaced,
    otherwise the line is appended."""
    lines = text.splitlines()
    for key, value in settings.items():
        pat = re.compile(r"^\s*#?\s*" + re.escape(key) + r"\s*=")
        for i, line in enumerate(lines):
            if pat.match(line):
                lines[i] = f"{key}={value}"
                break
        else:
            lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def lease_file(endpoint: str, now: Optional[datetime.datetime] = None) -> str:
    """An ISC dhclient lease for eth0 whose option 245 names ``endpoint``, valid for a day."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    hexed = ":".join(f"{int(o):x}" for o in endpoint.split("."))

    def stamp(t: datetime.datetime) -> str:
        return f"{(t.weekday() + 1) % 7} {t:%Y/%m/%d %H:%M:%S}"

    return (
        "lease {\n"
        '  interface "eth0";\n'
        "  fixed-address 10.0.0.4;\n"
        "  option subnet-mask 255.255.255.0;\n"
        "  option routers 10.0.0.1;\n"
        "  option dhcp-lease-time 86400;\n"
        "  option dhcp-message-type 5;\n"
        f"  option domain-name-servers {endpoint};\n"
        f"  option dhcp-server-identifier {endpoint};\n"
        f"  option unknown-245 {hexed};\n"
        f"  renew {stamp(now + datetime.timedelta(hours=12))};\n"
        f"  rebind {stamp(now + datetime.timedelta(hours=21))};\n"
        f"  expire {stamp(now + datetime.timedelta(days=1))};\n"
        "}\n")


def networkd_lease(endpoint: str) -> str:
    """systemd-networkd's lease cache (Ubuntu 18.04 - 24.04 family) with option 245."""
    return ("# This is private data. Do not parse.\nADDRESS=10.0.0.4\n"
            f"OPTION_245={''.join(f'{int(o):02x}' for o in endpoint.split('.'))}\n")


def install_standins(sb: Any) -> dict[str, str]:
    """Write :data:`STANDINS` into the sandbox; returns the PATH that puts them first."""
    from guestagent.lab.sandbox import DEFAULT_PATH, interpreter

    for name, script in STANDINS.items():
        sb.write_file(f"{STANDIN_DIR}/{name}", script, mode=0o755)
    return {"PATH": f"{STANDIN_DIR}:{Path(interpreter()).parent}:{DEFAULT_PATH}"}


def standin_calls(sb: Any) -> list[str]:
    try:
        return sb.read_text("/run/ifupdown.log").splitlines()
    except OSError:
        return []
