"""Takeover and rollback against the real agent, on one VM: Debian's own ``waagent`` package (2.7.3,
from Debian's archive) provisions the VM and installs + enables the sample extension; this project's
.deb and the transitional ``waagent`` built beside it are installed over it with one plain ``apt-get
install`` (its conffile kept): dpkg UPGRADES Debian's waagent to the transitional package, running its
postrm with ``upgrade`` (never ``remove``, which deletes /var/lib/waagent: no copy of the state is made);
ours handles a new sequence number and an update to a new version; then Debian's ``waagent`` is
installed back (a downgrade of the transitional package, guestagent removed) and does the same. Neither switch provisions again or
reinstalls the extension; each new agent runs the extension's enable once for the unchanged sequence
number (as upstream does on every start of its ext-handler) and the handler's status stays
Ready/success in the uploaded status blob across the switch. Cost: one 2-vCPU VM, ~7-8 min (TCG)."""

from __future__ import annotations

import re
import tempfile
import threading
import time
from pathlib import Path
from typing import List

import pytest
from test_vm_scenarios import _handler_status
from vmtier import image
from vmtier.platform import SAMPLE_HANDLER, default_scenario

from guestagent.version import AGENT_VERSION, GUESTAGENT_VERSION

HANDLER = "GuestAgent.Fabric.Sample"
TRANSITIONAL = f"{AGENT_VERSION}+guestagent{GUESTAGENT_VERSION}"   # scripts/build-deb's waagent
UPSTREAM_DEBS = "/var/tmp/upstream-waagent"   # in the guest: Debian's .debs, kept for the rollback
# dpkg --debug=2 prints every maintainer script it runs with its arguments (checked below)
APT = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --allow-downgrades "
       "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold -o Dpkg::Options::=--debug=2 ")

# Debian's walinuxagent.service has ConditionVirtualization=microsoft: systemd skips it unless the
# hypervisor is Hyper-V. The VM tier's QEMU is not Hyper-V (it emulates Azure's devices and fabric, not
# its hypervisor), so the image clears that condition with a drop-in; nothing else of the unit changes.
NOT_HYPERV = r"""
mkdir -p /etc/systemd/system/walinuxagent.service.d
printf '[Unit]\nConditionVirtualization=\n' > /etc/systemd/system/walinuxagent.service.d/10-vmtier-qemu.conf
systemctl is-enabled walinuxagent.service >/dev/null
dpkg-query -W -f='${Package} ${Version}' waagent
"""


@pytest.fixture(scope="module")
def upstream_layer(vm_images):
    return image.package_layer(vm_images[0], ["waagent"], script=NOT_HYPERV, keep_debs=UPSTREAM_DEBS)


@pytest.fixture(scope="module")
def our_debs():
    """guestagent's .deb and the transitional waagent's: (name, bytes) each."""
    with tempfile.TemporaryDirectory() as d:
        yield [(deb.name, deb.read_bytes()) for deb in image.build_debs(Path(d))]


def _scenario(vm) -> dict:
    """Provisioning plus the sample extension: 1.0.0 seq 0 (2.7.3), seq 1 and an update to 1.1.0 with
    seq 2 (ours), seq 3 and an update to 1.2.0 with seq 4 (2.7.3 again)."""
    data = default_scenario(vm, extensions=True)
    data["handlers"] = [{"name": HANDLER, "version": v, "path": str(SAMPLE_HANDLER)}
                        for v in ("1.0.0", "1.1.0", "1.2.0")]
    first = data["steps"][0]["extensions"][0]
    data["steps"] += [{"extensions": [dict(first, version=v, seqNo=s)]}
                      for v, s in (("1.0.0", 1), ("1.1.0", 2), ("1.1.0", 3), ("1.2.0", 4))]
    return data


def _identity(vm) -> dict:
    """What provisioning sets and what neither switch may change."""
    return {k: vm.run(cmd, check=False).out for k, cmd in {
        "shadow": "getent shadow azureuser", "passwd": "getent passwd azureuser", "hostname": "hostname",
        "host keys": "cat /etc/ssh/ssh_host_*_key.pub", "keys": "cat /home/azureuser/.ssh/authorized_keys",
        "sudoers": "cat /etc/sudoers.d/waagent", "provisioned": "stat -c %Y /var/lib/waagent/provisioned",
        "ovf-env": "stat -c %Y /var/lib/waagent/ovf-env.xml"}.items()}


def _commands(vm) -> list:
    """The handler's commands so far, from its CommandExecution.log (both agents append the command's
    output to it; it survives the uninstall of a version): ["install 0", "enable 0", ...]."""
    text = vm.run(f"cat /var/log/azure/{HANDLER}/CommandExecution.log 2>/dev/null || true").out
    return [f"{m.group(1)} {m.group(2)}" for m in re.finditer(r"sample extension: (\w+) \(seq (\d+)", text)]


def _package(vm) -> str:
    return vm.run("dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\n' waagent guestagent 2>/dev/null "
                  "| grep ' ii' || true", check=False).out.strip()


def _settings_status(h) -> dict:
    return (((h or {}).get("runtimeSettingsStatus") or {}).get("settingsStatus") or {}).get("status") or {}


def _agent_version(vm) -> str:
    return str(((vm.fabric.status_blob or {}).get("aggregateStatus") or {}).get("guestAgentStatus", {})
               .get("version"))


def _reported(vm, version: str, seq: int, agent: str):
    """The blob uploaded by ``agent`` (a version prefix) says the handler ``version`` enabled ``seq``."""
    h = _handler_status(vm.fabric.status_blob, HANDLER)
    s = _settings_status(h)
    return h if agent in _agent_version(vm) and h and h.get("status") == "Ready" \
        and h.get("handlerVersion") == version and s.get("status") == "success" \
        and f"seq {seq}" in str(s.get("formattedMessage")) else None


class BlobWatch:
    """Samples the uploaded status blob every 0.5 s while an agent is swapped: every sample must show
    the handler Ready with its last enable's success (no gap, no transitioning, no error)."""

    def __init__(self, vm):
        self.vm, self.samples, self.stop = vm, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            h = _handler_status(self.vm.fabric.status_blob, HANDLER)
            s = _settings_status(h)
            sample = (_agent_version(self.vm), (h or {}).get("status"), (h or {}).get("handlerVersion"),
                      s.get("status"), str(s.get("formattedMessage", {}).get("message")))
            if not self.samples or self.samples[-1] != sample:
                self.samples.append(sample)

    def done(self) -> list:
        self.stop.set()
        self.thread.join()
        return self.samples


def _state(vm, what: str) -> None:
    """Print what the agents share, for the record (the report compares the two agents' files)."""
    print(f"--- {what}: shared state ---\n" + vm.run(
        "cd /var/lib/waagent && find . -maxdepth 1 | sort | tr '\\n' ' '; echo; "
        "for d in GuestAgent.Fabric.Sample-*; do echo \"$d: $(cd $d && find . -path ./bin -prune -o -type f -print "
        "| sort | tr '\\n' ' ')\"; for f in $d/config/HandlerState $d/config/HandlerStatus; do "
        "echo \"$f: $(cat $f 2>/dev/null | head -c 400)\"; done; done; ls events | head -5; "
        "echo events: $(ls events | wc -l); ls /etc/logrotate.d | tr '\\n' ' '; echo; "
        "dpkg-query -W -f='${Package} ${db:Status-Abbrev}\\n' waagent guestagent 2>/dev/null; "
        "! command -v logrotate >/dev/null || logrotate -d /etc/logrotate.conf 2>&1 | grep -i 'error\\|waagent'",
        check=False).out)


def _switch(vm, debs: str, what: str, agent: str, version: str, seq: int, before: dict) -> List[str]:
    """``apt-get install`` ``debs`` over the running agent; the new agent runs enable once for the
    unchanged sequence number, provisions nothing, and the status stays continuous. Returns the
    maintainer scripts dpkg ran, with their arguments."""
    _state(vm, f"before the {what}")
    cmds = _commands(vm)
    watch = BlobWatch(vm)
    t0 = time.monotonic()
    out = vm.run(APT + debs + " 2>&1", timeout=400).out
    scripts = re.findall(r"fork/exec (\S+) \((.*?) \)", out)
    calls = [f"{Path(path).name}{args}" for path, args in scripts]
    print(f"{what}: apt-get {time.monotonic() - t0:.0f}s; {_package(vm)}\n"
          + "\n".join(line for line in out.splitlines() if "fork/exec" not in line)[-1500:]
          + f"\n{what}: maintainer scripts: {calls}")
    vm.machine.wait_for(f"{what}: the new agent's upload after its enable",
                        lambda: _reported(vm, version, seq, agent) and len(_commands(vm)) > len(cmds), 420, 2)
    print(f"{what}: the new agent's status {time.monotonic() - t0:.0f}s after apt-get started")
    time.sleep(15)   # a second enable would come within a goal-state period (6 s) or two
    samples = watch.done()
    print(f"{what}: status samples {samples}")
    assert _commands(vm) == [*cmds, f"enable {seq}"], (what, _commands(vm))
    bad = [s for s in samples if s[1:4] != ("Ready", version, "success")]
    assert not bad, (what, samples)
    assert _identity(vm) == before, f"{what}: provisioned again"
    assert vm.run(["systemctl", "is-active", "walinuxagent.service"]).out.strip() == "active"
    _state(vm, f"after the {what}")
    return calls


def _next(vm, what: str, agent: str, version: str, seq: int, expect: list) -> None:
    """A new goal state (fabric step): the agent runs ``expect``, then reports ``seq`` enabled."""
    cmds = _commands(vm)
    vm.fabric.advance()
    vm.machine.wait_for(f"{what}: seq {seq} reported", lambda: _reported(vm, version, seq, agent), 300, 2)
    assert _commands(vm)[len(cmds):] == expect, (what, _commands(vm)[len(cmds):])


def test_takeover_from_debian_waagent_and_rollback(azure_vm, upstream_layer, vm_images, our_debs):
    t0 = time.monotonic()
    vm = azure_vm(images=(vm_images[0], upstream_layer), conf={"ResourceDisk.Format": "n"}, timeout=1700)
    vm.scenario_dict = _scenario(vm)
    vm.start()
    vm.wait_ready()
    vm.wait_provisioned()
    assert _package(vm).startswith("waagent 2.7.3"), _package(vm)
    vm.machine.wait_for("2.7.3's status for seq 0", lambda: _reported(vm, "1.0.0", 0, "2.7.3"), 420, 3)
    assert _commands(vm) == ["install 0", "enable 0"], _commands(vm)
    before = _identity(vm)
    legacy = {"ExtensionsConfig.1.xml", "HostingEnvironmentConfig.xml", "Prod.1.manifest.xml",
              f"{HANDLER}.1.manifest.xml"}
    assert legacy <= set(vm.run("ls /var/lib/waagent").out.split())
    print(f"2.7.3 provisioned and enabled the extension in {time.monotonic() - t0:.0f}s")

    for name, data in our_debs:
        vm.machine.write(f"/var/tmp/{name}", data)
    # plain apt: Debian's waagent is upgraded to the transitional package, so its postrm gets "upgrade"
    # (its "remove" branch deletes /var/lib/waagent) and its prerm does not stop its agent (ours restarts)
    calls = _switch(vm, " ".join(f"/var/tmp/{name}" for name, _ in our_debs), "takeover", "2.15", "1.0.0", 0,
                    before)
    old = [c for c in calls if c.startswith("waagent.p")]
    assert f"waagent.postrm upgrade {TRANSITIONAL}" in old and not [c for c in old if " remove" in c], calls
    assert not vm.exists("/var/lib/waagent.takeover")
    # 2.7.3's goal-state copies beside the state are gone (upstream's ext-handler purges them at start)
    left = set(vm.run("ls /var/lib/waagent").out.split())
    assert not left & legacy and {"SharedConfig.xml", "GoalState.1.xml"} <= left, sorted(left)
    assert sorted(" ".join(p.split()) for p in _package(vm).splitlines()) == [f"guestagent {GUESTAGENT_VERSION} ii", f"waagent {TRANSITIONAL} ii"], \
        _package(vm)
    assert "2.15" in vm.run("/usr/sbin/waagent -version").out
    _next(vm, "ours", "2.15", "1.0.0", 1, ["enable 1"])
    # an update: the old version's disable and uninstall get the new goal state's sequence number
    _next(vm, "ours", "2.15", "1.1.0", 2, ["disable 2", "update 2", "uninstall 2", "install 2", "enable 2"])

    # the rollback: Debian's waagent downgrades the transitional package; guestagent, which Breaks it, is
    # removed (its postrm keeps /var/lib/waagent)
    calls = _switch(vm, f"{UPSTREAM_DEBS}/*.deb guestagent-", "rollback", "2.7.3", "1.1.0", 2, before)
    assert "guestagent.postrm remove" in calls, calls
    assert [" ".join(p.split()) for p in _package(vm).splitlines()] == ["waagent 2.7.3.0-4.1 ii"], _package(vm)
    _next(vm, "2.7.3 again", "2.7.3", "1.1.0", 3, ["enable 3"])
    _next(vm, "2.7.3 again", "2.7.3", "1.2.0", 4, ["disable 4", "update 4", "uninstall 4", "install 4", "enable 4"])
    print(f"takeover and rollback: {time.monotonic() - t0:.0f}s in all")
