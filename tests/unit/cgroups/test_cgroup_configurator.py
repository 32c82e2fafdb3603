"""cgroups: detection, metrics on upstream's samples, the configurator's files and systemd calls.

systemd itself is not running on this host (nor in the sandbox), so ``systemctl`` is replaced by a
recorder at that one boundary; unit files are checked for real under a temporary root. Real
enforcement is proven in tests/sandbox/test_cgroups.py.
"""

from __future__ import annotations

import shutil

import psutil
import pytest

from guestagent.conf import Config
from guestagent.exthandler import cgroups
from guestagent.exthandler.cgroups import CGroupConfigurator
from guestagent.osutil import cgroupfs
from guestagent.osutil.distros import make

V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
HYBRID = (
    "25 23 0:22 / /sys/fs/cgroup ro,nosuid shared:5 - tmpfs tmpfs ro,mode=755\n"
    "26 25 0:23 / /sys/fs/cgroup/unified rw shared:6 - cgroup2 cgroup2 rw,nsdelegate\n"
    "28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw shared:8 - cgroup cgroup rw,cpu,cpuacct\n"
    "29 25 0:26 / /sys/fs/cgroup/memory rw shared:9 - cgroup cgroup rw,memory\n")


def test_detect_v2_hybrid_and_unsupported():
    h = cgroupfs.detect(V2_MOUNTINFO, read=lambda p: "cpuset cpu io memory pids\n")
    assert h.version == "v2" and h.can_enforce_cpu()
    assert not cgroupfs.detect(V2_MOUNTINFO, read=lambda p: "memory pids\n").can_enforce_cpu()
    h = cgroupfs.detect(HYBRID, read=lambda p: "")
    assert h.version == "v1" and h.v1_mounts == {"cpu": "/sys/fs/cgroup/cpu,cpuacct",
                                                   "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                                                   "memory": "/sys/fs/cgroup/memory"}
    h = cgroupfs.detect(HYBRID, read=lambda p: "memory pids")
    assert not h.supported and "hybrid" in h.reason
    assert not cgroupfs.detect("").supported
    moved = HYBRID.replace("/sys/fs/cgroup/memory", "/cgroup/memory")
    assert "Expected cgroup controllers" in cgroupfs.detect(moved, read=lambda p: "").reason


def test_upstream_samples_parse(upstream):
    d = upstream / "cgroups"
    assert cgroupfs.parse_keyed((d / "v2/cpu.stat").read_text())["usage_usec"] > 0
    assert "throttled_usec" in cgroupfs.parse_keyed((d / "v2/cpu.stat").read_text())
    assert "throttled_time" in cgroupfs.parse_keyed((d / "v1/cpu.stat").read_text())
    assert cgroupfs.parse_uptime((d / "v2/proc_uptime_t0").read_text()) > 0
    v2 = cgroupfs.process_cgroup_path((d / "v2/proc_self_cgroup").read_text(), "v2")
    assert v2 and v2.startswith("/")
    v1 = cgroupfs.process_cgroup_path((d / "v1/proc_self_cgroup").read_text(), "v1", "cpu")
    assert v1 and v1.startswith("/")
    assert "azure.slice" in (d / "proc_self_cgroup_azure_slice").read_text()
    assert "cpu" in (d / "v2/sys_fs_cgroup_cgroup.subtree_control").read_text().split()
    assert (d / "v2/sys_fs_cgroup_cgroup.subtree_control_empty").read_text().strip() == ""


def _stage(tmp_path, upstream, version, suffix):
    cg = tmp_path / "cg"
    proc = tmp_path / "proc"
    cg.mkdir(exist_ok=True)
    proc.mkdir(exist_ok=True)
    src = upstream / "cgroups" / version
    if version == "v1":
        shutil.copy(src / f"cpuacct.stat_{suffix}", cg / "cpuacct.stat")
        shutil.copy(src / f"proc_stat_{suffix}", proc / "stat")
        shutil.copy(src / "cpu.stat", cg / "cpu.stat")
        shutil.copy(src / "memory.max_usage_in_bytes", cg / "memory.max_usage_in_bytes")
    else:
        shutil.copy(src / f"cpu.stat_{suffix}", cg / "cpu.stat")
        shutil.copy(src / f"proc_uptime_{suffix}", proc / "uptime")
        for name in ("memory.peak", "memory.swap.current", "memory.events"):
            shutil.copy(src / name, cg / name)
    shutil.copy(src / "memory.stat", cg / "memory.stat")
    return str(cg), str(proc)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_metrics_from_samples(tmp_path, upstream, version, monkeypatch):
    cg, proc = _stage(tmp_path, upstream, version, "t0")
    monkeypatch.setattr(psutil, "PROCFS_PATH", proc)  # psutil reads the staged /proc/stat
    cpu = cgroupfs.CpuController(cg, version, proc_root=proc)
    assert cpu.cpu_usage() is None
    _stage(tmp_path, upstream, version, "t1")
    usage = cpu.cpu_usage()
    assert usage is not None and usage >= 0
    mem = cgroupfs.MemoryController(cg, version).usage()
    assert mem.anon > 0 and mem.total == mem.anon + mem.cache and mem.max_usage
    if version == "v2":
        assert mem.swap is not None and mem.throttled_events is not None
    tracked = cgroups.TrackedCgroup("walinuxagent.service", cg, version, track_throttle=True)
    tracked.cpu.proc_root = proc
    _stage(tmp_path, upstream, version, "t0")
    tracked.metrics()
    _stage(tmp_path, upstream, version, "t1")
    names = {m.counter for m in tracked.metrics()}
    assert {"% Processor Time", "Throttled Time (s)", "Total Memory Usage (B)", "Anon Memory Usage (B)",
            "Cache Memory Usage (B)", "Max Memory Usage (B)"} <= names


def test_missing_counters_raise(tmp_path, upstream):
    (tmp_path / "memory.stat").write_text((upstream / "cgroups/v2/memory.stat_missing").read_text())
    with pytest.raises(cgroupfs.CounterNotFound):
        cgroupfs.MemoryController(str(tmp_path), "v2").usage()


class FakeSystemd(cgroups.Systemd):
    """Stands in for systemctl (no systemd here): properties in a dict, calls recorded."""

    def __init__(self, props=None):
        self.props = props or {}
        self.calls: list[tuple[str, list]] = []

    def get_property(self, unit, prop):
        return self.props.get((unit, prop), {"Slice": "system.slice", "CPUQuotaPerSecUSec": "infinity"}.get(prop, "no"))

    def set_properties(self, unit, props):
        self.calls.append((unit, list(props)))
        for k, v in props:
            self.props[(unit, k)] = v

    def is_loaded(self, unit):
        return True


def _configurator(monkeypatch, tmp_root, version="v2", controllers=("cpu", "memory")):
    (tmp_root / "run/systemd/system").mkdir(parents=True)
    h = cgroupfs.Hierarchy(version, v2_root="/sys/fs/cgroup", v2_root_controllers=tuple(controllers),
                           v1_mounts={"cpu": "/sys/fs/cgroup/cpu,cpuacct"} if version == "v1" else None)
    sd = FakeSystemd()
    c = CGroupConfigurator(Config(), systemd=sd, hierarchy=h, distro=make("ubuntu", "22.04"))
    monkeypatch.setattr(cgroups.events, "add_event", lambda *a, **k: None)
    return c, sd


def test_initialize_writes_units_and_sets_agent_quota(monkeypatch, tmp_root):
    c, sd = _configurator(monkeypatch, tmp_root)
    (tmp_root / "lib/systemd/system/walinuxagent.service.d").mkdir(parents=True)
    (tmp_root / "lib/systemd/system/walinuxagent.service.d/12-CPUQuota.conf").write_text("[Service]\nCPUQuota=5%\n")
    c.initialize()
    assert c.enabled and c.agent_enabled
    unit_dir = tmp_root / "lib/systemd/system"
    assert (unit_dir / "azure.slice").read_text() == cgroups.AZURE_SLICE_CONTENTS
    assert "[Slice]\nCPUAccounting=yes\nMemoryAccounting=yes" in (unit_dir / "azure-vmextensions.slice").read_text()
    assert "Slice=azure.slice" in (unit_dir / "walinuxagent.service.d/10-Slice.conf").read_text()
    assert not (unit_dir / "walinuxagent.service.d/12-CPUQuota.conf").exists()
    assert ("walinuxagent.service", [("CPUQuota", "50%")]) in sd.calls
    assert c.agent_cgroup.cpu.path == "/sys/fs/cgroup/system.slice/walinuxagent.service"


def test_unsupported_distro_or_no_systemd_stays_disabled(monkeypatch, tmp_root):
    c = CGroupConfigurator(Config(), systemd=FakeSystemd(), distro=make("debian", "12"))
    c.initialize()
    assert not c.enabled and "not currently supported" in c.disabled_reason
    assert c.wrap_extension_command(["/bin/true"], "H") == ["/bin/true"]


def test_extension_command_in_scope_and_slice_quota(monkeypatch, tmp_root):
    c, sd = _configurator(monkeypatch, tmp_root)
    c.initialize()
    monkeypatch.setattr(cgroups.system, "which", lambda name: "/usr/bin/" + name)
    argv = c.wrap_extension_command(["/var/lib/waagent/My.Ext-1.0/enable.sh"], "Microsoft.Azure-Test", "Ext-A",
                                    op="enable", resource_limits={"cpuQuotaPercentage": 25})
    assert argv[:3] == ["systemd-run", "--property=CPUAccounting=no", "--property=MemoryAccounting=no"]
    assert argv[3].startswith("--unit=enable_") and argv[4] == "--scope"
    assert argv[5] == "--slice=azure-vmextensions-Microsoft.Azure_Test.Ext_A.slice"
    assert argv[6:] == ["/var/lib/waagent/My.Ext-1.0/enable.sh"]
    assert ("azure-vmextensions-Microsoft.Azure_Test.Ext_A.slice",
            [("CPUAccounting", "yes"), ("MemoryAccounting", "yes"), ("CPUQuota", "25%")]) in sd.calls
    # unchanged properties are not set again
    sd.props[("azure-vmextensions-Microsoft.Azure_Test.Ext_A.slice", "CPUQuotaPerSecUSec")] = "250ms"
    n = len(sd.calls)
    c.setup_extension_slice("Microsoft.Azure-Test.Ext-A", 25)
    assert len(sd.calls) == n
    c.reset_extension_quota("Microsoft.Azure-Test.Ext-A")
    assert sd.calls[-1] == ("azure-vmextensions-Microsoft.Azure_Test.Ext_A.slice", [("CPUQuota", "")])


def test_no_cpu_controller_means_no_quota(monkeypatch, tmp_root):
    c, sd = _configurator(monkeypatch, tmp_root, controllers=("memory",))
    c.initialize()
    assert all(p != ("CPUQuota", "50%") for _, props in sd.calls for p in props)
    c.setup_extension_slice("H", 10)
    assert ("azure-vmextensions-H.slice", [("CPUAccounting", "yes"), ("MemoryAccounting", "yes")]) in sd.calls


def test_throttled_agent_loses_quota_and_unexpected_process_disables(monkeypatch, tmp_root):
    c, sd = _configurator(monkeypatch, tmp_root)
    c.initialize()
    c.check_cgroups([cgroups.Metric("CPU", "Throttled Time (s)", "walinuxagent.service", 500.0)], pids=[])
    assert sd.calls[-1] == ("walinuxagent.service", [("CPUQuota", "")])
    assert c.extensions_enabled  # only the agent's quota goes
    stranger = 999_999_999  # not a live pid → treated as gone; use pid 1 (init, not ours) instead
    c.check_cgroups([], pids=[1])
    assert c.enabled  # first sighting only remembered
    c.check_cgroups([], pids=[1])
    assert not c.enabled and "unexpected processes" in c.disabled_reason
    assert stranger


def test_quota_percent_and_slice_names():
    assert cgroups.quota_percent("infinity") == "infinity"
    assert cgroups.quota_percent("500ms") == "50%"
    assert cgroups.quota_percent("1.5s") == "150%"
    assert cgroups.extension_slice_name("Microsoft.CPlat.Core.RunCommandLinux-1.0.3") == \
        "azure-vmextensions-Microsoft.CPlat.Core.RunCommandLinux.slice"
    assert cgroups.distro_supported("ubuntu", "22.04") and not cgroups.distro_supported("debian", "12")
    assert cgroups.distro_supported("rhel", "9.4") and not cgroups.distro_supported("centos", "7")
    assert cgroupfs.quota_values(50) == ("50000", 100000) and cgroupfs.quota_values(None)[0] == "max"
