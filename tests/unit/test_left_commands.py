"""Extension commands a killed ext-handler left running (issue 13 W3), on real processes: found by the
agent's marker and the handler directory in their environment, waited for, killed past the limit; a
daemon the command left on purpose and our own commands are not taken for one. Disk-full detection."""

from __future__ import annotations

import errno
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from guestagent.errors import ExtensionError, disk_full
from guestagent.exthandler.extensions.orphans import LeftCommands, handler_of
from guestagent.exthandler.extensions.package import PackageError
from guestagent.osutil import processes
from guestagent.version import AGENT_ENV_MARKER


def _leave(base: Path, seconds: int) -> int:
    """Start ``/bin/sh -c <base>/bin/cmd.sh`` in its own session, re-parented away from us (as when the
    ext-handler that started it is killed); returns its pid."""
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "cmd.sh").write_text(f"#!/bin/sh\nsleep {seconds}\n")
    (base / "bin" / "cmd.sh").chmod(0o755)
    pid_file = base / "pid"
    env = dict(os.environ, **{AGENT_ENV_MARKER[0]: AGENT_ENV_MARKER[1],
                              processes.EXTENSION_PATH_ENV: str(base)})
    script = f"setsid /bin/sh -c '{base}/bin/cmd.sh' & echo $! > {pid_file}"
    subprocess.run(["/bin/sh", "-c", script], env=env, check=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        text = pid_file.read_text().strip() if pid_file.exists() else ""
        if text and processes.cmdline(int(text)) == f"/bin/sh -c {base}/bin/cmd.sh":  # exec'd, in its session
            return int(text)
        time.sleep(0.02)
    raise AssertionError("the left command did not start")


@pytest.fixture
def handler_dir(tmp_path) -> Path:
    return tmp_path / f"Left.Test{uuid.uuid4().hex[:8]}-1.0.0"


def test_a_left_command_is_found_and_waited_for(handler_dir):
    pid = _leave(handler_dir, 2)
    left = LeftCommands.find()
    mine = [c for c in left.pending if c.pid == pid]
    assert mine and mine[0].extension_path == str(handler_dir)
    left.settle("Some.Other.Handler")          # not ours: returns at once, our command still pending
    assert processes.pid_alive(pid) and any(c.pid == pid for c in left.pending)
    t0 = time.monotonic()
    left.settle(handler_of(str(handler_dir)))
    assert not processes.pid_alive(pid)
    assert 0.5 < time.monotonic() - t0 < 5
    assert not any(c.pid == pid for c in left.pending)


def test_a_left_command_past_its_limit_is_killed(handler_dir):
    pid = _leave(handler_dir, 60)
    left = LeftCommands([c for c in processes.extension_commands_left() if c.pid == pid], wait_limit=0.5, poll=0.1)
    assert left.pending
    left.settle(handler_of(str(handler_dir)))
    deadline = time.monotonic() + 5
    while processes.pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes.pid_alive(pid)


def test_our_own_commands_and_daemons_are_not_left_commands(tmp_path):
    base = tmp_path / "Own.Handler-1.0.0"
    base.mkdir()
    env = dict(os.environ, **{AGENT_ENV_MARKER[0]: AGENT_ENV_MARKER[1], processes.EXTENSION_PATH_ENV: str(base)})
    own = subprocess.Popen(["/bin/sh", "-c", f"{base}/x; sleep 5"], env=env, start_new_session=True)
    daemon = subprocess.Popen(["sleep", "5"], env=env, start_new_session=True)  # not "/bin/sh -c <dir>/..."
    try:
        time.sleep(0.2)
        pids = {c.pid for c in processes.extension_commands_left()}
        assert own.pid not in pids and daemon.pid not in pids
    finally:
        own.kill()
        daemon.kill()
        own.wait()
        daemon.wait()


def test_handler_of_a_directory():
    assert handler_of("/var/lib/waagent/Microsoft.Azure.Extensions.CustomScript-2.1.10/") == \
        "Microsoft.Azure.Extensions.CustomScript"


def test_disk_full_is_found_through_wrapping_errors():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as e:
            raise PackageError(f"Failed to unpack: {e}") from None
    except PackageError:
        try:
            raise ExtensionError("Failed to download artifacts", code=-1) from None
        except ExtensionError as outer:
            assert disk_full(outer)
    assert disk_full(OSError(errno.EDQUOT, "quota"))
    assert not disk_full(OSError(errno.EACCES, "denied"))
    assert not disk_full(ExtensionError("plain"))
