"""The WireServer firewall with real iptables and nft rules inside the sandbox's network namespace
(spec 05 §11). The WireServer is emulated on the sandbox's 127.63.129.16 (a loopback address of that
namespace); nothing leaves it. Both backends are exercised: iptables (here iptables-nft, the backend
upstream prefers when the binary exists) and nft (what upstream uses when iptables is absent).
"""

from __future__ import annotations

import json
import shutil

import pytest

WIRE = "127.63.129.16"

# Runs inside: a server on WIRE:80 and WIRE:53, then root and nobody (uid 65534) try to connect.
PROBE = r"""
import json, os, socket, threading
servers = []
for port in (80, 53):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((WIRE, port)); s.listen(16); servers.append(s)
    threading.Thread(target=lambda s=s: [c.close() for c, _ in iter(s.accept, None)], daemon=True).start()
def attempt(port):
    c = socket.socket(); c.settimeout(0.5)
    try:
        c.connect((WIRE, port)); return "ok"
    except OSError as e:
        return type(e).__name__
    finally:
        c.close()
result = {"root": {p: attempt(p) for p in (80, 53)}}
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.setgid(65534); os.setuid(65534)
    os.write(w, json.dumps({p: attempt(p) for p in (80, 53)}).encode()); os._exit(0)
os.waitpid(pid, 0); os.close(w)
result["nobody"] = json.loads(os.read(r, 4096))
print(json.dumps(result))
""".replace("WIRE", repr(WIRE))

CONF = "Lib.Dir=/var/lib/waagent\nOS.EnableFirewall=y\n"


def reachability(sb) -> dict:
    return json.loads(sb.python(PROBE, timeout=30).stdout)


def events(sb) -> list[dict]:
    d = sb.host_path("/var/lib/waagent/events")
    out = []
    for p in sorted(d.glob("*.tld")) if d.exists() else []:
        out.append({x["name"]: x["value"] for x in json.loads(p.read_text())["parameters"]})
    return out


OPEN = {"root": {"80": "ok", "53": "ok"}, "nobody": {"80": "ok", "53": "ok"}}
GUARDED = {"root": {"80": "ok", "53": "ok"}, "nobody": {"80": "TimeoutError", "53": "ok"}}


@pytest.fixture
def sb(sandbox):
    if not shutil.which("iptables") or not shutil.which("nft"):
        pytest.skip("iptables and nft are needed (apt: iptables nftables)")
    sandbox.write_file("/etc/waagent.conf", CONF)
    return sandbox


def test_setup_firewall_command_lets_only_root_reach_the_wireserver(sb):
    assert reachability(sb) == OPEN
    res = sb.run([_python(), "-m", "guestagent.cli", f"-setup-firewall={WIRE}"], timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Successfully set the firewall rules" in res.stdout
    listing = sb.run(["iptables", "-w", "-t", "security", "-S", "OUTPUT"]).stdout.splitlines()
    assert listing[1:] == [
        f"-A OUTPUT -d {WIRE}/32 -p tcp -m tcp --dport 53 -j ACCEPT",
        f"-A OUTPUT -d {WIRE}/32 -p tcp -m owner --uid-owner 0 -j ACCEPT",
        f"-A OUTPUT -d {WIRE}/32 -p tcp -m conntrack --ctstate INVALID,NEW -j DROP",
    ]
    assert reachability(sb) == GUARDED
    # a second run (e.g. the unit at the next boot with the rules still there) adds no duplicates
    sb.run([_python(), "-m", "guestagent.cli", f"--setup-firewall={WIRE}"], timeout=60)
    assert len(sb.run(["iptables", "-w", "-t", "security", "-S", "OUTPUT"]).stdout.splitlines()) == 4
    assert any(e["Operation"] == "Firewall" and e["Message"] == "Successfully set the firewall rules"
               for e in events(sb))


def test_setup_firewall_without_tools_exits_1(sb):
    res = sb.run([_python(), "-m", "guestagent.cli", f"-setup-firewall={WIRE}"],
                 env={"PATH": "/usr/bin:/bin"}, timeout=60, check=False)  # no iptables, no nft
    assert res.returncode == 1
    assert "Unable to add firewall rules" in res.stdout


ENV_OP = r"""
import json, sys
from guestagent import conf, log
from guestagent.exthandler.firewall import EnableFirewall
log.setup(log_file=None)
op = EnableFirewall(conf.load("/etc/waagent.conf"), lambda: WIRE)
op()
print("RUN1", type(op.manager).__name__, flush=True)
import subprocess; subprocess.run(TAMPER)
op()
print("RUN2", op.resets, flush=True)
""".replace("WIRE", repr(WIRE))


@pytest.mark.parametrize("backend", ["iptables", "nft"])
def test_periodic_check_repairs_tampered_rules(sb, backend):
    env = None
    if backend == "nft":  # iptables absent: upstream falls back to nft
        sb.run(["mkdir", "-p", "/run/nft-only"])
        sb.run(["ln", "-s", shutil.which("nft"), "/run/nft-only/nft"])
        env = {"PATH": "/run/nft-only:/usr/bin:/bin"}
    res = sb.python(ENV_OP.replace("TAMPER", repr(_tamper(backend))), env=env, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    expected = "IpTables" if backend == "iptables" else "NfTables"
    assert f"RUN1 {expected}" in res.stdout and "RUN2 1" in res.stdout
    assert "The firewall is not configured correctly" in res.stdout or "has not been setup" in res.stdout
    assert reachability(sb) == GUARDED
    if backend == "nft":
        table = json.loads(sb.run(["nft", "--json", "list", "table", "walinuxagent"]).stdout)
        assert len([i for i in table["nftables"] if "rule" in i]) == 1
        assert "ip security" not in sb.run(["nft", "list", "tables"]).stdout
    ops = [e["Operation"] for e in events(sb)]
    assert "Firewall" in ops and "ResetFirewall" in ops and "PersistFirewallRules" in ops


def _python() -> str:
    from guestagent.lab.sandbox import interpreter

    return interpreter()


def _tamper(backend: str) -> list[str]:
    if backend == "iptables":  # drop the owner rule: "partially set up"
        return ["iptables", "-w", "-t", "security", "-D", "OUTPUT", "-d", WIRE, "-p", "tcp", "-m", "owner",
                "--uid-owner", "0", "-j", "ACCEPT"]
    return ["nft", "add", "rule", "ip", "walinuxagent", "output", "ip", "daddr", WIRE, "counter", "accept"]


NETWORK_SETUP = r"""
from guestagent import conf, log
from guestagent.exthandler.firewall import PersistFirewallRules
from guestagent.osutil import distros
log.setup(log_file=None)
PersistFirewallRules(conf.load("/etc/waagent.conf"), WIRE, distros.make("debian", "12")).setup()
""".replace("WIRE", repr(WIRE))


def test_network_setup_unit_sets_the_rules_at_boot(sb):
    # "Booted with systemd" without a systemd: systemctl works on the unit files offline (the real
    # systemd enable/boot is the VM tier's).
    sb.run(["mkdir", "-p", "/run/systemd/system"])
    res = sb.python(NETWORK_SETUP, env={"SYSTEMD_OFFLINE": "1"}, timeout=60, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    unit = sb.read_text("/lib/systemd/system/walinuxagent-network-setup.service")
    assert "Version=1.4" in unit and "ExecStart=" in unit
    script = "/var/lib/waagent/waagent-network-setup.py"
    assert f"--setup-firewall={WIRE}" in sb.read_text(script)
    assert sb.host_path("/etc/systemd/system/network.target.wants/walinuxagent-network-setup.service").is_symlink()
    # "boot": the unit's ExecStart runs the script, which runs the agent's -setup-firewall
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart=")).split("=", 1)[1]
    assert reachability(sb) == OPEN
    sb.run(exec_start.split(), timeout=60)
    assert reachability(sb) == GUARDED
    # the next start: the unit is current and enabled, only the script is rewritten
    res = sb.python(NETWORK_SETUP, env={"SYSTEMD_OFFLINE": "1"}, timeout=60)
    assert "already enabled. No change needed." in res.stdout


def test_no_systemd_no_unit(sb):
    res = sb.python(NETWORK_SETUP, timeout=60)
    assert "Did not detect systemd, will not set walinuxagent-network-setup.service" in res.stdout
    assert not sb.host_path("/lib/systemd/system/walinuxagent-network-setup.service").exists()
