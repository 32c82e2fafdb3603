"""Each family's waagent.conf, rendered from the generic config/waagent.conf and one table (issue 16).

Upstream ships a hand-kept copy per family (config/<family>/waagent.conf in 2.15); here the table says
only how a family's file differs from the generic one: a value to set, or None where the family's file
has no such line (upstream's built-in default then applies). ``python -m guestagent.conffamilies``
rewrites config/<family>/waagent.conf; a unit test keeps the committed files equal to the rendering and a
conformance test compares ``-show-configuration`` on each with upstream's conf code on upstream's file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

#: family -> {key: value, or None for "no such line in the family's file"}, in upstream's order.
FAMILIES: dict[str, dict[str, Optional[str]]] = {
    "alpine": {
        "Provisioning.MonitorHostName": "n", "Provisioning.DecodeCustomData": "y",
        "Provisioning.ExecuteCustomData": "y", "LBProbeResponder": "y", "Logs.Console": "y",
        "Network.Interface": "eth0", "Extensions.GoalStatePeriod": None,
        "Provisioning.MonitorHostNamePeriod": None, "Provisioning.AllowResetSysUser": None,
        "Logs.Collect": None, "Logs.CollectPeriod": None, "OS.RootDeviceScsiTimeoutPeriod": None,
        "OS.EnableFirewallPeriod": None, "OS.RemovePersistentNetRulesPeriod": None,
        "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "arch": {
        "Provisioning.DeleteRootPassword": "n", "LBProbeResponder": "y", "Extensions.Enabled": None,
        "Extensions.GoalStatePeriod": None, "Provisioning.MonitorHostNamePeriod": None,
        "Logs.Collect": None, "Logs.CollectPeriod": None, "OS.RootDeviceScsiTimeoutPeriod": None,
        "OS.EnableFirewallPeriod": None, "OS.RemovePersistentNetRulesPeriod": None,
        "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "bigip": {
        "Role.StateConsumer": "None", "Role.ConfigurationConsumer": "None", "Role.TopologyConsumer": "None",
        "Provisioning.MonitorHostName": "n", "LBProbeResponder": "y",
        "Lib.Dir": "/shared/vadc/azure/waagent/", "OS.SshdConfigPath": "/config/ssh/sshd_config",
        "OS.EnableRDMA": "n", "Extensions.GoalStatePeriod": None,
        "Provisioning.MonitorHostNamePeriod": None, "Provisioning.DecodeCustomData": None,
        "Provisioning.ExecuteCustomData": None, "Provisioning.AllowResetSysUser": None,
        "ResourceDisk.MountOptions": None, "Logs.Collect": None, "Logs.CollectPeriod": None,
        "OS.RootDeviceScsiTimeoutPeriod": None, "OS.EnableFirewallPeriod": None,
        "OS.RemovePersistentNetRulesPeriod": None, "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "chainguard": {
        "Extensions.Enabled": "n", "Provisioning.SshHostKeyPairType": "auto",
        "AutoUpdate.UpdateToLatestVersion": "n", "Extensions.GoalStatePeriod": None,
        "Provisioning.MonitorHostNamePeriod": None, "OS.RootDeviceScsiTimeoutPeriod": None,
        "OS.EnableFirewallPeriod": None, "OS.RemovePersistentNetRulesPeriod": None,
        "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "clearlinux": {
        "Role.StateConsumer": "None", "Role.ConfigurationConsumer": "None", "Role.TopologyConsumer": "None",
        "Provisioning.DecodeCustomData": "y", "AutoUpdate.GAFamily": "Prod", "Extensions.Enabled": None,
        "Extensions.GoalStatePeriod": None, "Provisioning.MonitorHostNamePeriod": None,
        "ResourceDisk.MountOptions": None, "Logs.Collect": None, "Logs.CollectPeriod": None,
        "OS.RootDeviceScsiTimeoutPeriod": None, "OS.EnableFirewallPeriod": None,
        "OS.RemovePersistentNetRulesPeriod": None, "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "coreos": {
        "Provisioning.DeleteRootPassword": "n", "Provisioning.RegenerateSshHostKeyPair": "n",
        "Provisioning.SshHostKeyPairType": "ed25519", "LBProbeResponder": "y", "OS.AllowHTTP": "y",
        "Extensions.GoalStatePeriod": None, "Provisioning.MonitorHostNamePeriod": None,
        "Logs.Collect": None, "Logs.CollectPeriod": None, "OS.RootDeviceScsiTimeoutPeriod": None,
        "OS.EnableFirewallPeriod": None, "OS.RemovePersistentNetRulesPeriod": None,
        "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "debian": {
        "Provisioning.SshHostKeyPairType": "auto", "OS.EnableFirewall": "n",
        "Extensions.GoalStatePeriod": None, "Provisioning.MonitorHostNamePeriod": None,
        "OS.RootDeviceScsiTimeoutPeriod": None, "OS.EnableFirewallPeriod": None,
        "OS.RemovePersistentNetRulesPeriod": None, "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "devuan": {
        "Provisioning.SshHostKeyPairType": "auto", "CGroups.EnforceLimits": "n",
        "CGroups.Excluded": "customscript,runcommand", "Extensions.GoalStatePeriod": None,
        "Provisioning.MonitorHostNamePeriod": None, "Logs.Collect": None, "Logs.CollectPeriod": None,
        "OS.RootDeviceScsiTimeoutPeriod": None, "OS.EnableFirewallPeriod": None,
        "OS.RemovePersistentNetRulesPeriod": None, "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "freebsd": {
        "ResourceDisk.Filesystem": "ufs", "ResourceDisk.EnableSwap": "y",
        "ResourceDisk.SwapSizeMB": "16384", "OS.PasswordPath": "/etc/master.passwd",
        "OS.SudoersDir": "/usr/local/etc/sudoers.d", "Extensions.GoalStatePeriod": None,
        "Provisioning.MonitorHostNamePeriod": None, "Provisioning.AllowResetSysUser": None,
        "Logs.Collect": None, "Logs.CollectPeriod": None, "OS.RootDeviceScsiTimeoutPeriod": None,
        "OS.EnableFirewallPeriod": None, "OS.RemovePersistentNetRulesPeriod": None,
        "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "gaia": {
        "Provisioning.DeleteRootPassword": "n", "Provisioning.RegenerateSshHostKeyPair": "n",
        "Provisioning.MonitorHostName": "n", "Provisioning.DecodeCustomData": "y",
        "Provisioning.PasswordCryptId": "1", "Provisioning.AllowResetSysUser": "y",
        "ResourceDisk.Filesystem": "ext3", "ResourceDisk.EnableSwap": "y",
        "ResourceDisk.SwapSizeMB": "1024", "OS.OpensslPath": "/var/lib/waagent/openssl",
        "OS.EnableRDMA": "n", "AutoUpdate.Enabled": "n", "Extensions.GoalStatePeriod": None,
        "Provisioning.MonitorHostNamePeriod": None, "Logs.Collect": None, "Logs.CollectPeriod": None,
        "OS.RootDeviceScsiTimeoutPeriod": None, "OS.EnableFirewallPeriod": None,
        "OS.RemovePersistentNetRulesPeriod": None, "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "iosxe": {
        "Provisioning.RegenerateSshHostKeyPair": "n", "Provisioning.MonitorHostName": "n",
        "ResourceDisk.Format": "n", "Extensions.Enabled": None, "Extensions.GoalStatePeriod": None,
        "Provisioning.MonitorHostNamePeriod": None, "Logs.Collect": None, "Logs.CollectPeriod": None,
        "OS.RootDeviceScsiTimeoutPeriod": None, "OS.EnableFirewallPeriod": None,
        "OS.RemovePersistentNetRulesPeriod": None, "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "mariner": {
        "Role.StateConsumer": "None", "Role.ConfigurationConsumer": "None", "Role.TopologyConsumer": "None",
        "Provisioning.Enabled": "n", "Provisioning.DecodeCustomData": "y", "ResourceDisk.Format": "n",
        "AutoUpdate.GAFamily": "Prod", "Extensions.GoalStatePeriod": None,
        "Provisioning.MonitorHostNamePeriod": None, "ResourceDisk.MountOptions": None, "Logs.Collect": None,
        "Logs.CollectPeriod": None, "OS.RootDeviceScsiTimeoutPeriod": None, "OS.EnableFirewallPeriod": None,
        "OS.RemovePersistentNetRulesPeriod": None, "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "nsbsd": {
        "Provisioning.DeleteRootPassword": "n", "Provisioning.RegenerateSshHostKeyPair": "n",
        "ResourceDisk.Format": "n", "ResourceDisk.Filesystem": "ufs",
        "OS.PasswordPath": "/etc/master.passwd", "OS.SudoersDir": "/usr/local/etc/sudoers.d",
        "Lib.Dir": "/usr/Firewall/lib/waagent", "Extension.LogDir": "/log/azure", "AutoUpdate.Enabled": "n",
        "OS.EnableFirewall": "n", "Extensions.Enabled": None, "Extensions.GoalStatePeriod": None,
        "Provisioning.MonitorHostNamePeriod": None, "Provisioning.AllowResetSysUser": None,
        "Logs.Collect": None, "Logs.CollectPeriod": None, "OS.RootDeviceScsiTimeoutPeriod": None,
        "OS.EnableFirewallPeriod": None, "OS.RemovePersistentNetRulesPeriod": None,
        "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "openbsd": {
        "Provisioning.SshHostKeyPairType": "auto", "ResourceDisk.Filesystem": "ufs2",
        "ResourceDisk.EnableSwap": "y", "ResourceDisk.SwapSizeMB": "65536",
        "OS.OpensslPath": "/usr/local/bin/eopenssl", "OS.PasswordPath": "/etc/master.passwd",
        "Extensions.Enabled": None, "Extensions.GoalStatePeriod": None,
        "Provisioning.MonitorHostNamePeriod": None, "Provisioning.AllowResetSysUser": None,
        "Logs.Collect": None, "Logs.CollectPeriod": None, "OS.RootDeviceScsiTimeoutPeriod": None,
        "OS.EnableFirewallPeriod": None, "OS.RemovePersistentNetRulesPeriod": None,
        "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "photonos": {
        "Role.StateConsumer": "None", "Role.ConfigurationConsumer": "None", "Role.TopologyConsumer": "None",
        "Provisioning.Enabled": "n", "Provisioning.UseCloudInit": "y", "Provisioning.DecodeCustomData": "y",
        "ResourceDisk.Format": "n", "AutoUpdate.GAFamily": "Prod", "Extensions.Enabled": None,
        "Extensions.GoalStatePeriod": None, "Provisioning.Agent": None,
        "Provisioning.MonitorHostNamePeriod": None, "ResourceDisk.MountOptions": None, "Logs.Collect": None,
        "Logs.CollectPeriod": None, "OS.RootDeviceScsiTimeoutPeriod": None, "OS.EnableFirewall": None,
        "OS.EnableFirewallPeriod": None, "OS.RemovePersistentNetRulesPeriod": None,
        "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "suse": {
        "ResourceDisk.Filesystem": "btrfs", "ResourceDisk.MountOptions": "compress=lzo",
        "LBProbeResponder": "y", "Extensions.GoalStatePeriod": None,
        "Provisioning.MonitorHostNamePeriod": None, "OS.RootDeviceScsiTimeoutPeriod": None,
        "OS.EnableFirewallPeriod": None, "OS.RemovePersistentNetRulesPeriod": None,
        "OS.MonitorDhcpClientRestartPeriod": None,
    },
    "ubuntu": {
        "Provisioning.RegenerateSshHostKeyPair": "n", "Provisioning.MonitorHostName": "n",
        "ResourceDisk.Format": "n", "ResourceDisk.MountPoint": "/mnt", "LBProbeResponder": "y",
        "Extensions.GoalStatePeriod": None, "Provisioning.MonitorHostNamePeriod": None,
        "OS.RootDeviceScsiTimeoutPeriod": None, "OS.EnableFirewallPeriod": None,
        "OS.RemovePersistentNetRulesPeriod": None, "OS.MonitorDhcpClientRestartPeriod": None,
    },
}


def render(generic: str, family: str) -> str:
    """The generic file with the family's values set, its absent keys commented out and its extra keys
    appended (in the table's order)."""
    overrides = FAMILIES[family]
    seen: set[str] = set()
    out = []
    for line in generic.splitlines():
        key = line.split("=", 1)[0].strip() if "=" in line and not line.lstrip().startswith("#") else ""
        if key in overrides:
            seen.add(key)
            value = overrides[key]
            line = f"# {line}  (not set on {family})" if value is None else f"{key}={value}"
        out.append(line)
    extra = [f"{k}={v}" for k, v in overrides.items() if k not in seen and v is not None]
    if extra:
        out += ["", f"# {family} defaults", *extra]
    return "\n".join(out) + "\n"


def main(config_dir: str = "config") -> int:
    base = Path(config_dir)
    generic = (base / "waagent.conf").read_text()
    for family in FAMILIES:
        target = base / family / "waagent.conf"
        target.parent.mkdir(exist_ok=True)
        target.write_text(render(generic, family))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
