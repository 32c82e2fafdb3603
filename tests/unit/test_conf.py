"""waagent.conf: syntax, types, defaults, derived values, diagnostics and show-configuration (05 §17)."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestagent import conf, log
from guestagent.conf import Config
from guestagent.errors import ConfigError

DATA = Path(__file__).resolve().parents[1] / "data" / "conf"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def logged():
    stream = io.StringIO()
    log.add_appender("test", log.StreamAppender(log.VERBOSE, stream))
    return stream


def test_syntax_rules():
    text = "\n".join([
        "# Lib.Dir=/commented",
        "  # Indented=comment is a key, as upstream",
        "no equals sign",
        "=Value0",
        "Key1 =  Value1  ",
        'Key2="quoted value" # comment',
        "Key3=a#b#c",
        "Key4=None",
        "Key5=   ",
        "Key6=x=y",
        "Key7=\"'single'\"",
        "Key8=None # still None",
        "Key9=\tTabbed\t",
    ])
    entries = {k: v for _, k, v in conf.parse_lines(text)}
    assert entries == {"# Indented": "comment is a key, as upstream", "": "Value0", "Key1": "Value1",
                       "Key2": "quoted value", "Key3": "a", "Key4": None, "Key5": "", "Key6": "x=y",
                       "Key7": "'single'", "Key8": None, "Key9": "Tabbed"}
    assert [n for n, _, _ in conf.parse_lines("a=1\n\n#x=1\nb=2")] == [1, 4]


@pytest.mark.parametrize("raw,expected", [("y", True), ("Y", True), ("n", False), ("N", False), ("yes", None),
                                          ("true", None), ("1", None), ("", None), (None, None), (" y", None)])
def test_switch_values(raw, expected):
    assert conf.parse_switch(raw) is expected


@pytest.mark.parametrize("raw,expected", [("0", 0), ("42", 42), ("+7", 7), ("-3", -3), ("0x10", None), ("4.5", None),
                                          ("", None), ("ten", None), (None, None)])
def test_int_values(raw, expected):
    assert conf.parse_int(raw) == expected


def test_every_option_has_a_typed_attribute_and_its_code_default():
    config = Config()
    annotated = set(Config.__annotations__)
    assert annotated == set(conf.BY_ATTR), annotated ^ set(conf.BY_ATTR)
    assert len(conf.BY_KEY) == len(conf.OPTIONS)
    shown = dict(line.split(" = ") for line in conf.show_configuration(config).splitlines())
    for opt in conf.OPTIONS:
        value = getattr(config, opt.attr) if opt.attr else conf.parse_int(shown[opt.key])
        if opt.key == "Extensions.InitialGoalStatePeriod":
            assert value == 6
        elif opt.key == "AutoUpdate.UpdateToLatestVersion":
            assert value is True
        else:
            assert value == opt.default, opt.key
        kind = {conf.SWITCH: bool, conf.INT: int, conf.STRING: str}[opt.kind]
        assert value is None or type(value) is kind, opt.key
    assert config.debug_agent_memory_quota == 31457280
    assert config.resource_disk_filesystem == "ext3" and config.resource_disk_mount_options is None
    assert config.http_proxy_port is None and config.os_root_device_scsi_timeout is None
    assert config.debug_enable_cgroup_v2_resource_limiting is True  # the code's fallback, not the listed n
    assert config.check_rdma_driver is True and config.rdma_enabled is False
    assert config.diagnostics == []


def test_edge_case_file():
    config = conf.load(str(DATA / "edge-cases.conf"), log_now=False)
    assert config.lib_dir == "/srv/agent-lib"
    assert config.extensions_goal_state_period == 12
    assert config.extensions_initial_goal_state_period == 12  # derived from GoalStatePeriod
    assert config.logs_verbose is True and config.logs_console is False
    assert config.os_enable_firewall is True
    assert config.os_ssh_dir == "/etc/ssh test"
    assert config.resource_disk_mount_options is None
    assert config.resource_disk_filesystem == "xfs" and config.resource_disk_swap_size_mb == 2048
    assert config.resource_disk_enable_swap is False  # "yes" is not a switch value
    assert config.provisioning_monitor_host_name_period == 30  # "soon" → default
    assert config.http_proxy_host == "proxy.example.test" and config.http_proxy_port == 3128
    assert config.auto_update_enabled is False
    assert config.auto_update_update_to_latest_version is False  # follows AutoUpdate.Enabled when absent
    assert not config.is_present("AutoUpdate.UpdateToLatestVersion") and config.is_present("AutoUpdate.Enabled")
    assert config.debug_agent_memory_quota == 41943040
    assert config.debug_self_update_hotfix_frequency == 600
    assert config.debug_self_update_regular_frequency == 86400  # the AutoUpdate* name is not read
    assert "Debug.AutoUpdateNormalFrequency = 700" in conf.show_configuration(config)  # ...a known, listed key
    assert config.debug_enable_cgroup_v2_resource_limiting is False
    assert config.os_ssh_client_alive_interval == 42
    assert config.extensions_wait_for_cloud_init_timeout == 600  # upstream would ignore the number
    assert config.pid_file == "/run/second.pid"  # the last occurrence wins
    assert config.autoupdate_frequency == 3600  # "AutoUpdate.Frequency" is not the key


def test_diagnostics_name_file_line_and_key(logged):
    config = conf.load(str(DATA / "edge-cases.conf"))
    path = str(DATA / "edge-cases.conf")
    warnings = [m for level, m in config.diagnostics if level == "WARNING"]
    assert warnings == [
        f"{path}, line 14: invalid value 'yes' for ResourceDisk.EnableSwap (expected y or n); using the default n",
        f"{path}, line 15: invalid value 'soon' for Provisioning.MonitorHostNamePeriod (expected an integer); "
        "using the default 30",
    ]
    infos = [m for level, m in config.diagnostics if level == "INFO"]
    assert infos == [
        f"{path}, line 28: unknown configuration key 'FauxKey' is ignored",
        f"{path}, line 29: unknown configuration key 'AutoUpdate.Frequency' is ignored "
        "(did you mean Autoupdate.Frequency?)",
    ]
    text = logged.getvalue()
    assert text.count(" WARNING ") == 2 and text.count(" INFO ") == 2
    assert "Provisioning.Enabled" not in text and "Home.Dir" not in text  # legacy keys: silent


def test_each_problem_is_reported_once():
    config = conf.parse("Bogus=1\nBogus=2\nLogs.Verbose=maybe\nLogs.Verbose=perhaps\n", path="/x.conf")
    assert config.diagnostics == [  # in file order; the last occurrence of a key is the one that counts
        ("INFO", "/x.conf, line 2: unknown configuration key 'Bogus' is ignored"),
        ("WARNING", "/x.conf, line 4: invalid value 'perhaps' for Logs.Verbose (expected y or n); "
                    "using the default n"),
    ]
    assert config.logs_verbose is False
    conf.show_configuration(config)
    assert len(config.diagnostics) == 2  # reading again does not re-report
    long = conf.parse("Logs.Collect=" + "x" * 10000 + "\n").diagnostics[0][1]
    assert len(long) < 250 and "'" + "x" * 80 + "...'" in long


@pytest.mark.parametrize("text,expected", [
    ("Provisioning.Enabled=n\nProvisioning.UseCloudInit=Y\nRole.StateConsumer=None\n", "cloud-init"),
    ("Provisioning.Enabled=N\n", "disabled"),
    ("Provisioning.Enabled=n\nProvisioning.UseCloudInit=maybe\n", "disabled"),
    ("Provisioning.Enabled=y\nProvisioning.UseCloudInit=y\n", None),
    ("Provisioning.Enabled=no\n", None),
    ("Provisioning.Enabled=n\nProvisioning.Agent=waagent\n", None),
    ("", None),
])
def test_legacy_provisioning_keys(text, expected):
    config = conf.parse(text)
    assert config.diagnostics == []  # legacy keys are accepted silently
    assert config.legacy_provisioning_agent == expected


@pytest.mark.parametrize("text,expected", [
    ("", True),
    ("AutoUpdate.Enabled=n", False),
    ("AutoUpdate.Enabled=n\nAutoUpdate.UpdateToLatestVersion=y", True),
    ("AutoUpdate.Enabled=y\nAutoUpdate.UpdateToLatestVersion=n", False),
    ("AutoUpdate.Enabled=n\nAutoUpdate.UpdateToLatestVersion=None", False),
    ("AutoUpdate.Enabled=n\nAutoUpdate.UpdateToLatestVersion=sure", False),
])
def test_update_to_latest_version(text, expected):
    assert conf.parse(text + "\n").auto_update_update_to_latest_version is expected


def test_upstream_auto_update_fixture_files(upstream):
    expected = {
        "waagent_auto_update_disabled.conf": (False, False),
        "waagent_auto_update_enabled.conf": (True, True),
        "waagent_auto_update_disabled_update_to_latest_version_disabled.conf": (False, False),
        "waagent_auto_update_disabled_update_to_latest_version_enabled.conf": (False, True),
        "waagent_auto_update_enabled_update_to_latest_version_disabled.conf": (True, False),
        "waagent_auto_update_enabled_update_to_latest_version_enabled.conf": (True, True),
        "waagent_update_to_latest_version_disabled.conf": (True, False),
        "waagent_update_to_latest_version_enabled.conf": (True, True),
    }
    for name, (enabled, latest) in expected.items():
        config = conf.load(str(upstream / "config" / name), log_now=False)
        assert (config.auto_update_enabled, config.auto_update_update_to_latest_version) == (enabled, latest), name


def test_initial_goal_state_period():
    assert conf.parse("Extensions.GoalStatePeriod=20\n").extensions_initial_goal_state_period == 20
    c = conf.parse("Extensions.GoalStatePeriod=20\nExtensions.InitialGoalStatePeriod=3\n")
    assert c.extensions_initial_goal_state_period == 3
    assert "Extensions.InitialGoalStatePeriod = 6" in conf.show_configuration(conf.parse("Extensions.GoalStatePeriod=20"))


def test_crlf_file():
    config = conf.load(str(DATA / "crlf.conf"), log_now=False)
    assert config.extensions_goal_state_period == 9 and config.os_allow_http is True


def test_derived_paths():
    c = conf.parse("Lib.Dir=/srv/l\nOS.SshDir=/e/s\nProvisioning.SshHostKeyPairType=auto\nProvisioning.Agent=cloud-init\n"
                   "Protocol.EndpointDiscovery=static\nOS.EnableRDMA=y\nOS.CheckRdmaDriver=n\n")
    assert c.published_hostname_path == "/srv/l/published_hostname"
    assert c.disable_agent_path == "/srv/l/disable_agent"
    assert c.provisioned_marker_path == "/srv/l/provisioned"
    assert c.sshd_config_path == "/e/s/sshd_config"
    assert c.ssh_host_key_type == "rsa" and c.provisioning_ssh_host_key_pair_type == "auto"
    assert c.provisioning_enabled is False and conf.parse("Provisioning.Agent=waagent").provisioning_enabled
    assert c.dhcp_discovery_enabled is False
    assert c.rdma_enabled is True and c.check_rdma_driver is False
    assert c.agent_log_file == "/var/log/waagent.log"


def test_load_default_path_missing_and_empty(tmp_root):
    with pytest.raises(ConfigError, match=r"Missing configuration in /etc/waagent.conf"):
        conf.load()
    (tmp_root / "etc").mkdir()
    (tmp_root / "etc" / "waagent.conf").write_text("")
    with pytest.raises(ConfigError, match=r"Empty configuration in /etc/waagent\.conf"):
        conf.load()
    (tmp_root / "etc" / "waagent.conf").write_bytes(b"Lib.Dir=/l\xff\xfeib\nLogs.Verbose=y\n")
    config = conf.load()
    assert config.path == "/etc/waagent.conf" and config.logs_verbose is True
    assert config.lib_dir.startswith("/l")  # undecodable bytes do not stop the agent
    (tmp_root / "etc" / "dir.conf").mkdir()
    with pytest.raises(ConfigError):
        conf.load("/etc/dir.conf")


def test_huge_file_loads_fast(tmp_path):
    path = tmp_path / "big.conf"
    path.write_text("".join(f"Unknown{i}=value {i}\n" for i in range(50000)) + "Logs.Verbose=y\n")
    start = time.monotonic()
    config = conf.load(str(path), log_now=False)
    assert time.monotonic() - start < 2.0
    assert config.logs_verbose is True and len(config.diagnostics) == 50000


def test_show_configuration_of_own_files():
    for name in ("edge-cases", "crlf"):
        config = conf.load(str(DATA / f"{name}.conf"), log_now=False)
        expected = (DATA / f"{name}.show-configuration.txt").read_text()
        assert conf.show_configuration(config) == expected, name


def test_show_configuration_list_and_format():
    out = conf.show_configuration(Config()).splitlines()
    assert len(out) == 76
    keys = [line.split(" = ")[0] for line in out]
    assert keys == sorted(keys)
    assert keys.index("AutoUpdate.UpdateToLatestVersion") < keys.index("Autoupdate.Frequency") < \
        keys.index("DVD.MountPoint") < keys.index("Debug.AgentCpuQuota")
    for hidden in ("CGroups.Enabled", "Monitor.NetworkConfigurationChanges", "Debug.EnableRsmDowngrade",
                   "Debug.SelfUpdateHotfixFrequency", "Debug.SelfUpdateRegularFrequency"):
        assert hidden not in keys
    assert "Debug.AutoUpdateHotfixFrequency = 14400" in out and "Debug.AutoUpdateNormalFrequency = 86400" in out
    assert "Debug.EnableCgroupV2ResourceLimiting = False" in out
    assert "HttpProxy.Port = None" in out and "Logs.Console = True" in out


def test_shipped_conf_matches_the_stock_values():
    shipped = conf.load(str(REPO / "config" / "waagent.conf"), log_now=False)
    assert shipped.diagnostics == []
    text = (REPO / "config" / "waagent.conf").read_text()
    for opt in conf.OPTIONS:  # every option is at least mentioned (commented out with its default)
        if opt.attr:
            assert opt.key + "=" in text, opt.key


def test_import_is_cheap():
    code = ("import sys, guestagent.conf; "
            "print(sorted(m for m in ('dataclasses', 'inspect', 'lxml', 'cryptography', 'subprocess', "
            "'guestagent.osutil.system') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
