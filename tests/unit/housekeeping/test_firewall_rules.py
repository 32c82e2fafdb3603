"""The firewall rules as upstream 2.15 writes them, the persistence unit and script, the report limit."""

from __future__ import annotations

import ast

import pytest

from guestagent import conf
from guestagent.exthandler import firewall as fw
from guestagent.osutil import distros, firewall


def test_iptables_rules_in_chain_order():
    rules = firewall.iptables_rules("168.63.129.16", 0)
    assert [name for name, _ in rules] == ["ACCEPT DNS", "ACCEPT", "DROP"]
    lines = [" ".join(["-A", "OUTPUT", *rule]) for _, rule in rules]
    assert lines == [
        "-A OUTPUT -d 168.63.129.16 -p tcp --destination-port 53 -j ACCEPT",
        "-A OUTPUT -d 168.63.129.16 -p tcp -m owner --uid-owner 0 -j ACCEPT",
        "-A OUTPUT -d 168.63.129.16 -p tcp -m conntrack --ctstate INVALID,NEW -j DROP",
    ]


def test_nft_script_is_one_table_one_chain_one_rule():
    assert firewall.nft_script("168.63.129.16", 0).splitlines() == [
        "add table ip walinuxagent",
        "add chain ip walinuxagent output { type filter hook output priority 0 ; policy accept ; }",
        "add rule ip walinuxagent output ip daddr 168.63.129.16 tcp dport != 53 skuid != 0 ct state invalid,new "
        "counter drop",
    ]


def test_no_tool_no_manager(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(firewall.FirewallManagerNotAvailableError, match="no known command-line tools"):
        firewall.create("168.63.129.16")


def _config(tmp_path, extra: str = ""):
    return conf.parse(f"Lib.Dir={tmp_path}/var/lib/waagent\nOS.EnableFirewall=y\n{extra}")


@pytest.mark.parametrize("name, version, unit", [
    ("debian", "12", "/lib/systemd/system/walinuxagent-network-setup.service"),
    ("ubuntu", "22.04", "/lib/systemd/system/walinuxagent-network-setup.service"),
    ("rhel", "9.4", "/usr/lib/systemd/system/waagent-network-setup.service"),
])
def test_network_setup_unit_name_and_place(tmp_root, name, version, unit):
    p = fw.PersistFirewallRules(_config(tmp_root), "168.63.129.16", distros.make(name, version))
    assert p.unit_path == unit


def test_image_mode_rhel_writes_the_unit_under_etc(tmp_root):
    (tmp_root / "run").mkdir()
    (tmp_root / "run/ostree-booted").write_text("")
    p = fw.PersistFirewallRules(_config(tmp_root), "168.63.129.16", distros.make("rhel", "9.4"))
    assert p.unit_path == "/etc/systemd/system/waagent-network-setup.service"


def test_unit_and_script_text(tmp_root):
    p = fw.PersistFirewallRules(_config(tmp_root), "168.63.129.16", distros.make("debian", "12"))
    unit = p.unit_text()
    assert "# This unit file (Version=1.4) was created by the Azure VM Agent." in unit
    for line in ("Type=oneshot", "After=local-fs.target", "Before=network-pre.target", "Wants=network-pre.target",
                 "DefaultDependencies=no", f"ConditionPathExists={p.script}", "RemainAfterExit=yes",
                 "WantedBy=network.target"):
        assert line in unit.splitlines()
    assert p.script.endswith("/var/lib/waagent/waagent-network-setup.py")
    script = p.script_text()
    ast.parse(script)  # valid Python
    assert "--setup-firewall=168.63.129.16" in script


class _Manager:
    """Stands in for the firewall tool: the report limit is what is tested here."""

    tool, version = "stub", "0"

    def __init__(self):
        self.present = False
        self.setups = 0

    def check(self):
        return self.present

    def setup(self):
        self.setups += 1

    def remove(self):
        pass

    def get_state(self):
        return "state"


def test_reset_reports_are_limited_to_three_per_twelve_hours(tmp_root):
    now = [1000.0]
    op = fw.EnableFirewall(_config(tmp_root), lambda: "168.63.129.16", clock=lambda: now[0], persist=False)
    op.initialized = True
    op.manager = _Manager()
    events_dir = tmp_root / "var/lib/waagent/events"
    for _ in range(5):  # every run finds the rules gone: 2 reports a run
        op()
    assert op.manager.setups == 5
    assert len(list(events_dir.glob("*.tld"))) == 3
    now[0] += 12 * 3600 + 1
    op()
    assert len(list(events_dir.glob("*.tld"))) == 5
    text = "".join(p.read_text() for p in events_dir.glob("*.tld"))
    assert "ResetFirewall" in text and "[WARNING] The firewall has not been setup. Will set it up." in text
