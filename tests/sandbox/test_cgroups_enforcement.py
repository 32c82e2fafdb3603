"""A CPU quota really holds: a CPU-hungry process in a cgroup with CPUQuota=20% gets ~20% of a CPU.

Uses whichever hierarchy has the cpu controller: cgroup v2 when the root delegates ``cpu`` (the VM
tier, modern distros), else the v1 cpu mount (this CI host is hybrid v1+unified with no controller
on the unified side, so a private cgroup2 mount would have no cpu controller). The test cgroup is a
transient child named after the test's pid, removed at the end whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from guestagent.exthandler.cgroups import TrackedCgroup
from guestagent.osutil import cgroupfs

HUNGRY = "import time\nend = time.time() + 30\nwhile time.time() < end:\n    pass\n"


def _base() -> tuple[str, str]:
    """Not cgroupfs.detect(): the agent rightly calls this host's split hybrid layout unsupported, but its
    v1 cpu hierarchy still enforces quotas, which is what this test is about."""
    mounts = cgroupfs.parse_mountinfo(open("/proc/self/mountinfo").read())
    for m in mounts:
        if m.point == "/sys/fs/cgroup" and m.fstype == "cgroup2":
            if "cpu" in (_read("/sys/fs/cgroup/cgroup.subtree_control") or "").split():
                return "v2", m.point
    for m in mounts:
        if m.fstype == "cgroup" and "cpu" in m.options.split(","):
            return "v1", m.point
    pytest.skip("no cgroup hierarchy with the cpu controller here")


def _read(p):
    try:
        return open(p).read()
    except OSError:
        return None


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_cpu_quota_holds_a_hungry_process():
    version, base = _base()
    path = os.path.join(base, f"guestagent-test-{os.getpid()}")
    os.mkdir(path)
    proc = None
    try:
        if version == "v2":
            # the new cgroup's parent must delegate cpu to it
            assert "cpu" in open(os.path.join(base, "cgroup.subtree_control")).read().split()
        cgroupfs.set_cpu_quota(path, version, 20)
        assert cgroupfs.read_cpu_quota(path, version) == pytest.approx(20.0)
        proc = subprocess.Popen([sys.executable, "-c", HUNGRY])
        cgroupfs.add_process(path, proc.pid)
        assert proc.pid in cgroupfs.procs(path)
        tracked = TrackedCgroup("test", path, version)
        start_cpu, start = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(2.0)
        share = (_cpu_seconds(proc.pid) - start_cpu) / (time.monotonic() - start)
        print(f"CPU share with a 20% quota: {share:.3f}")
        assert 0.05 < share < 0.35, f"CPU share {share:.2f} with a 20% quota"
        assert tracked.cpu.throttled_seconds() > 0.5
        # lifting the quota lets it run free again
        cgroupfs.set_cpu_quota(path, version, None)
        assert cgroupfs.read_cpu_quota(path, version) is None
        start_cpu, start = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(1.0)
        assert (_cpu_seconds(proc.pid) - start_cpu) / (time.monotonic() - start) > 0.5
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.1)
