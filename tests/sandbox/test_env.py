"""The EnvHandler thread for real inside the sandbox (spec 05 §6, §10, §11): its operations run on a
PeriodicThread with short periods; the hostname is changed with ``hostname`` in the sandbox's UTS
namespace and must be noticed and published; the firewall is set up by the first firewall run.

``ifdown``/``ifup`` (ifupdown) are not installed here; as in the provisioning tests, two-line
stand-ins record their argv and bounce the link with ``ip``.
"""

from __future__ import annotations

import json

WIRE = "127.63.129.16"
CONF = """\
Lib.Dir=/var/lib/waagent
Provisioning.MonitorHostName=y
Provisioning.MonitorHostNamePeriod=1
OS.EnableFirewall=y
OS.EnableFirewallPeriod=1
OS.RootDeviceScsiTimeout=300
"""
STUB = '#!/bin/sh\necho "$(basename "$0") $*" >> /run/ifupdown.log\nip link set "$1" {0}\n'

THREAD = r"""
import json, os, socket, subprocess, threading, time
from guestagent import conf, log
from guestagent.exthandler import env
from guestagent.periodic import PeriodicThread
log.setup(log_file="/var/log/waagent.log")
class Ctx:
    config = conf.load("/etc/waagent.conf")
    protocol = type("P", (), {"endpoint": WIRE})()
    lib_dir = "/var/lib/waagent"
    stop_event = threading.Event()
ops = env.operations(Ctx)
thread = PeriodicThread("EnvHandler", ops, Ctx.stop_event)
thread.start()
time.sleep(1.5)
subprocess.run(["hostname", "renamed-vm"], check=True)
deadline = time.monotonic() + 20
while time.monotonic() < deadline and open("/var/lib/waagent/published_hostname").read() != "renamed-vm":
    time.sleep(0.2)
Ctx.stop_event.set()
thread.join(10)
result = {o.name: [o.runs, o.failures, o.last_error] for o in ops}
result["pyroute2 loaded"] = "pyroute2" in __import__("sys").modules
print("RESULT " + json.dumps(result))
""".replace("WIRE", repr(WIRE))


def test_env_thread_publishes_a_hostname_change_and_guards_the_wireserver(sandbox):
    sb = sandbox
    sb.write_file("/etc/waagent.conf", CONF)
    sb.write_file("/etc/dhcp/dhclient.conf", 'send host-name "sandbox";\nrequest subnet-mask, routers;\n')
    sb.write_file("/var/lib/waagent/published_hostname", "sandbox")
    sb.write_file("/run/stubs/ifdown", STUB.format("down"), mode=0o755)
    sb.write_file("/run/stubs/ifup", STUB.format("up"), mode=0o755)
    from guestagent.lab.sandbox import DEFAULT_PATH, interpreter

    path = f"/run/stubs:{interpreter().rsplit('/', 1)[0]}:{DEFAULT_PATH}"
    res = sb.python(THREAD, env={"PATH": path, "GUESTAGENT_DISTRO": "debian:12"}, timeout=90, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    ops = json.loads(res.stdout.split("RESULT ", 1)[1])
    # the publish asked netlink for the interface through the helper interpreter: the thread's process never
    # loads pyroute2
    assert ops.pop("pyroute2 loaded") is False
    assert set(ops) == {"RemovePersistentNetworkRules", "MonitorDhcpClientRestart", "EnableFirewall",
                        "SetRootDeviceScsiTimeout", "MonitorHostNameChanges"}
    assert all(failures == 0 for _, failures, _ in ops.values()), ops
    assert ops["EnableFirewall"][0] >= 2  # the start-up set-up, then periodic checks
    assert "EnvMonitor: Detected hostname change: sandbox -> renamed-vm" in res.stdout
    assert sb.read_text("/etc/hostname") == "renamed-vm"
    assert sb.read_text("/var/lib/waagent/published_hostname") == "renamed-vm"
    assert 'send host-name "renamed-vm";' in sb.read_text("/etc/dhcp/dhclient.conf")
    assert sb.read_text("/run/ifupdown.log").splitlines()[:2] == ["ifdown eth0", "ifup eth0"]
    rules = sb.run(["iptables", "-w", "-t", "security", "-S", "OUTPUT"]).stdout
    assert rules.count(WIRE) == 3
