"""waagent.conf conformance against upstream's own files (skipped without ../shared)."""

from __future__ import annotations

from pathlib import Path

from guestagent import conf

DATA = Path(__file__).resolve().parents[1] / "data" / "conf"
REPO = Path(__file__).resolve().parents[2]


def _active(path: Path) -> dict:
    return {key: value for _, key, value in conf.parse_lines(path.read_text())}


def test_stock_file_show_configuration(upstream):
    """The stock file gives exactly the 76 lines upstream prints (expected lines derived from the
    option tables of 2.15 and the stock values; checked against upstream's conf.py)."""
    config = conf.load(str(upstream / "config" / "upstream-default-waagent.conf"), log_now=False)
    assert config.diagnostics == []
    out = conf.show_configuration(config)
    assert out == (DATA / "stock.show-configuration.txt").read_text()
    lines = out.splitlines()
    assert len(lines) == 76
    assert lines[:5] == ["AutoUpdate.Enabled = True", "AutoUpdate.GAFamily = Prod",
                         "AutoUpdate.UpdateToLatestVersion = True", "Autoupdate.Frequency = 3600",
                         "DVD.MountPoint = /mnt/cdrom/secure"]
    assert lines[-2:] == ["ResourceDisk.MountPoint = /mnt/resource", "ResourceDisk.SwapSizeMB = 0"]
    assert "Debug.AgentMemoryQuota = 31457280" in lines
    assert "OS.OpensslPath = /usr/bin/openssl" in lines  # the stock None means unset
    assert "OS.EnableFirewallPeriod = 30" in lines and "OS.RootDeviceScsiTimeout = 300" in lines


def test_stock_file_effective_values(upstream):
    config = conf.load(str(upstream / "config" / "upstream-default-waagent.conf"), log_now=False)
    assert config.provisioning_delete_root_password and config.provisioning_regenerate_ssh_host_key_pair
    assert config.resource_disk_format and config.resource_disk_filesystem == "ext4"
    assert config.os_enable_firewall and config.os_enable_firewall_period == 30
    assert config.os_root_device_scsi_timeout == "300" and config.os_openssl_path == "/usr/bin/openssl"
    assert config.logs_console is True and config.resource_disk_mount_options is None


def test_upstream_test_conf(upstream):
    config = conf.load(str(upstream / "test_waagent.conf"), log_now=False)
    assert config.provisioning_ssh_host_key_pair_type == "rsa"  # an end-of-line comment is cut
    assert config.provisioning_decode_custom_data is False  # "n#comment"
    assert config.os_enable_fips is True
    assert config.os_ssh_client_alive_interval == 42
    assert config.os_ssh_dir == "/notareal/path"
    assert config.os_enable_firewall is False
    assert config.values.get("FauxKey1") == "Value1" and config.values.get("FauxKey2") == "Value2 Value2"
    assert config.values.get("FauxKey3") == "delalloc,rw,noatime,nobarrier,users,mode=777"
    assert config.values.get("") == "Value0"
    unknown = sorted(m.split("'")[1] for level, m in config.diagnostics if level == "INFO")
    assert unknown == ["", "FauxKey1", "FauxKey2", "FauxKey3"]
    assert [m for level, m in config.diagnostics if level == "WARNING"] == []


def test_shipped_conf_has_the_stock_keys_and_values(upstream):
    stock = _active(upstream / "config" / "upstream-default-waagent.conf")
    shipped = _active(REPO / "config" / "waagent.conf")
    assert shipped == stock
