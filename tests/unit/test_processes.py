"""Process facts and the timed-out handler's tree kill, on real processes (guestagent.osutil.processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from guestagent.exthandler.extensions import runner
from guestagent.osutil import processes


def _wait_for(path: Path, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text().strip() if path.exists() else ""
        if text:
            return int(text)
        time.sleep(0.02)
    raise AssertionError(f"{path} never written")


def _gone(pid: int) -> bool:
    return not processes.pid_alive(pid)


def test_a_timed_out_handler_leaves_no_process_behind(tmp_path):
    """The handler forks a grandchild that ignores SIGTERM and one that left for its own session: after the
    timeout all of them are gone (a process-group kill alone misses the second)."""
    base = tmp_path / "ext"
    base.mkdir()
    (base / "cmd.sh").write_text(
        "#!/bin/sh\n"
        f"sh -c 'trap \"\" TERM; echo $$ > {tmp_path}/in_group; exec sleep 60' &\n"
        f"setsid sh -c 'trap \"\" TERM; echo $$ > {tmp_path}/own_session; exec sleep 60' &\n"
        f"echo $$ > {tmp_path}/handler\n"
        "sleep 60\n")
    (base / "cmd.sh").chmod(0o755)
    start = time.monotonic()
    with pytest.raises(runner.CommandFailed) as failed:
        runner.run_command("enable", str(base), "/cmd.sh", {}, handler_name="T", timeout=1.0)
    assert failed.value.exit_code == runner.CODE_TIMEOUT and time.monotonic() - start < 10
    pids = {name: _wait_for(tmp_path / name) for name in ("handler", "in_group", "own_session")}
    deadline = time.monotonic() + 5
    while not all(_gone(p) for p in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert {name: _gone(pid) for name, pid in pids.items()} == dict.fromkeys(pids, True)


def test_kill_tree_freezes_a_forking_tree_before_the_kill(tmp_path):
    """A tree that keeps forking (each generation in a new session) is gone in one call."""
    script = ("import os, sys, time\n"
              "for _ in range(4):\n"
              "    if os.fork():\n"
              "        break\n"
              "    os.setsid()\n"
              f"open('{tmp_path}/' + str(os.getpid()), 'w').close()\n"
              "time.sleep(60)\n")
    root = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(list(tmp_path.iterdir())) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    pids = [int(p.name) for p in tmp_path.iterdir()]
    assert len(pids) == 5 and all(processes.pid_alive(p) for p in pids)
    processes.kill_tree(root.pid)
    root.wait(timeout=5)
    deadline = time.monotonic() + 5
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in pids if not _gone(p)] == []


def test_memory_and_cpu_facts_of_a_real_child():
    code = ("import time\n"
            "block = bytearray(60 * 1024 * 1024)\n"
            "for i in range(0, len(block), 4096):\n"
            "    block[i] = 1\n"
            "end = time.process_time() + 0.5\n"
            "while time.process_time() < end:\n"
            "    pass\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert 60 * 1024 <= processes.rss_kb(child.pid) < 200 * 1024
        assert 0.4 <= processes.cpu_seconds(child.pid) < 5
        assert processes.parent_pid(child.pid) == os.getpid()
        assert processes.cmdline(child.pid).startswith(f"{sys.executable} -c import time")
    finally:
        child.kill()
        child.wait()
    assert processes.rss_kb(child.pid) == 0 and processes.cmdline(child.pid) == ""
    assert 0 < processes.rss_kb() < 500 * 1024  # this process


def test_a_zombie_is_not_alive():
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 5
    while psutil.Process(child.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not processes.pid_alive(child.pid)  # exited, not yet reaped
    child.wait()
    assert not processes.pid_alive(child.pid) and processes.pid_alive(os.getpid())


def test_system_cpu_ticks_count_the_seven_fields_upstream_counts(tmp_path, monkeypatch):
    """Upstream sums user … softirq of /proc/stat's cpu line: steal and guest time are not counted."""
    (tmp_path / "stat").write_text("cpu  100 2 30 400 5 6 7 800 900 0\ncpu0 100 2 30 400 5 6 7 800 900 0\n"
                                   "btime 1700000000\n")
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(tmp_path))
    assert processes.system_cpu_ticks() == 550


def test_system_memory_is_what_meminfo_says():
    values = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0]) * 1024
    used, available = processes.system_memory_mb()
    mb = 1024 * 1024
    assert abs(available - values["MemAvailable"] // mb) < 64
    assert abs(used - (values["MemTotal"] - values["MemAvailable"]) // mb) < 64


def test_command_lines_see_a_real_process():
    marker = "guestagent-test-marker-7f3a"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        deadline = time.monotonic() + 5
        while not any(marker in line for line in processes.command_lines()) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [line for line in processes.command_lines() if marker in line] == [
            f"{sys.executable} -c import time; time.sleep(60) {marker}"]
    finally:
        child.kill()
        child.wait()
