"""Fixes found by running the agent under real systemd on a cgroup v2 guest (tests/vm/test_vm_cgroups.py).

Debian 12's systemd enables only ``memory pids`` at the root until some unit asks for CPU weights, so the
upstream branch "v2 without the cpu controller" is the common one there. systemctl is replaced by a
recorder at that one boundary (no systemd on this host); the VM tier runs the same paths for real.
"""

from __future__ import annotations

from types import SimpleNamespace

from guestagent.conf import Config
from guestagent.exthandler import cgroups, logcollector
from guestagent.exthandler.cgroups import CGroupConfigurator
from guestagent.osutil import cgroupfs
from guestagent.osutil.distros import make


class RecordingSystemd(cgroups.Systemd):
    def __init__(self, props=None):
        self.props = dict(props or {})
        self.calls: list = []

    def get_property(self, unit, prop):
        defaults = {"Slice": "azure.slice", "CPUQuotaPerSecUSec": "infinity"}
        return self.props.get((unit, prop), defaults.get(prop, "no"))

    def set_properties(self, unit, props):
        self.calls.append((unit, list(props)))
        for k, v in props:
            self.props[(unit, k)] = v


def _configurator(monkeypatch, tmp_root, controllers, props=None):
    (tmp_root / "run/systemd/system").mkdir(parents=True)
    h = cgroupfs.Hierarchy("v2", v2_root="/sys/fs/cgroup", v2_root_controllers=tuple(controllers))
    sd = RecordingSystemd(props)
    lines: list = []
    monkeypatch.setattr(cgroups.events, "add_event", lambda *a, **k: None)
    monkeypatch.setattr(cgroups.log, "info", lambda fmt, *a: lines.append(fmt.format(*a)))
    c = CGroupConfigurator(Config(), systemd=sd, hierarchy=h, distro=make("ubuntu", "22.04"))
    return c, sd, lines


def test_v2_without_cpu_at_root_monitors_logs_controllers_and_resets_a_stale_quota(monkeypatch, tmp_root):
    # an earlier run (with cpu enabled) left CPUQuota=50%; now cpu is not enabled at the root
    c, sd, lines = _configurator(monkeypatch, tmp_root, ("memory", "pids"),
                                 {("walinuxagent.service", "CPUQuotaPerSecUSec"): "500ms"})
    c.initialize()
    assert c.enabled
    assert "[CGI] The root cgroup path is /sys/fs/cgroup" in lines
    assert "[CGI] The cpu controller is not enabled at the root cgroup" in lines
    assert "[CGI] The memory controller is enabled at the root cgroup" in lines
    assert ("walinuxagent.service", [("CPUQuota", "")]) in sd.calls
    assert all(("CPUQuota", "50%") not in props for _, props in sd.calls)


def test_no_reset_when_no_quota_is_set(monkeypatch, tmp_root):
    c, sd, _ = _configurator(monkeypatch, tmp_root, ("memory",))
    c.initialize()
    assert all(("CPUQuota", "") not in props for _, props in sd.calls)


def test_v2_with_neither_cpu_nor_memory_at_root_stays_disabled(monkeypatch, tmp_root):
    c, _sd, lines = _configurator(monkeypatch, tmp_root, ("pids",))
    c.initialize()
    assert not c.enabled
    assert "[CGI] Agent cgroups enabled: False" in lines
    assert c.wrap_extension_command(["/bin/true"], "H") == ["/bin/true"]


def test_v2_with_cpu_sets_the_agent_quota(monkeypatch, tmp_root):
    c, sd, lines = _configurator(monkeypatch, tmp_root, ("cpu", "memory", "pids"))
    c.initialize()
    assert ("walinuxagent.service", [("CPUQuota", "50%")]) in sd.calls
    assert "[CGI] The cpu controller is enabled at the root cgroup" in lines


def test_periodic_collection_allowed_as_upstream():
    """Upstream: Logs.Collect and (cgroups enabled, or v2 with Debug.EnableCgroupV2ResourceLimiting)."""
    def allowed(enabled, v2, switch=None, collect=True):
        switch_text = "None" if switch is None else "yn"[not switch]
        conf = Config({"Logs.Collect": "yn"[not collect], "Debug.EnableCgroupV2ResourceLimiting": switch_text})
        return logcollector.is_periodic_collection_allowed(conf, SimpleNamespace(enabled=enabled, using_v2=v2))

    assert allowed(True, True, switch=False)       # was refused before the fix: v2 + enabled is enough
    assert allowed(True, False)
    assert allowed(False, True)                     # the switch defaults to on (upstream's getter default)
    assert not allowed(False, True, switch=False)
    assert not allowed(False, False)
    assert not allowed(True, True, collect=False)


def test_collector_finds_its_own_cgroup_and_requires_cpu_and_memory():
    """The periodic collector checks its controllers before collecting (05 §15.3: else exit 2)."""
    self_cgroup = "0::/azure.slice/azure-walinuxagent-logcollector.slice/collect-logs.scope\n"
    v2 = cgroupfs.Hierarchy("v2", v2_root="/sys/fs/cgroup", v2_root_controllers=("cpu", "memory", "pids"))
    path = "/sys/fs/cgroup/azure.slice/azure-walinuxagent-logcollector.slice/collect-logs.scope"
    assert logcollector.own_cgroup(v2, self_cgroup) == (path, path)
    no_cpu = cgroupfs.Hierarchy("v2", v2_root="/sys/fs/cgroup", v2_root_controllers=("memory", "pids"))
    assert logcollector.own_cgroup(no_cpu, self_cgroup) is None
    v1 = cgroupfs.Hierarchy("v1", v1_mounts={"cpu": "/sys/fs/cgroup/cpu,cpuacct", "memory": "/sys/fs/cgroup/memory"})
    v1_self = ("5:memory:/azure.slice/azure-walinuxagent-logcollector.slice/collect-logs.scope\n"
               "3:cpu,cpuacct:/azure.slice/azure-walinuxagent-logcollector.slice/collect-logs.scope\n")
    cpu, mem = logcollector.own_cgroup(v1, v1_self)
    assert cpu.startswith("/sys/fs/cgroup/cpu,cpuacct/azure.slice") and mem.startswith("/sys/fs/cgroup/memory/")
    assert logcollector.own_cgroup(cgroupfs.Hierarchy(None, "none"), self_cgroup) is None


def test_collector_memory_limits_as_upstream():
    mib = 1024 * 1024

    def usage(anon=0, cache=0, swap=None, events=None):
        return cgroupfs.MemoryUsage(anon, cache, swap, None, events)

    assert logcollector.memory_over_limit(usage(anon=20 * mib, cache=100 * mib, events=10)) is None
    assert "anon + swap" in logcollector.memory_over_limit(usage(anon=20 * mib, swap=6 * mib))
    assert "cache" in logcollector.memory_over_limit(usage(cache=156 * mib))
    assert "throttled events" in logcollector.memory_over_limit(usage(events=11))


def test_collector_exits_2_without_controllers_and_4_outside_its_slice(monkeypatch, tmp_root):
    proc = tmp_root / "proc/self"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text("0::/azure.slice/azure-walinuxagent-logcollector.slice/collect-logs.scope\n")
    monkeypatch.setattr(logcollector.time, "sleep", lambda s: None)
    monkeypatch.setattr(cgroupfs, "detect_host", lambda: cgroupfs.Hierarchy(
        "v2", v2_root="/sys/fs/cgroup", v2_root_controllers=("memory",)))
    assert logcollector._check_scope() == logcollector.INVALID_CGROUPS
    (proc / "cgroup").write_text("0::/system.slice/ssh.service\n")
    assert logcollector._check_scope() == logcollector.UNEXPECTED_CGROUP_PATH


class _Protocol:
    def __init__(self, fail=False):
        self.fail, self.bodies = fail, []

    def upload_logs(self, body):
        if self.fail:
            raise OSError("HGAP said 500")
        self.bodies.append(body)


def _periodic(tmp_root, exit_code, protocol=None):
    """A PeriodicLogCollection whose 'collector' is a real process exiting with ``exit_code``."""
    archive = tmp_root / "var/lib/waagent/logcollector/logs.zip"
    archive.parent.mkdir(parents=True, exist_ok=True)
    archive.write_bytes(b"PK-archive")
    ctx = SimpleNamespace(lib_dir="/var/lib/waagent", protocol=protocol or _Protocol(), config=Config())
    configurator = SimpleNamespace(logcollector_command=lambda argv: ["sh", "-c", f"exit {exit_code}"])
    return logcollector.PeriodicLogCollection(ctx, configurator), ctx.protocol


def test_periodic_run_uploads_and_logs_as_upstream(monkeypatch, tmp_root):
    lines: list = []
    monkeypatch.setattr(logcollector.log, "info", lambda fmt, *a: lines.append(fmt.format(*a)))
    monkeypatch.setattr(logcollector.events, "add_event", lambda *a, **k: None)
    job, protocol = _periodic(tmp_root, 0)
    job.run()
    assert protocol.bodies == [b"PK-archive"] and job.uploads == 1
    assert any(line.startswith("Successfully collected logs. Archive size: 10 b, elapsed time: ") for line in lines)
    assert "Successfully uploaded logs." in lines


def test_periodic_run_stops_on_2_or_3_and_after_three_4s(monkeypatch, tmp_root):
    monkeypatch.setattr(logcollector.events, "add_event", lambda *a, **k: None)
    for code in (logcollector.INVALID_CGROUPS, logcollector.GRACEFUL_KILL):
        job, protocol = _periodic(tmp_root, code)
        job.run()
        assert job.stopped_reason and protocol.bodies == []
    job, protocol = _periodic(tmp_root, logcollector.UNEXPECTED_CGROUP_PATH)
    job.run()
    job.run()
    assert not job.stopped_reason
    job.run()
    assert job.stopped_reason == "cgroup not in expected path in multiple runs"
    job.run()  # stopped: nothing runs any more
    assert protocol.bodies == []


def test_failed_upload_is_a_warning_not_an_exception(monkeypatch, tmp_root):
    warnings: list = []
    monkeypatch.setattr(logcollector.log, "warn", lambda fmt, *a: warnings.append(fmt.format(*a)))
    monkeypatch.setattr(logcollector.events, "add_event", lambda *a, **k: None)
    job, _ = _periodic(tmp_root, 0, _Protocol(fail=True))
    job.run()
    assert warnings == ["Failed to upload logs. Error: HGAP said 500"] and job.uploads == 0
