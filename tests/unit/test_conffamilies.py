"""The committed config/<family>/waagent.conf files are exactly the rendering of the one table."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestagent import conf, conffamilies

CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.mark.parametrize("family", list(conffamilies.FAMILIES))
def test_committed_file_is_the_rendering(family):
    expected = conffamilies.render((CONFIG / "waagent.conf").read_text(), family)
    assert (CONFIG / family / "waagent.conf").read_text() == expected, \
        "run: python -m guestagent.conffamilies config"


def test_render_sets_drops_and_appends():
    text = conffamilies.render("# c\nOS.EnableRDMA=y\nLogs.Collect=y\nProvisioning.Agent=auto\n", "bigip")
    assert text.splitlines() == [
        "# c", "OS.EnableRDMA=n", "# Logs.Collect=y  (not set on bigip)", "Provisioning.Agent=auto", "",
        "# bigip defaults", "Role.StateConsumer=None", "Role.ConfigurationConsumer=None",
        "Role.TopologyConsumer=None", "Provisioning.MonitorHostName=n", "LBProbeResponder=y",
        "Lib.Dir=/shared/vadc/azure/waagent/", "OS.SshdConfigPath=/config/ssh/sshd_config"]


def test_mariner_family_defaults():
    config = conf.load(str(CONFIG / "mariner" / "waagent.conf"), log_now=False)
    assert config.diagnostics == []
    assert config.values["Provisioning.Enabled"] == "n" and not config.resource_disk_format
