"""One atomic writer (guestagent.osutil.atomic) for events, the goal-state history, the log collector,
the supervisor's pid file and system.write_file: a reader sees a file whole or not at all, and a write
the kernel refuses (here: RLIMIT_FSIZE, as a full disk would) leaves the old content and no temp file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from guestagent import events
from guestagent.osutil import atomic

REPO = Path(__file__).resolve().parents[2]


def _leftovers(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.name.endswith(".tmp"))


def test_replaces_whole_with_the_mode_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "f"
    atomic.write(str(target), b"old", 0o600)
    assert target.read_bytes() == b"old" and oct(target.stat().st_mode & 0o777) == "0o600"
    try:
        with atomic.Replacing(str(target)) as f:
            f.write(b"half")
            raise RuntimeError("stop")
    except RuntimeError:
        pass
    assert target.read_bytes() == b"old" and _leftovers(tmp_path) == []
    atomic.write(str(target), b"new", 0o644, fsync=True)
    assert target.read_bytes() == b"new" and oct(target.stat().st_mode & 0o777) == "0o644"


SCRIPT = """
import os, resource, signal, sys
from guestagent.osutil import system
lib = sys.argv[1]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
which = sys.argv[2]
try:
    if which == "event":
        from guestagent import events
        events.write_event_file({"Message": "x" * 100}, lib)
    elif which == "supervisor-pid-file":
        from guestagent.daemon import supervisor
        s = supervisor.Settings(pid_file=os.path.join(lib, "waagent.pid"), lib_dir=lib, child=["true"])
        supervisor.Supervisor(s, supervisor.LineLog(), use_pidfd=False).claim_pid_file()
    elif which == "history-archive":
        from guestagent.protocol.history import History
        History(lib).archive()
    elif which == "write-file":
        system.write_file(os.path.join(lib, "waagent.pid"), "12345")
except OSError as e:
    print("refused:", e.errno)
"""


def _history(lib: Path) -> None:
    for name in ("2026-01-01T00-00-00__1", "2026-01-02T00-00-00__2"):
        (lib / "history" / name).mkdir(parents=True)
        (lib / "history" / name / "GoalState.xml").write_text("<GoalState/>" * 100)
    old = lib / "history" / "2026-01-01T00-00-00__1"
    os.utime(old, (1, 1))


def _run(lib: Path, which: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(lib), which], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout + out.stderr


def test_a_refused_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    for which in ("event", "supervisor-pid-file", "history-archive", "write-file"):
        lib = tmp_path / which
        (lib / "events").mkdir(parents=True)
        (lib / "waagent.pid").write_text("1")
        if which == "history-archive":
            _history(lib)
        _run(lib, which)
        assert _leftovers(lib) == [], which
        assert (lib / "waagent.pid").read_text() == "1", which
        assert [p.name for p in (lib / "events").iterdir()] == [], which
        if which == "history-archive":
            assert sorted(p.name for p in (lib / "history").iterdir()) == [
                "2026-01-01T00-00-00__1", "2026-01-02T00-00-00__2"]  # nothing half-archived, nothing removed


def test_an_event_appears_whole_to_a_concurrent_reader(tmp_path):
    """The telemetry collector lists the events directory while others write: it never reads a part."""
    lib = str(tmp_path)
    stop = threading.Event()
    seen: list[int] = []
    torn: list[str] = []

    def reader() -> None:
        directory = tmp_path / "events"
        while not stop.is_set():
            for p in directory.glob("*.tld") if directory.is_dir() else ():
                try:
                    json.loads(p.read_bytes())
                    seen.append(1)
                except FileNotFoundError:
                    pass  # rotated away meanwhile
                except ValueError:
                    torn.append(p.name)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(300):
            events.write_event_file({"Message": str(i) * 20000}, lib)
    finally:
        stop.set()
        thread.join()
    assert torn == [] and seen
    assert _leftovers(tmp_path) == []
