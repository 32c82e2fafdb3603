"""``/etc/waagent.conf`` → one typed :class:`Config` (spec 05 §17).

The file keeps upstream's syntax and keys exactly; what we add is a diagnosis: a malformed value is
reported once (file, line, key) instead of being silently replaced by its default, and an unknown
key is reported once. Everything here is cheap to import (no dataclasses/inspect): the CLI loads it
on every command.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

from guestagent.errors import ConfigError

DEFAULT_PATH = "/etc/waagent.conf"
#: Fixed by upstream (not configurable).
AGENT_LOG_FILE = "/var/log/waagent.log"
DISABLE_AGENT_FILE = "disable_agent"

SWITCH, INT, STRING = "switch", "int", "string"
_UNSET: Any = object()


class Option(NamedTuple):
    """One key of waagent.conf. ``attr`` is the Python name on :class:`Config` (None: not read by the
    agent, only listed by show-configuration); ``listed``: printed by show-configuration;
    ``shown``: the default show-configuration prints when it differs from the one the code uses."""

    key: str
    attr: Optional[str]
    kind: str
    default: Any
    listed: bool = True
    shown: Any = _UNSET


# Code defaults of 2.15 (the stock file overrides several; see config/waagent.conf).
OPTIONS: tuple[Option, ...] = (
    Option("Extensions.Enabled", "extensions_enabled", SWITCH, True),
    Option("Extensions.GoalStatePeriod", "extensions_goal_state_period", INT, 6),
    # Effective default = GoalStatePeriod; show-configuration prints upstream's fixed 6.
    Option("Extensions.InitialGoalStatePeriod", "extensions_initial_goal_state_period", INT, None, shown=6),
    Option("Extensions.WaitForCloudInit", "extensions_wait_for_cloud_init", SWITCH, False),
    # Upstream reads this one as a switch (so a number always yields 3600); we honour the number.
    Option("Extensions.WaitForCloudInitTimeout", "extensions_wait_for_cloud_init_timeout", INT, 3600),
    Option("Provisioning.Agent", "provisioning_agent", STRING, "auto"),
    Option("Provisioning.DeleteRootPassword", "provisioning_delete_root_password", SWITCH, False),
    Option("Provisioning.RegenerateSshHostKeyPair", "provisioning_regenerate_ssh_host_key_pair", SWITCH, False),
    Option("Provisioning.SshHostKeyPairType", "provisioning_ssh_host_key_pair_type", STRING, "rsa"),
    Option("Provisioning.MonitorHostName", "provisioning_monitor_host_name", SWITCH, False),
    Option("Provisioning.MonitorHostNamePeriod", "provisioning_monitor_host_name_period", INT, 30),
    Option("Provisioning.DecodeCustomData", "provisioning_decode_custom_data", SWITCH, False),
    Option("Provisioning.ExecuteCustomData", "provisioning_execute_custom_data", SWITCH, False),
    Option("Provisioning.PasswordCryptId", "provisioning_password_crypt_id", STRING, "6"),
    Option("Provisioning.PasswordCryptSaltLength", "provisioning_password_crypt_salt_length", INT, 10),
    Option("Provisioning.AllowResetSysUser", "provisioning_allow_reset_sys_user", SWITCH, False),
    Option("ResourceDisk.Format", "resource_disk_format", SWITCH, False),
    Option("ResourceDisk.Filesystem", "resource_disk_filesystem", STRING, "ext3"),
    Option("ResourceDisk.MountPoint", "resource_disk_mount_point", STRING, "/mnt/resource"),
    Option("ResourceDisk.MountOptions", "resource_disk_mount_options", STRING, None),
    Option("ResourceDisk.EnableSwap", "resource_disk_enable_swap", SWITCH, False),
    Option("ResourceDisk.EnableSwapEncryption", "resource_disk_enable_swap_encryption", SWITCH, False),
    Option("ResourceDisk.SwapSizeMB", "resource_disk_swap_size_mb", INT, 0),
    Option("Logs.Verbose", "logs_verbose", SWITCH, False),
    Option("Logs.Console", "logs_console", SWITCH, True),
    Option("Logs.Collect", "logs_collect", SWITCH, True),
    Option("Logs.CollectPeriod", "logs_collect_period", INT, 3600),
    Option("OS.EnableFIPS", "os_enable_fips", SWITCH, False),
    Option("OS.RootDeviceScsiTimeout", "os_root_device_scsi_timeout", STRING, None),
    Option("OS.RootDeviceScsiTimeoutPeriod", "os_root_device_scsi_timeout_period", INT, 30),
    Option("OS.OpensslPath", "os_openssl_path", STRING, "/usr/bin/openssl"),
    Option("OS.SshClientAliveInterval", "os_ssh_client_alive_interval", INT, 180),
    Option("OS.SshDir", "os_ssh_dir", STRING, "/etc/ssh"),
    Option("OS.HomeDir", "os_home_dir", STRING, "/home"),
    Option("OS.PasswordPath", "os_password_path", STRING, "/etc/shadow"),
    Option("OS.SudoersDir", "os_sudoers_dir", STRING, "/etc/sudoers.d"),
    Option("OS.EnableFirewall", "os_enable_firewall", SWITCH, False),
    Option("OS.EnableFirewallPeriod", "os_enable_firewall_period", INT, 300),
    Option("OS.RemovePersistentNetRulesPeriod", "os_remove_persistent_net_rules_period", INT, 30),
    Option("OS.MonitorDhcpClientRestartPeriod", "os_monitor_dhcp_client_restart_period", INT, 30),
    Option("OS.AllowHTTP", "os_allow_http", SWITCH, False),
    Option("OS.EnableRDMA", "os_enable_rdma", SWITCH, False),
    Option("OS.UpdateRdmaDriver", "os_update_rdma_driver", SWITCH, False),
    Option("OS.CheckRdmaDriver", "os_check_rdma_driver", SWITCH, False),
    Option("HttpProxy.Host", "http_proxy_host", STRING, None),
    Option("HttpProxy.Port", "http_proxy_port", INT, None),
    Option("DetectScvmmEnv", "detect_scvmm_env", SWITCH, False),
    Option("Lib.Dir", "lib_dir", STRING, "/var/lib/waagent"),
    Option("DVD.MountPoint", "dvd_mount_point", STRING, "/mnt/cdrom/secure"),
    Option("Pid.File", "pid_file", STRING, "/var/run/waagent.pid"),
    Option("Extension.LogDir", "extension_log_dir", STRING, "/var/log/azure"),
    Option("AutoUpdate.Enabled", "auto_update_enabled", SWITCH, True),
    # Effective default = AutoUpdate.Enabled; show-configuration prints upstream's fixed True.
    Option("AutoUpdate.UpdateToLatestVersion", "auto_update_update_to_latest_version", SWITCH, None, shown=True),
    Option("AutoUpdate.GAFamily", "auto_update_ga_family", STRING, "Prod"),
    Option("Autoupdate.Frequency", "autoupdate_frequency", INT, 3600),
    Option("EnableOverProvisioning", "enable_over_provisioning", SWITCH, True),
    Option("Protocol.EndpointDiscovery", "protocol_endpoint_discovery", STRING, "dhcp"),
    Option("Policy.PolicyFilePath", "policy_file_path", STRING, "/etc/waagent_policy.json"),
    Option("CGroups.Enabled", "cgroups_enabled", SWITCH, True, listed=False),
    Option("Monitor.NetworkConfigurationChanges", "monitor_network_configuration_changes", SWITCH, False,
           listed=False),
    Option("Debug.CgroupLogMetrics", "debug_cgroup_log_metrics", SWITCH, False),
    Option("Debug.CgroupDisableOnProcessCheckFailure", "debug_cgroup_disable_on_process_check_failure", SWITCH, True),
    Option("Debug.CgroupDisableOnQuotaCheckFailure", "debug_cgroup_disable_on_quota_check_failure", SWITCH, True),
    Option("Debug.CgroupCheckPeriod", "debug_cgroup_check_period", INT, 300),
    Option("Debug.AgentCpuQuota", "debug_agent_cpu_quota", INT, 50),
    Option("Debug.AgentCpuThrottledTimeThreshold", "debug_agent_cpu_throttled_time_threshold", INT, 120),
    Option("Debug.AgentMemoryQuota", "debug_agent_memory_quota", INT, 30 * 1024 ** 2),
    Option("Debug.EnableAgentMemoryUsageCheck", "debug_enable_agent_memory_usage_check", SWITCH, False),
    Option("Debug.EnableFastTrack", "debug_enable_fast_track", SWITCH, True),
    Option("Debug.EnableGAVersioning", "debug_enable_ga_versioning", SWITCH, True),
    # The code's fallback is y; show-configuration prints n (upstream's two tables disagree).
    Option("Debug.EnableCgroupV2ResourceLimiting", "debug_enable_cgroup_v2_resource_limiting", SWITCH, True,
           shown=False),
    Option("Debug.EnableExtensionPolicy", "debug_enable_extension_policy", SWITCH, False),
    Option("Debug.EnableSignatureValidation", "debug_enable_signature_validation", SWITCH, False),
    Option("Debug.EtpCollectionPeriod", "debug_etp_collection_period", INT, 300),
    Option("Debug.SelfUpdateHotfixFrequency", "debug_self_update_hotfix_frequency", INT, 14400, listed=False),
    Option("Debug.SelfUpdateRegularFrequency", "debug_self_update_regular_frequency", INT, 86400, listed=False),
    # Listed under these names by show-configuration, read by nothing.
    Option("Debug.AutoUpdateHotfixFrequency", None, INT, 14400),
    Option("Debug.AutoUpdateNormalFrequency", None, INT, 86400),
    Option("Debug.FirewallRulesLogPeriod", "debug_firewall_rules_log_period", INT, 86400),
    Option("Debug.LogCollectorInitialDelay", "debug_log_collector_initial_delay", INT, 300),
    Option("Debug.EnableRsmDowngrade", "debug_enable_rsm_downgrade", SWITCH, False, listed=False),
    # An extension (2.15 has no pre-provisioning pool): how long a pooled VM waits for its claim; 0 = as
    # long as it takes (cloud-init's wait).
    Option("Debug.PreprovisionedPoolTimeout", "debug_preprovisioned_pool_timeout", INT, 0, listed=False),
)

BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}
BY_ATTR: dict[str, Option] = {o.attr: o for o in OPTIONS if o.attr}

_DERIVED = frozenset({"Extensions.InitialGoalStatePeriod", "AutoUpdate.UpdateToLatestVersion"})

#: Keys found in distro conf files that 2.15 ignores; accepted silently (see legacy_provisioning_agent).
LEGACY_KEYS = frozenset({
    "Provisioning.Enabled", "Provisioning.UseCloudInit", "LBProbeResponder", "Role.StateConsumer",
    "Role.ConfigurationConsumer", "Role.TopologyConsumer", "CGroups.EnforceLimits", "CGroups.Excluded",
    "Network.Interface", "OS.SshdConfigPath", "Home.Dir",
})


def parse_lines(content: str) -> list[tuple[int, str, Optional[str]]]:
    """Upstream's syntax (05 §17.1) → ``[(line number, key, value or None)]`` in file order."""
    entries = []
    for number, line in enumerate(content.split("\n"), start=1):
        if line.startswith("#") or "=" not in line:
            continue
        key, rest = line.split("=", 1)
        value = rest.split("#")[0].strip('" ').strip()
        entries.append((number, key.strip(), None if value == "None" else value))
    return entries


def parse_switch(value: Optional[str]) -> Optional[bool]:
    """``y``/``n`` in any case → bool; anything else → None (the caller uses the default)."""
    if value is not None:
        low = value.lower()
        if low == "y":
            return True
        if low == "n":
            return False
    return None


def parse_int(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _show(value: Any) -> str:
    return "None" if value is None else str(value)


class Config:
    """The typed configuration: the agent reads an option only by its Python name (``config.lib_dir``),
    whose default is the one in :data:`OPTIONS` (a configured ``0`` or ``n`` is honoured as such).
    ``values`` keeps the file's raw text per key (show-configuration, diagnostics)."""

    extensions_enabled: bool
    extensions_goal_state_period: int
    extensions_initial_goal_state_period: int
    extensions_wait_for_cloud_init: bool
    extensions_wait_for_cloud_init_timeout: int
    provisioning_agent: str
    provisioning_delete_root_password: bool
    provisioning_regenerate_ssh_host_key_pair: bool
    provisioning_ssh_host_key_pair_type: str
    provisioning_monitor_host_name: bool
    provisioning_monitor_host_name_period: int
    provisioning_decode_custom_data: bool
    provisioning_execute_custom_data: bool
    provisioning_password_crypt_id: str
    provisioning_password_crypt_salt_length: int
    provisioning_allow_reset_sys_user: bool
    resource_disk_format: bool
    resource_disk_filesystem: str
    resource_disk_mount_point: str
    resource_disk_mount_options: Optional[str]
    resource_disk_enable_swap: bool
    resource_disk_enable_swap_encryption: bool
    resource_disk_swap_size_mb: int
    logs_verbose: bool
    logs_console: bool
    logs_collect: bool
    logs_collect_period: int
    os_enable_fips: bool
    os_root_device_scsi_timeout: Optional[str]
    os_root_device_scsi_timeout_period: int
    os_openssl_path: str
    os_ssh_client_alive_interval: int
    os_ssh_dir: str
    os_home_dir: str
    os_password_path: str
    os_sudoers_dir: str
    os_enable_firewall: bool
    os_enable_firewall_period: int
    os_remove_persistent_net_rules_period: int
    os_monitor_dhcp_client_restart_period: int
    os_allow_http: bool
    os_enable_rdma: bool
    os_update_rdma_driver: bool
    os_check_rdma_driver: bool
    http_proxy_host: Optional[str]
    http_proxy_port: Optional[int]
    detect_scvmm_env: bool
    lib_dir: str
    dvd_mount_point: str
    pid_file: str
    extension_log_dir: str
    auto_update_enabled: bool
    auto_update_update_to_latest_version: bool
    auto_update_ga_family: str
    autoupdate_frequency: int
    enable_over_provisioning: bool
    protocol_endpoint_discovery: str
    policy_file_path: str
    cgroups_enabled: bool
    monitor_network_configuration_changes: bool
    debug_cgroup_log_metrics: bool
    debug_cgroup_disable_on_process_check_failure: bool
    debug_cgroup_disable_on_quota_check_failure: bool
    debug_cgroup_check_period: int
    debug_agent_cpu_quota: int
    debug_agent_cpu_throttled_time_threshold: int
    debug_agent_memory_quota: int
    debug_enable_agent_memory_usage_check: bool
    debug_enable_fast_track: bool
    debug_enable_ga_versioning: bool
    debug_enable_cgroup_v2_resource_limiting: bool
    debug_enable_extension_policy: bool
    debug_enable_signature_validation: bool
    debug_etp_collection_period: int
    debug_self_update_hotfix_frequency: int
    debug_self_update_regular_frequency: int
    debug_firewall_rules_log_period: int
    debug_preprovisioned_pool_timeout: int
    debug_log_collector_initial_delay: int
    debug_enable_rsm_downgrade: bool

    def __init__(self, values: Optional[dict[str, Optional[str]]] = None, path: Optional[str] = None,
                 lines: Optional[dict[str, int]] = None):
        #: Raw text per key as found in the file (None = the literal ``None``); last occurrence wins.
        self.values: dict[str, Optional[str]] = dict(values or {})
        self.path = path
        self._lines = dict(lines or {})
        #: (level, message) found while reading; see :meth:`log_diagnostics`.
        self.diagnostics: list[tuple[str, str]] = []
        self._resolve()

    # -- reading the file ---------------------------------------------------------------------------
    def _where(self, key: str) -> str:
        line = self._lines.get(key)
        return f"{self.path or '<config>'}" + (f", line {line}" if line else "")

    def _typed(self, opt: Option, default: Any, found: Optional[list] = None) -> Any:
        raw = self.values.get(opt.key)
        if raw is None or opt.kind == STRING:
            return default if raw is None else raw
        value = parse_switch(raw) if opt.kind == SWITCH else parse_int(raw)
        if value is None:
            expected = "y or n" if opt.kind == SWITCH else "an integer"
            shown = ("y" if default else "n") if isinstance(default, bool) else _show(default)
            if found is not None:
                text = raw if len(raw) <= 80 else raw[:80] + "..."
                found.append((self._lines.get(opt.key, 0), "WARNING", f"{self._where(opt.key)}: invalid value "
                              f"'{text}' for {opt.key} (expected {expected}); using the default {shown}"))
            return default
        return value

    def _resolve(self) -> None:
        found: list[tuple[int, str, str]] = []
        for opt in OPTIONS:
            if opt.key not in _DERIVED:
                value = self._typed(opt, opt.default, found)
                if opt.attr:
                    setattr(self, opt.attr, value)
        # Derived defaults (upstream reads them with a callable default).
        self.extensions_initial_goal_state_period = self._typed(
            BY_KEY["Extensions.InitialGoalStatePeriod"], self.extensions_goal_state_period, found)
        self.auto_update_update_to_latest_version = self._typed(
            BY_KEY["AutoUpdate.UpdateToLatestVersion"], self.auto_update_enabled, found)
        known_ci = {k.lower(): k for k in BY_KEY}
        for key in self.values:
            if key in BY_KEY or key in LEGACY_KEYS:
                continue
            hint = known_ci.get(key.lower())
            suffix = f" (did you mean {hint}?)" if hint else ""
            found.append((self._lines.get(key, 0), "INFO",
                          f"{self._where(key)}: unknown configuration key '{key}' is ignored{suffix}"))
        found.sort(key=lambda item: item[0])  # report in file order
        self.diagnostics = [(level, message) for _, level, message in found]

    def log_diagnostics(self) -> None:
        """Log what reading the file found (each problem once). Called after the log appenders exist."""
        from guestagent import log

        for level, message in self.diagnostics:
            (log.warn if level == "WARNING" else log.info)("{0}", message)

    # -- access -----------------------------------------------------------------------------------
    def is_present(self, key: str) -> bool:
        """True if the file sets ``key`` to something other than ``None`` (upstream's check, used for
        AutoUpdate.UpdateToLatestVersion vs. AutoUpdate.Enabled)."""
        return self.values.get(key) is not None

    # -- derived values (upstream's conf helpers) ------------------------------------------------------
    @property
    def provisioning_enabled(self) -> bool:
        return self.provisioning_agent in ("auto", "waagent")

    @property
    def ssh_host_key_type(self) -> str:
        """The key type whose thumbprint is reported (``auto`` generates all and reports rsa)."""
        t = self.provisioning_ssh_host_key_pair_type
        return "rsa" if t == "auto" else t

    @property
    def sshd_config_path(self) -> str:
        return os.path.join(self.os_ssh_dir, "sshd_config")

    @property
    def published_hostname_path(self) -> str:
        return os.path.join(self.lib_dir, "published_hostname")

    @property
    def disable_agent_path(self) -> str:
        return os.path.join(self.lib_dir, DISABLE_AGENT_FILE)

    @property
    def provisioned_marker_path(self) -> str:
        return os.path.join(self.lib_dir, "provisioned")

    @property
    def dhcp_discovery_enabled(self) -> bool:
        return self.protocol_endpoint_discovery == "dhcp"

    @property
    def rdma_enabled(self) -> bool:
        return self.os_enable_rdma or self.os_update_rdma_driver or self.os_check_rdma_driver

    @property
    def check_rdma_driver(self) -> bool:
        """The RDMA code's own fallback for OS.CheckRdmaDriver is y (not the listed n)."""
        value = parse_switch(self.values.get("OS.CheckRdmaDriver"))
        return True if value is None else value

    @property
    def legacy_provisioning_agent(self) -> Optional[str]:
        """What the pre-2.2 keys mean when the file has ``Provisioning.Enabled=n`` and no
        Provisioning.Agent: ``cloud-init`` (with ``Provisioning.UseCloudInit=y``) or ``disabled``; else
        None. An extension: 2.15 ignores these keys and would provision from the DVD."""
        if "Provisioning.Agent" in self.values or parse_switch(self.values.get("Provisioning.Enabled")) is not False:
            return None
        return "cloud-init" if parse_switch(self.values.get("Provisioning.UseCloudInit")) else "disabled"

    @property
    def agent_log_file(self) -> str:
        return AGENT_LOG_FILE

    def __repr__(self) -> str:
        return f"Config(path={self.path!r}, {len(self.values)} keys set)"


def parse(content: str, path: Optional[str] = None) -> Config:
    """Build a :class:`Config` from the text of a waagent.conf (no logging; see diagnostics)."""
    values: dict[str, Optional[str]] = {}
    lines: dict[str, int] = {}
    for number, key, value in parse_lines(content):
        values[key] = value
        lines[key] = number
    return Config(values, path=path, lines=lines)


def load(path: Optional[str] = None, *, log_now: bool = True) -> Config:
    """Read ``path`` (default /etc/waagent.conf, under the osutil root). A missing, unreadable or
    empty file is a :class:`ConfigError`, as upstream. With ``log_now`` the problems found are logged
    immediately; otherwise the caller logs them with :meth:`Config.log_diagnostics`."""
    from guestagent.osutil import system

    shown = path or DEFAULT_PATH
    target = system.path(shown)
    if not target.is_file():
        raise ConfigError(f"Missing configuration in {shown}")
    try:
        content = target.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(f"Failed to load conf file:{shown}, {e}")
    if not content:
        raise ConfigError(f"Empty configuration in {shown}")
    config = parse(content, path=shown)
    if log_now:
        config.log_diagnostics()
    return config


def show_configuration(config: Config) -> str:
    """``waagent -show-configuration``: upstream's fixed list of 76 keys, plain string sort,
    ``<Key> = <Value>`` (switches True/False, unset None), computed the way upstream computes it."""
    out = []
    for opt in sorted((o for o in OPTIONS if o.listed), key=lambda o: o.key):
        default = opt.default if opt.shown is _UNSET else opt.shown
        raw = config.values.get(opt.key)
        if opt.kind == SWITCH:
            value = parse_switch(raw)
        elif opt.kind == INT:
            value = parse_int(raw)
        else:
            value = raw
        out.append(f"{opt.key} = {_show(default if value is None else value)}")
    return "\n".join(out) + "\n"
