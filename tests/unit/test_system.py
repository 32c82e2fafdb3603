"""osutil.system: the runner, the atomic writer and root mapping."""

from __future__ import annotations

import os
import stat
import sys
import time

import pytest

from guestagent.errors import CommandError
from guestagent.osutil import system


def test_path_maps_under_root(tmp_root):
    assert system.path("/var/lib/waagent/x") == tmp_root / "var/lib/waagent/x"
    assert system.path(tmp_root / "a") == tmp_root / "a"


def test_write_file_is_atomic_with_mode(tmp_root):
    p = system.write_file("/etc/secret", "s3cret", mode=0o600)
    assert p.read_text() == "s3cret"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    system.write_file("/etc/secret", b"new", mode=0o600)
    assert p.read_bytes() == b"new"
    assert [n for n in os.listdir(p.parent) if n.endswith(".tmp")] == []


def test_run_captures_output_and_exit_code():
    r = system.run([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"],
                   check=False)
    assert (r.returncode, r.stdout.strip(), r.stderr.strip()) == (3, "out", "err")
    with pytest.raises(CommandError) as e:
        system.run([sys.executable, "-c", "import sys; sys.exit(4)"])
    assert e.value.returncode == 4


def test_run_redacts_secrets_in_output_and_errors():
    secret = "hunter2-Passw0rd"
    with pytest.raises(CommandError) as e:
        system.run([sys.executable, "-c", f"import sys; print('{secret}', file=sys.stderr); sys.exit(1)"],
                   secrets=[secret])
    assert secret not in str(e.value)
    r = system.run([sys.executable, "-c", "import sys; print(sys.stdin.read())"], input=secret, secrets=[secret])
    assert secret not in r.stdout


def test_run_timeout_kills_process_group():
    start = time.monotonic()
    r = system.run([sys.executable, "-c", "import subprocess,time; subprocess.Popen(['sleep','30']); time.sleep(30)"],
                   timeout=0.5, check=False)
    assert r.timed_out and time.monotonic() - start < 10


def test_run_caps_output():
    r = system.run([sys.executable, "-c", "print('x' * 200000)"], output_cap=1000)
    assert len(r.stdout) < 1200 and "truncated" in r.stdout


def test_run_missing_binary_is_clear():
    with pytest.raises(CommandError) as e:
        system.run(["/nonexistent/binary"])
    assert "/nonexistent/binary" in str(e.value)


def _no_sleep(monkeypatch):
    """Popen.wait(timeout) polls with time.sleep; the pidfd path must never sleep."""
    import time as _time

    def fail(seconds):
        raise AssertionError(f"polled with time.sleep({seconds})")

    monkeypatch.setattr(_time, "sleep", fail)


def test_wait_exit_blocks_on_the_process_not_a_poll(monkeypatch):
    import subprocess as sp

    proc = sp.Popen(["sleep", "0.2"])
    _no_sleep(monkeypatch)
    assert system.wait_exit(proc, timeout=0.01) is False and proc.returncode is None
    assert system.wait_exit(proc, timeout=10) is True and proc.returncode == 0


def test_run_to_files_notices_exit_and_kills_on_timeout(tmp_path, monkeypatch):
    _no_sleep(monkeypatch)
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        res = system.run_to_files(["sh", "-c", "echo hi; exit 3"], out, err, timeout=30)
        assert res.returncode == 3 and not res.timed_out
        res = system.run_to_files(["sh", "-c", "sleep 30 & sleep 30"], out, err, timeout=0.3)
        assert res.timed_out and res.returncode == -9 and res.duration < 10
    assert (tmp_path / "out").read_text() == "hi\n"


def test_release_free_heap_gives_freed_pages_back():
    """A burst of small allocations freed again stays resident until trimmed (glibc); the trim drops it."""
    code = (
        "import sys\n"
        "from guestagent.osutil import processes\n"
        "def rss():\n"
        "    return int([l for l in open('/proc/self/status') if l.startswith('RssAnon')][0].split()[1])\n"
        "blocks = [bytearray(2000) for _ in range(40000)]\n"   # ~80 MB in small, non-mmap chunks
        "keep = blocks[-1]\n"                                   # pin the top of the heap: no automatic trim
        "del blocks\n"
        "before = rss()\n"
        "ok = processes.release_free_heap()\n"
        "print(ok, before, rss())\n")
    import subprocess as sp

    out = sp.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout.split()
    ok, before, after = out[0] == "True", int(out[1]), int(out[2])
    if not ok:
        pytest.skip("no malloc_trim in this C library")
    assert before - after > 40_000, (before, after)  # kB returned to the kernel


def test_processes_started_by_the_agent_are_recognised():
    import subprocess as sp

    from guestagent.osutil import processes

    def orphan(env: dict) -> int:
        """A sleep whose parent exited: re-parented away from us, no longer our descendant."""
        out = sp.run(["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True,
                     env=env, check=True).stdout
        return int(out)

    mine = sp.Popen(["sleep", "30"])
    marker = {**os.environ, system.AGENT_ENV_MARKER[0]: system.AGENT_ENV_MARKER[1]}
    plain = {k: v for k, v in os.environ.items() if k != system.AGENT_ENV_MARKER[0]}
    marked, stranger = orphan(marker), orphan(plain)
    try:
        assert processes.parent_pid(mine.pid) == os.getpid()
        assert processes.started_by_agent(os.getpid(), set()) and processes.started_by_agent(mine.pid, set())
        assert processes.describe(mine.pid) == f"[PID: {mine.pid}] sleep 30"
        assert processes.started_by_agent(marked, set())      # the agent's environment marker
        assert not processes.started_by_agent(stranger, set())  # neither ours nor marked
        assert processes.started_by_agent(stranger, {stranger})  # a systemd-run helper we started
    finally:
        mine.kill()
        mine.wait()
        for pid in (marked, stranger):
            os.kill(pid, 9)
    assert processes.parent_pid(mine.pid) == 0 and processes.started_by_agent(mine.pid, set())  # gone
