"""The daemon's decisions that need no processes: restart back-off, the pid file, the child command."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from guestagent import conf, log
from guestagent.cli import CliArgs
from guestagent.daemon import main as daemon_main
from guestagent.daemon import supervisor
from guestagent.daemon.main import Daemon
from guestagent.daemon.supervisor import MAX_RESTART_DELAY, QUICK_EXIT, RestartPolicy
from guestagent.osutil import processes


def test_quick_failures_back_off_doubling_to_a_cap_and_make_a_crash_loop():
    policy = RestartPolicy()
    out = [policy.after_exit(1, 2.0, 100.0 + i) for i in range(9)]
    assert [d for d, _ in out] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert [loop for _, loop in out] == [False, False, True, True, True, True, True, True, True]
    assert max(d for d, _ in out) == MAX_RESTART_DELAY


def test_a_long_run_resets_the_back_off():
    policy = RestartPolicy()
    policy.after_exit(1, 1.0, 0.0)
    policy.after_exit(-9, 1.0, 1.0)
    assert policy.after_exit(1, QUICK_EXIT + 1, 500.0) == (0.0, False)
    assert policy.after_exit(1, 1.0, 501.0) == (1.0, False)


def test_failures_spread_over_more_than_the_window_are_no_crash_loop():
    policy = RestartPolicy()
    assert policy.after_exit(1, 10.0, 0.0)[1] is False
    assert policy.after_exit(1, 10.0, 200.0)[1] is False
    assert policy.after_exit(1, 10.0, 400.0)[1] is False  # 3 exits, but over 400 s
    assert policy.after_exit(1, 10.0, 450.0)[1] is True   # 200, 400, 450


def test_one_clean_quick_exit_relaunches_at_once_repeated_ones_back_off():
    policy = RestartPolicy()
    assert policy.after_exit(0, 3.0, 0.0) == (0.0, False)   # orphan check / self-update: at once (spec 06 §4.2)
    assert policy.after_exit(0, 3.0, 4.0) == (1.0, False)   # but not in a hot loop
    assert policy.after_exit(0, 3.0, 8.0) == (2.0, True)


@pytest.fixture
def daemon(tmp_root):
    config = conf.parse("")
    return Daemon(CliArgs(), config, "/var/lib/waagent", "/var/run/waagent.pid")


def test_already_running_only_for_a_live_daemon_process(daemon, tmp_root):
    pid_file = tmp_root / "var/run/waagent.pid"
    assert not daemon._already_running()  # no file
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text("garbage")
    assert not daemon._already_running()
    pid_file.write_text(str(os.getpid()))
    assert not daemon._already_running()  # our own pid (a re-exec)
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file.write_text(str(dead.pid))
    assert not daemon._already_running()
    # a live process that is not a daemon (pid reuse after a reboot)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        pid_file.write_text(str(sleeper.pid))
        assert not daemon._already_running()
    finally:
        sleeper.kill()
        sleeper.wait()
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-daemon"])
    try:
        pid_file.write_text(str(fake.pid))
        assert daemon._already_running()
    finally:
        fake.kill()
        fake.wait()


def test_child_command_passes_the_configuration_path(daemon, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/sbin/waagent", "-daemon"])
    assert daemon.child_command() == [sys.executable, "-u", "/usr/sbin/waagent", "-run-exthandlers"]
    daemon.args = daemon.args._replace(conf_path="/etc/other.conf")
    monkeypatch.setattr(sys, "argv", ["/x/guestagent/cli.py", "-daemon"])
    assert daemon.child_command() == [sys.executable, "-u", "-m", "guestagent.cli", "-run-exthandlers",
                                      "-configuration-path:/etc/other.conf"]


def test_child_environment_drops_the_supervisor_markers(monkeypatch):
    monkeypatch.setenv(supervisor.SUPERVISE_ENV, "42")
    monkeypatch.setenv(supervisor.SETTINGS_ENV, "pid_file=/x")
    monkeypatch.setenv(daemon_main.DAEMON_VERSION_ENV, "2.15.0.1")
    env = supervisor.child_env()
    assert supervisor.SUPERVISE_ENV not in env and supervisor.SETTINGS_ENV not in env
    assert env[daemon_main.DAEMON_VERSION_ENV] == "2.15.0.1"


def test_supervisor_settings_resolve_paths_levels_and_the_child_command(daemon, tmp_root, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/usr/sbin/waagent", "-daemon"])
    log.add_appender("file", log.FileAppender(log.VERBOSE, str(tmp_root / "var/log/waagent.log")))
    s = daemon.supervisor_settings()
    assert s.pid_file == str(tmp_root / "var/run/waagent.pid") and s.lib_dir == "/var/lib/waagent"
    assert s.root == str(tmp_root) and s.log_file == str(tmp_root / "var/log/waagent.log")
    assert (s.file_level, s.stdout_level) == (log.VERBOSE, log.INFO)
    assert s.child == [sys.executable, "-u", "/usr/sbin/waagent", "-run-exthandlers"]
    back = supervisor.decode_settings(supervisor.encode_settings(s))
    assert vars(back) == vars(s)


def test_rss_is_read_from_proc():
    assert processes.rss_kb() > 1000


def test_transport_certificate_is_made_after_ready_by_the_daemon(daemon, tmp_root):
    class Detected:
        calls = 0

        def finish_detection(self):
            Detected.calls += 1

    daemon._finish_detection(Detected())
    assert Detected.calls == 1 and not (tmp_root / "var/lib/waagent").exists()  # the protocol's job
    daemon._finish_detection(None)  # detection failed: the child still needs the pair
    lib = tmp_root / "var/lib/waagent"
    assert (lib / "TransportPrivate.pem").stat().st_mode & 0o777 == 0o600
    cert = (lib / "TransportCert.pem").read_text()
    daemon._finish_detection(None)
    assert (lib / "TransportCert.pem").read_text() == cert  # present: not made again
