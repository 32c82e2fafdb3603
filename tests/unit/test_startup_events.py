"""The ext-handler's start-up events, worded as upstream 2.15's (issue 14): OSInfo, ProtocolEndpoint,
ConfigurationChange."""

from __future__ import annotations

import io
import json
import re

from guestagent import conf, log
from guestagent.exthandler import startup
from guestagent.osutil.distros import make, osutil_name


def _events(lib_dir) -> list:
    out = []
    for f in sorted((lib_dir / "events").iterdir()):
        p = {x["name"]: x["value"] for x in json.loads(f.read_text())["parameters"]}
        out.append((p["Operation"], p["OperationSuccess"], p["Message"]))
    return out


def test_identity_events(tmp_path):
    info = startup.os_info_message(make("debian", "12"), "walinuxagent")
    startup.send_identity("127.0.0.1", info, str(tmp_path))
    startup.send_identity(startup.KNOWN_WIRESERVER_IP, info, str(tmp_path))
    (op1, ok1, m1), (op2, _, m2), (op3, _, _) = _events(tmp_path)
    assert (op1, ok1, m1) == ("ProtocolEndpoint", True,
                              "Protocol endpoint (127.0.0.1) is not known wireserver ip: 168.63.129.16")
    assert op2 == op3 == "OSInfo"
    assert re.fullmatch(r"Distro: debian-12; OSUtil: DebianOSModernUtil; AgentService: walinuxagent; "
                        r"Python: \d+\.\d+\.\d+; Arch: \S+; systemd: (True|False); systemd_version: [^;]*; "
                        r"LISDrivers: [^;]*; logrotate: [^;]*;", m2), m2


def test_start_log_names_the_familys_osutil_and_service(tmp_path):
    """The ext-handler's first lines say which upstream OS-util the distribution got and its agent
    service, as upstream's do (a RHEL 9 VM: RedhatOSModernUtil, waagent), not a fixed text."""
    stream = io.StringIO()
    log.add_appender("test", log.StreamAppender(log.INFO, stream))
    try:
        message = startup.log_start(make("rhel", "9.4"))
    finally:
        log.remove_appender("test")
    assert message.startswith("Distro: rhel-9.4; OSUtil: RedhatOSModernUtil; AgentService: waagent; "), message
    lines = stream.getvalue()
    assert "Goal State Agent version" in lines and "CPU Arch: " in lines
    assert lines.count("OSUtil: ") == 1 and message in lines, lines


def test_osutil_names_follow_upstreams_factory():
    assert [osutil_name(make(*d)) for d in (("ubuntu", "22.04"), ("ubuntu", "16.04"), ("debian", "12"),
                                            ("rhel", "9.2"), ("centos", "7.9"), ("arch", ""))] == [
        "Ubuntu18OSUtil", "Ubuntu16OSUtil", "DebianOSModernUtil", "RedhatOSModernUtil", "RedhatOSUtil", "ArchUtil"]


def test_configuration_changes(tmp_path):
    assert startup.configuration_changes(conf.parse("")) == [
        "OS.EnableFirewall is set to False, not processing the operation"]  # upstream default: off
    changed = conf.parse("Extensions.GoalStatePeriod=2\nExtensions.Enabled=n\nAutoUpdate.Enabled=n\n"
                         "OS.EnableFirewall=y\nOS.EnableFirewallPeriod=30\nLib.Dir=/srv/waagent\n")
    assert startup.configuration_changes(changed) == [
        f"Extensions.GoalStatePeriod changed from its default: 6. New value: 2. {startup.PERIOD_NOTE}",
        f"Extensions.InitialGoalStatePeriod changed from its default: 6. New value: 2. {startup.PERIOD_NOTE}",
        "Extensions.Enabled is set to False, not processing the operation",
        "AutoUpdate.Enabled is set to False, not processing the operation",
        "AutoUpdate.UpdateToLatestVersion is set to False, not processing the operation",
        "OS.EnableFirewallPeriod changed from its default: 300. New value: 30. ",
        "lib dir is in an unexpected location: /srv/waagent"]
    startup.send_configuration_changes(changed, str(tmp_path))
    assert {op for op, *_ in _events(tmp_path)} == {"ConfigurationChange"}
