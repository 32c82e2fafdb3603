"""The lean supervisor as real processes: what it imports, its memory, that it sleeps in the kernel
while the child runs (pidfd, and the SIGCHLD fallback), restart back-off, crash-loop and health
events written by a fork, SIGTERM forwarding. Children are ``sleep``/``sh``: nothing here needs root."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from guestagent import log
from guestagent.daemon import supervisor
from guestagent.daemon.supervisor import LineLog, Settings, decode_settings, encode_settings

REPO = Path(__file__).resolve().parents[2]
#: The system interpreter when there is one (as on a VM and in the bench): no .pth imports of its own.
PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
WAAGENT = REPO / "bin" / "waagent"
#: What the supervisor may add to a bare interpreter started the same way (a script, no -m).
SUPERVISOR_MODULES = {"__future__", "select", "guestagent", "guestagent.version", "guestagent.cli",
                      "guestagent.daemon", "guestagent.daemon.supervisor", "guestagent.osutil",
                      "guestagent.osutil.atomic"}
HEAVY = ["typing", "dataclasses", "subprocess", "json", "threading", "re", "enum", "signal", "collections",
         "datetime", "pathlib", "tempfile", "inspect", "platform", "guestagent.conf", "guestagent.log",
         "guestagent.events", "guestagent.osutil.osrelease", "guestagent.osutil.system", "guestagent.daemon.main",
         "lxml", "cryptography", "asn1crypto"]


@pytest.fixture
def env(tmp_path):
    """Byte code compiled into a private cache (as an installed package runs), the tree importable."""
    e = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", supervisor.SUPERVISE_ENV,
                                                             supervisor.SETTINGS_ENV)}
    e.update(PYTHONPATH=str(REPO), PYTHONPYCACHEPREFIX=str(tmp_path / "pyc"))
    subprocess.run([PY, "-c", "import guestagent.cli, guestagent.daemon.supervisor"], env=e, check=True)
    return e


def settings(tmp_path: Path, child: list[str]) -> Settings:
    return Settings(pid_file=str(tmp_path / "waagent.pid"), lib_dir=str(tmp_path / "lib"), child=child,
                    log_file=str(tmp_path / "waagent.log"), file_level=log.VERBOSE, stdout_level=log.INFO)


class Running:
    """``waagent -daemon`` re-executed into the supervisor exactly as the daemon does it (marker = own PID)."""

    def __init__(self, tmp_path: Path, env: dict, child: list[str]):
        self.tmp = tmp_path
        self.settings = settings(tmp_path, child)
        run_env = dict(env, **{supervisor.SETTINGS_ENV: encode_settings(self.settings)})
        self.out = open(tmp_path / "daemon.out", "wb")  # closed in stop()
        self.proc = subprocess.Popen(["sh", "-c", f'export {supervisor.SUPERVISE_ENV}=$$; exec "$@"', "sh",
                                      PY, "-u", str(WAAGENT), "-daemon"],
                                     env=run_env, stdout=self.out, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def log(self) -> str:
        try:
            return (self.tmp / "waagent.log").read_text()
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 10) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log())
            if m:
                return m
            assert self.proc.poll() is None, (self.proc.returncode, (self.tmp / "daemon.out").read_text())
            assert time.monotonic() < deadline, f"no /{pattern}/ in:\n{self.log()}"
            time.sleep(0.05)

    def child_pid(self) -> int:
        return int(self.wait_log(r"launched with command '.*' \(pid (\d+)\)").group(1))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(10)
        self.out.close()
        return rc


@pytest.fixture
def running(tmp_path, env):
    started: list[Running] = []

    def start(child: list[str]) -> Running:
        r = Running(tmp_path, env, child)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}


def switches(pid: int) -> int:
    s = proc_status(pid)
    return int(s["voluntary_ctxt_switches"]) + int(s["nonvoluntary_ctxt_switches"])


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return ") Z " in f.read()
    except FileNotFoundError:
        return True


def events(lib: Path) -> list[dict]:
    out = []
    for f in sorted((lib / "events").glob("*.tld")):
        doc = json.loads(f.read_text())
        out.append({p["name"]: p["value"] for p in doc["parameters"]})
    return out


def run_py(env: dict, code: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=timeout)


# ------------------------------------------------------------------------------------- imports and memory
def test_the_reexec_lands_in_the_supervisor_with_only_its_modules_and_near_the_interpreter_floor(
        running, env, tmp_path):
    floor_script = tmp_path / "floor"
    floor_script.write_text("import sys, time\nprint(' '.join(sorted(sys.modules)), flush=True)\ntime.sleep(30)\n")
    floor = subprocess.Popen([PY, "-u", str(floor_script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        floor_modules = set(floor.stdout.readline().split())
        floor_status = proc_status(floor.pid)
        floor_rss, floor_anon = (int(floor_status[k].split()[0]) for k in ("VmRSS", "RssAnon"))
    finally:
        floor.kill()
        floor.wait()
    r = running(["sleep", "30"])
    r.child_pid()
    modules = set(r.wait_log(r"VERBOSE Daemon Daemon Lean supervisor modules: (.*)").group(1).split())
    assert modules - floor_modules == SUPERVISOR_MODULES
    assert modules & set(HEAVY) == floor_modules & set(HEAVY)  # nothing heavy beyond the interpreter's own
    print(f"{len(modules)} modules; heavy ones the interpreter itself loads: {sorted(floor_modules & set(HEAVY))}")
    status = proc_status(r.pid)
    rss, anon = (int(status[k].split()[0]) for k in ("VmRSS", "RssAnon"))
    print(f"supervisor VmRSS {rss} kB (anon {anon}), interpreter floor {floor_rss} kB (anon {floor_anon}) ({PY})")
    # its own (private) memory within 1 MB of a bare interpreter's; the file-backed pages it shares with
    # every Python process vary by ~0.15 MB from run to run, so VmRSS gets that much more room
    assert anon - floor_anon < 1024, (anon, floor_anon)
    assert rss - floor_rss < 1024 + 512, (rss, floor_rss)
    # same PID, same command line as upstream's daemon; the pid file claimed for it
    assert Path(f"/proc/{r.pid}/cmdline").read_bytes().split(b"\0")[-3:-1] == [str(WAAGENT).encode(), b"-daemon"]
    assert (tmp_path / "waagent.pid").read_text() == str(r.pid)
    assert "The daemon pid file" in r.log() and "is missing; writing" in r.log()
    line = r.wait_log(r".*Lean supervisor running.*").group(0)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z INFO Daemon Daemon Lean supervisor running "
                        r"\(pid \d+, RSS \d+ kB, \d+ modules loaded\)", line)


# ------------------------------------------------------------------------------------- no polling
IDLE = 2.0


def test_the_supervisor_does_not_wake_up_while_the_child_runs(running):
    r = running(["sleep", "30"])
    r.child_pid()
    time.sleep(0.3)
    before, ticks = switches(r.pid), cpu_ticks(r.pid)
    time.sleep(IDLE)
    woke = switches(r.pid) - before
    print(f"pidfd: {woke} context switches, {cpu_ticks(r.pid) - ticks} ticks in {IDLE} s of an idle child")
    assert woke <= 1 and cpu_ticks(r.pid) - ticks <= 1  # Popen.wait(timeout) polled 20 times a second


def test_without_a_pidfd_sigchld_wakes_it_and_nothing_else(env, tmp_path):
    s = settings(tmp_path, ["sleep", "3"])
    code = f"""
        import sys
        from guestagent.daemon import supervisor as sv
        s = sv.decode_settings({encode_settings(s)!r})
        sup = sv.Supervisor(s, use_pidfd=False)
        for child, in (["sleep", "3"],), (["sh", "-c", "exit 7"],), (["sh", "-c", "kill -9 $$"],):
            sup.settings.child = child
            sup.launch(child)
            print(sup.child_fd, sup.wait_child(), flush=True)
    """
    proc = subprocess.Popen([PY, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    before = switches(proc.pid)
    time.sleep(IDLE)
    woke = switches(proc.pid) - before
    out, _ = proc.communicate(timeout=15)
    print(f"SIGCHLD fallback: {woke} context switches in {IDLE} s")
    assert woke <= 1
    assert [line for line in out.split("\n") if line.startswith("None")] == ["None 0", "None 7", "None -9"]
    failed = [e for e in events(tmp_path / "lib") if e["Operation"] == "Enable"]
    assert [e["OperationSuccess"] for e in failed] == [False]
    assert failed[0]["Message"].endswith("failed with return code: 7")
    assert failed[0]["EventPid"] == proc.pid and failed[0]["TaskName"] == "Daemon"


# ------------------------------------------------------------------------------------- supervision
def test_quick_failures_back_off_and_a_crash_loop_is_reported_by_a_forked_event(running, tmp_path):
    r = running(["sh", "-c", "exit 3"])
    m = r.wait_log(r"ERROR Daemon Daemon Event: name=WALinuxAgent, op=Enable, message=The extension handler is in a "
                   r"crash loop: 3 exits within 300 s, last exited with code 3; restarting it in (\d+) s")
    assert m.group(1) == "4"
    delays = re.findall(r"WARNING Daemon Daemon Agent WALinuxAgent-2\.15\.0\.1 exited with code 3 after [\d.]+ s; "
                        r"restarting it in (\d+) s", r.log())
    assert delays[:3] == ["1", "2", "4"]
    deadline = time.monotonic() + 5
    while not any("crash loop" in e["Message"] for e in events(tmp_path / "lib")):  # written after the line
        assert time.monotonic() < deadline, "no crash-loop event"
        time.sleep(0.05)
    evs = [e for e in events(tmp_path / "lib") if e["Operation"] == "Enable"]
    assert sum("failed with return code: 3" in e["Message"] for e in evs) >= 3
    loop = [e for e in evs if "crash loop" in e["Message"]]
    assert loop and loop[0]["OperationSuccess"] is False
    assert {e["EventPid"] for e in evs} == {r.pid} and {e["TaskName"] for e in evs} == {"Daemon"}
    assert (tmp_path / "lib/events").stat().st_mode & 0o777 == 0o700


def test_sigterm_is_forwarded_to_the_child_and_the_pid_file_removed(running, tmp_path):
    r = running(["sleep", "30"])
    child = r.child_pid()
    assert not gone(child)
    assert r.stop() == 0
    deadline = time.monotonic() + 5
    while not gone(child):
        assert time.monotonic() < deadline, "the child outlived SIGTERM"
        time.sleep(0.05)
    assert not (tmp_path / "waagent.pid").exists()


def test_a_child_that_stays_past_the_health_window_is_reported_running(env, tmp_path):
    s = settings(tmp_path, ["sleep", "0.6"])
    res = run_py(env, f"""
        import os, sys
        from guestagent.daemon import supervisor as sv
        sv.CHILD_HEALTH_WINDOW = 0.2
        sup = sv.Supervisor(sv.decode_settings({encode_settings(s)!r}))
        sup.launch(sup.settings.child)
        fd = sup.child_fd
        print(fd is not None, sup.wait_child(), "guestagent.events" in sys.modules, "json" in sys.modules)
        os.fstat(fd)
    """)
    assert res.stdout.split("\n")[-2] == "True 0 False False", res.stderr
    assert "Bad file descriptor" in res.stderr  # the pidfd was closed
    ok = [e for e in events(tmp_path / "lib") if e["Operation"] == "Enable"]
    assert len(ok) == 1 and ok[0]["OperationSuccess"] is True
    assert ok[0]["Message"] == "Agent WALinuxAgent-2.15.0.1 launched with command 'sleep 0.6' is successfully running"
    assert re.search(r"INFO Daemon Daemon Agent WALinuxAgent-2\.15\.0\.1 launched with command 'sleep 0\.6' is "
                     r"successfully running", (tmp_path / "waagent.log").read_text())


def test_a_launch_failure_raises_for_the_loop_to_log_and_retry(tmp_path):
    s = settings(tmp_path, [str(tmp_path / "missing-interpreter"), "-run-exthandlers"])
    sup = supervisor.Supervisor(s)
    with pytest.raises(FileNotFoundError):
        sup.launch(s.child)
    assert sup.child_pid is None


# ------------------------------------------------------------------------------------- pieces
def test_log_lines_match_the_agent_log_format():
    log.set_prefix("Daemon")
    msg = "Agent exited – code 0"  # non-ASCII: backslash-escaped as guestagent.log does
    ours = LineLog.format(log.WARNING, msg, now_ns=1_700_000_000_123_456_000)
    theirs = log.format_line(log.WARNING, msg, thread="Daemon", now=1_700_000_000.123456)
    assert ours == theirs == "2023-11-14T22:13:20.123456Z WARNING Daemon Daemon Agent exited \\u2013 code 0\n"


def test_log_levels_and_unwritable_file(tmp_path, capfd):
    logger = LineLog(str(tmp_path / "no/such/dir/waagent.log"), log.INFO, log.WARNING)
    logger.info("quiet on stdout")
    logger.warn("loud")
    out = capfd.readouterr().out
    assert "loud" in out and "quiet" not in out
    good = LineLog(str(tmp_path / "waagent.log"), log.INFO, log.ERROR)
    good.verbose("not written")
    good.info("written")
    assert (tmp_path / "waagent.log").read_text().endswith("INFO Daemon Daemon written\n")
    assert "not written" not in (tmp_path / "waagent.log").read_text()


def test_settings_round_trip_and_reject_damage(tmp_path):
    s = settings(tmp_path, ["/usr/bin/python3", "-u", "/usr/sbin/waagent", "-run-exthandlers",
                            "-configuration-path:/etc/my agent.conf"])
    assert vars(decode_settings(encode_settings(s))) == vars(s)
    with pytest.raises(ValueError):
        decode_settings("pid_file=/x\nlib_dir=/y")
    with pytest.raises(ValueError):
        encode_settings(settings(tmp_path, ["a\nb"]))


def test_main_refuses_without_the_daemons_marker(env):
    res = run_py(env, "import sys\nfrom guestagent.daemon import supervisor\nsys.exit(supervisor.main())")
    assert res.returncode == 1 and "re-exec environment" in res.stderr
    bad = dict(env, **{supervisor.SETTINGS_ENV: "garbage"})
    res = subprocess.run(["sh", "-c", f'export {supervisor.SUPERVISE_ENV}=$$; exec "$@"', "sh", PY,
                          str(WAAGENT), "-daemon"], env=bad, capture_output=True, text=True, timeout=20)
    assert res.returncode == 1 and "settings incomplete" in res.stderr


def test_descriptors_above_two_are_not_inherited(env, tmp_path):
    s = settings(tmp_path, ["sh", "-c", "ls /proc/self/fd > " + str(tmp_path / "fds")])
    res = run_py(env, f"""
        import os
        from guestagent.daemon import supervisor as sv
        leaked = os.open("/dev/null", os.O_RDONLY)
        os.set_inheritable(leaked, True)
        sv._no_inherited_fds()
        sup = sv.Supervisor(sv.decode_settings({encode_settings(s)!r}))
        sup.launch(sup.settings.child)
        print(sup.wait_child())
    """)
    assert res.stdout.strip() == "0", res.stderr
    assert sorted(int(fd) for fd in (tmp_path / "fds").read_text().split()) == [0, 1, 2, 3]  # 3: ls's own dir fd
