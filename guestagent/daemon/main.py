"""``waagent -daemon``: start sequence, provisioning, then supervision of the ext-handler child.

The sequence follows spec 06 §3. Once the VM is Ready the daemon re-executes itself as a lean
supervisor (same PID, so the pid file, systemd and the child's orphan check stay valid): the
protocol, XML and crypto modules it needed before Ready are gone from memory, and all it does
from then on is wait for the child, restart it with back-off and forward SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Optional

from guestagent import log
from guestagent.osutil import processes, system
from guestagent.version import AGENT_LONG_NAME, AGENT_VERSION

DAEMON_VERSION_ENV = "_AZURE_GUEST_AGENT_DAEMON_VERSION_"
#: Set across the lean re-exec; never inherited by the child.
SUPERVISE_ENV = "_GUESTAGENT_DAEMON_SUPERVISE_"
RETRY_AFTER_ERROR = 15.0
CHILD_HEALTH_WINDOW = 15 * 60.0
QUICK_EXIT = 300.0
MAX_RESTART_DELAY = 60.0
CRASH_LOOP_EXITS = 3


def run_daemon(args, config) -> int:
    threading.current_thread().name = "Daemon"
    log.set_prefix("Daemon")
    os.environ[DAEMON_VERSION_ENV] = AGENT_VERSION
    lib_dir = config.get("Lib.Dir")
    pid_file = config.get("Pid.File")
    from guestagent import events

    events.set_lib_dir(lib_dir)
    daemon = Daemon(args, config, lib_dir, pid_file)
    if os.environ.pop(SUPERVISE_ENV, None) == str(os.getpid()):
        return daemon.supervise()
    return daemon.start()


class Daemon:
    def __init__(self, args, config, lib_dir: str, pid_file: str):
        self.args = args
        self.config = config
        self.lib_dir = lib_dir
        self.pid_file = pid_file
        self.child: Optional[subprocess.Popen] = None
        self.stopping = False

    # -- start sequence -------------------------------------------------------------------------
    def start(self) -> int:
        from guestagent.osutil import distro_info

        log.info("Azure Linux Agent Version: {0}", AGENT_VERSION)
        log.info("OS: {0}", distro_info())
        log.info("Python: {0}", ".".join(str(v) for v in sys.version_info[:3]))
        if self._already_running():
            log.info("Daemon is already running: {0}", AGENT_LONG_NAME)
            return 0
        system.write_file(self.pid_file, str(os.getpid()), fsync=False)
        if not system.exists(self.lib_dir):
            system.mkdir(self.lib_dir, mode=0o700)
            os.chdir(system.path(self.lib_dir))
        if self.config.get("OS.EnableFIPS"):
            os.environ["OPENSSL_FIPS"] = "1"
        signal.signal(signal.SIGTERM, self._on_sigterm)
        log.info("Run daemon")
        while True:
            try:
                self._body()
                return 0
            except Exception as e:
                from guestagent import events

                msg = f"The agent daemon failed: {e}"
                log.error("{0}", msg)
                events.add_event(events.WALAEventOperation.UnhandledError, is_success=False, message=msg,
                                 log_event=False, lib_dir=self.lib_dir)
                time.sleep(RETRY_AFTER_ERROR)

    def _already_running(self) -> bool:
        try:
            pid = int((system.read_text(self.pid_file) or "").strip())
        except (FileNotFoundError, ValueError):
            return False
        if pid == os.getpid():
            return False
        return processes.pid_alive(pid) and "daemon" in processes.cmdline(pid)

    def _body(self) -> None:
        from guestagent.daemon import resourcedisk, scvmm
        from guestagent.provisioning.handler import provision

        if scvmm.detect_and_handover(self.config):
            return  # the VMM agent took over: the daemon exits 0 (05 §8)
        resourcedisk.activate(self.config)
        for name in ("Protocol", "WireServerEndpoint"):
            system.remove(os.path.join(self.lib_dir, name))
        provision(self.config)
        if system.exists(os.path.join(self.lib_dir, "disable_agent")):
            log.warn("The agent is disabled by {0}; it will not process extensions",
                     os.path.join(self.lib_dir, "disable_agent"))
            while True:
                time.sleep(3600)
        log.info("End of log to /dev/console. The agent will now check for updates and then will process "
                 "extensions.")
        log.remove_appender("console")
        self._reexec_lean()

    def _reexec_lean(self) -> None:
        """Replace this process by a fresh interpreter that only supervises (same PID)."""
        argv = list(getattr(sys, "orig_argv", []) or [])
        if not argv:
            argv = [sys.executable, "-u", "-m", "guestagent.cli", *sys.argv[1:]]
        os.environ[SUPERVISE_ENV] = str(os.getpid())
        log.info("Re-executing the daemon as the lean supervisor (pid {0}, RSS {1} kB, {2} modules loaded)",
                 os.getpid(), processes.rss_kb(), len(sys.modules))
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(sys.executable, [sys.executable, *argv[1:]])
        except OSError as e:
            os.environ.pop(SUPERVISE_ENV, None)
            log.warn("Could not re-execute the daemon ({0}); supervising in place", e)
            self.supervise()

    # -- supervision ----------------------------------------------------------------------------
    def child_command(self) -> list[str]:
        argv0 = sys.argv[0]
        if os.path.basename(argv0).startswith("waagent"):
            cmd = [sys.executable, "-u", argv0, "-run-exthandlers"]
        else:
            cmd = [sys.executable, "-u", "-m", "guestagent.cli", "-run-exthandlers"]
        conf_path = getattr(self.args, "conf_path", None)
        if conf_path:
            cmd.append(f"-configuration-path:{conf_path}")
        return cmd

    def supervise(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        log.info("Lean supervisor running (pid {0}, RSS {1} kB, {2} modules loaded)", os.getpid(), processes.rss_kb(),
                 len(sys.modules))
        policy = RestartPolicy()
        while not self.stopping:
            self._claim_pid_file()
            cmd = self.child_command()
            started = time.monotonic()
            try:
                self.child = subprocess.Popen(cmd, env=_child_env(), cwd=os.getcwd())
            except OSError as e:
                log.error("Failed to launch the extension handler: {0}", e)
                time.sleep(RETRY_AFTER_ERROR)
                continue
            log.info("Agent {0} launched with command '{1}' (pid {2})", AGENT_LONG_NAME, " ".join(cmd),
                     self.child.pid)
            rc = self._wait_child()
            if self.stopping:
                break
            ran = time.monotonic() - started
            delay, crash_loop = policy.after_exit(rc, ran, time.monotonic())
            how = f"exited with code {rc}" if rc >= 0 else f"was killed by signal {-rc}"
            if rc != 0:
                log.warn("Agent {0} {1} after {2:.1f} s; restarting it in {3:.0f} s", AGENT_LONG_NAME, how, ran,
                         delay)
            else:
                log.info("Agent {0} exited (code 0) after {1:.1f} s; restarting it in {2:.0f} s", AGENT_LONG_NAME,
                         ran, delay)
            if crash_loop:
                self._event(False, f"The extension handler is in a crash loop: {policy.quick_exits} exits within "
                                   f"{QUICK_EXIT:.0f} s, last {how}; restarting it in {delay:.0f} s")
            if delay:
                time.sleep(delay)
        return 0

    def _claim_pid_file(self) -> None:
        """The child takes a pid file that is missing or names another process for "the daemon is gone"
        and exits; make sure the file names this process before every launch (else: a restart loop)."""
        own = str(os.getpid())
        try:
            text = (system.read_text(self.pid_file, default="") or "").strip()
            if text != own:
                log.warn("The daemon pid file {0} {1}; writing {2} again", self.pid_file,
                         f"holds {text!r}" if text else "is missing", own)
                system.write_file(self.pid_file, own, fsync=False)
        except OSError as e:
            log.error("Cannot write the daemon pid file {0}: {1}", self.pid_file, e)

    def _wait_child(self) -> int:
        assert self.child is not None
        launched = f"Agent {AGENT_LONG_NAME} launched with command '{' '.join(self.child.args)}'"
        try:
            rc = self.child.wait(timeout=CHILD_HEALTH_WINDOW)
        except subprocess.TimeoutExpired:
            self._event(True, f"{launched} is successfully running")
            rc = self.child.wait()
        else:
            if rc > 0:
                self._event(False, f"{launched} failed with return code: {rc}")
        return rc

    def _event(self, ok: bool, message: str) -> None:
        from guestagent import events

        if ok:
            log.info("{0}", message)
        events.add_event(events.WALAEventOperation.Enable, is_success=ok, message=message, lib_dir=self.lib_dir)

    def _on_sigterm(self, signum, frame) -> None:
        self.stopping = True
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signal.SIGTERM)
            except OSError:
                pass
        try:
            if (system.read_text(self.pid_file, default="") or "").strip() == str(os.getpid()):
                system.remove(self.pid_file)
        except OSError:
            pass
        os._exit(0)


class RestartPolicy:
    """When to relaunch the child. After a long run (>= QUICK_EXIT): at once. A single quick clean
    exit (orphan check, self-update): at once. Any other quick exit: after a back-off that doubles from
    1 s up to MAX_RESTART_DELAY; CRASH_LOOP_EXITS quick exits within QUICK_EXIT make a crash loop."""

    def __init__(self) -> None:
        self.exits: deque[float] = deque(maxlen=CRASH_LOOP_EXITS)
        self.delay = 0.0

    @property
    def quick_exits(self) -> int:
        return len(self.exits)

    def after_exit(self, rc: int, ran: float, now: float) -> tuple[float, bool]:
        """(seconds to wait before the next launch, whether this is a crash loop)."""
        if ran >= QUICK_EXIT:
            self.exits.clear()
            self.delay = 0.0
            return 0.0, False
        self.exits.append(now)
        if rc == 0 and len(self.exits) == 1:
            return 0.0, False
        self.delay = min(MAX_RESTART_DELAY, max(1.0, self.delay * 2))
        crash_loop = len(self.exits) >= CRASH_LOOP_EXITS and now - self.exits[0] < QUICK_EXIT
        return self.delay, crash_loop


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop(SUPERVISE_ENV, None)
    return env
