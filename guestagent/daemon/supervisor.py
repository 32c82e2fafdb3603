"""The lean supervisor: what ``waagent -daemon`` becomes after Ready (spec 06 §4.2).

The daemon re-executes itself after Ready (same PID and command line, so the pid file, systemd's main
PID and the child's orphan check stay valid); ``guestagent.cli`` sees the marker in the environment
and comes here before importing anything else. This module imports only ``os``, ``select``, ``time``,
the C signal module and the atomic file writer (itself only ``os``): all a supervisor does is launch
the ext-handler child, block in the kernel until it exits (a pidfd, or SIGCHLD on a self-pipe where
pidfds are missing: no polling), relaunch it with back-off, and forward SIGTERM. It writes its few
log lines itself in the agent's line format; events are written by a short-lived fork, so the heavy
event modules never stay resident here.
"""

from __future__ import annotations

import os
import select
import sys
import time

try:  # the C module behind ``signal``: the same calls without the enum wrappers (0.7 MB resident)
    import _signal as signal
except ImportError:  # pragma: no cover - not CPython
    import signal  # type: ignore[no-redef]

from guestagent.osutil import atomic
from guestagent.version import AGENT_LONG_NAME

#: Set across the lean re-exec to the daemon's PID; never inherited by the child.
SUPERVISE_ENV = "_GUESTAGENT_DAEMON_SUPERVISE_"
#: What the supervisor needs from the daemon's configuration (see :func:`encode_settings`).
SETTINGS_ENV = "_GUESTAGENT_SUPERVISOR_SETTINGS_"
RETRY_AFTER_ERROR = 15.0
CHILD_HEALTH_WINDOW = 15 * 60.0
QUICK_EXIT = 300.0
MAX_RESTART_DELAY = 60.0
CRASH_LOOP_EXITS = 3
_ARG_SEP = "\x1f"
_LEVELS = {0: "VERBOSE", 1: "INFO", 2: "WARNING", 3: "ERROR"}
VERBOSE, INFO, WARNING, ERROR = 0, 1, 2, 3


class RestartPolicy:
    """When to relaunch the child. After a long run (>= QUICK_EXIT): at once. A single quick clean
    exit (orphan check, self-update): at once. Any other quick exit: after a back-off that doubles from
    1 s up to MAX_RESTART_DELAY; CRASH_LOOP_EXITS quick exits within QUICK_EXIT make a crash loop."""

    def __init__(self) -> None:
        self.exits: list[float] = []
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
        self.exits = [*self.exits, now][-CRASH_LOOP_EXITS:]
        if rc == 0 and len(self.exits) == 1:
            return 0.0, False
        self.delay = min(MAX_RESTART_DELAY, max(1.0, self.delay * 2))
        crash_loop = len(self.exits) >= CRASH_LOOP_EXITS and now - self.exits[0] < QUICK_EXIT
        return self.delay, crash_loop


def child_env(environ=None) -> dict:
    """The child's environment: the daemon's, without the supervisor's own markers."""
    env = dict(os.environ if environ is None else environ)
    env.pop(SUPERVISE_ENV, None)
    env.pop(SETTINGS_ENV, None)
    return env


# -- settings handed across the re-exec ----------------------------------------------------------------
class Settings:
    """The daemon's resolved configuration, as far as supervision needs it. Paths are real paths
    (already mapped through the osutil root), except ``lib_dir`` (events resolve it themselves)."""

    FIELDS = ("pid_file", "lib_dir", "root", "log_file", "file_level", "stdout_level", "child")

    def __init__(self, pid_file: str, lib_dir: str, child: list, root: str = "/", log_file: str = "",
                 file_level: int = INFO, stdout_level: int = INFO):
        self.pid_file = pid_file
        self.lib_dir = lib_dir
        self.child = list(child)
        self.root = root
        self.log_file = log_file
        self.file_level = int(file_level)
        self.stdout_level = int(stdout_level)


def encode_settings(s: Settings) -> str:
    """One environment value: ``key=value`` lines, the child's argv joined by U+001F."""
    values = {"pid_file": s.pid_file, "lib_dir": s.lib_dir, "root": s.root, "log_file": s.log_file,
              "file_level": str(s.file_level), "stdout_level": str(s.stdout_level),
              "child": _ARG_SEP.join(s.child)}
    for key, value in values.items():
        if "\n" in value or "\0" in value:
            raise ValueError(f"supervisor setting {key} contains a line break or NUL")
    return "\n".join(f"{k}={v}" for k, v in values.items())


def decode_settings(text: str) -> Settings:
    values = dict(line.partition("=")[::2] for line in text.split("\n") if line)
    missing = [k for k in Settings.FIELDS if k not in values]
    if missing or not values["child"] or not values["pid_file"]:
        raise ValueError(f"supervisor settings incomplete (missing {missing or 'values'})")
    return Settings(values["pid_file"], values["lib_dir"], values["child"].split(_ARG_SEP), values["root"],
                    values["log_file"], int(values["file_level"]), int(values["stdout_level"]))


# -- log lines -------------------------------------------------------------------------------------------
class LineLog:
    """``<timestamp> <LEVEL> Daemon Daemon <message>`` to stdout and the agent log (spec 06 §8.1),
    the file opened in append mode per line as guestagent.log does. The console appender is gone by
    now (removed before the re-exec); messages here carry no secrets, so no redaction is needed."""

    def __init__(self, log_file: str = "", file_level: int = INFO, stdout_level: int = INFO):
        self.log_file = log_file
        self.file_level = file_level
        self.stdout_level = stdout_level

    @staticmethod
    def format(level: int, message: str, now_ns: int | None = None) -> str:
        us = (time.time_ns() if now_ns is None else now_ns) // 1000
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us // 1_000_000))
        text = message.encode("ascii", "backslashreplace").decode("ascii")
        return f"{stamp}.{us % 1_000_000:06d}Z {_LEVELS[level]} Daemon Daemon {text}\n"

    def write(self, level: int, message: str) -> None:
        line = self.format(level, message)
        data = line.encode("ascii")
        if level >= self.stdout_level:
            try:
                os.write(1, data)
            except OSError:
                pass
        if self.log_file and level >= self.file_level:
            try:
                fd = os.open(self.log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            except OSError:
                pass

    def verbose(self, message: str) -> None:
        self.write(VERBOSE, message)

    def info(self, message: str) -> None:
        self.write(INFO, message)

    def warn(self, message: str) -> None:
        self.write(WARNING, message)

    def error(self, message: str) -> None:
        self.write(ERROR, message)


def rss_kb() -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


# -- the supervisor ----------------------------------------------------------------------------------------
class Supervisor:
    """Launch, wait, relaunch (spec 06 §4.2). ``use_pidfd=False`` forces the SIGCHLD fallback."""

    def __init__(self, settings: Settings, log: LineLog | None = None, use_pidfd: bool | None = None):
        self.settings = settings
        self.log = log or LineLog(settings.log_file, settings.file_level, settings.stdout_level)
        self.use_pidfd = hasattr(os, "pidfd_open") if use_pidfd is None else use_pidfd
        self.child_pid: int | None = None
        self.child_fd: int | None = None
        self.stopping = False
        self._wake_r: int | None = None

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        _no_inherited_fds()
        self.log.info(f"Lean supervisor running (pid {os.getpid()}, RSS {rss_kb()} kB, "
                      f"{len(sys.modules)} modules loaded)")
        if min(self.log.file_level, self.log.stdout_level) <= VERBOSE:
            self.log.verbose(f"Lean supervisor modules: {' '.join(sorted(sys.modules))}")
        policy = RestartPolicy()
        while not self.stopping:
            self.claim_pid_file()
            cmd = self.settings.child
            started = time.monotonic()
            try:
                self.launch(cmd)
            except OSError as e:
                self.log.error(f"Failed to launch the extension handler: {e}")
                time.sleep(RETRY_AFTER_ERROR)
                continue
            self.log.info(f"Agent {AGENT_LONG_NAME} launched with command '{' '.join(cmd)}' (pid {self.child_pid})")
            rc = self.wait_child()
            if self.stopping:
                break
            ran = time.monotonic() - started
            delay, crash_loop = policy.after_exit(rc, ran, time.monotonic())
            how = f"exited with code {rc}" if rc >= 0 else f"was killed by signal {-rc}"
            if rc != 0:
                self.log.warn(f"Agent {AGENT_LONG_NAME} {how} after {ran:.1f} s; restarting it in {delay:.0f} s")
            else:
                self.log.info(f"Agent {AGENT_LONG_NAME} exited (code 0) after {ran:.1f} s; restarting it in "
                              f"{delay:.0f} s")
            if crash_loop:
                self.event(False, f"The extension handler is in a crash loop: {policy.quick_exits} exits within "
                                  f"{QUICK_EXIT:.0f} s, last {how}; restarting it in {delay:.0f} s")
            if delay:
                time.sleep(delay)
        return 0

    def claim_pid_file(self) -> None:
        """The child takes a pid file that is missing or names another process for "the daemon is gone"
        and exits; make sure the file names this process before every launch (else: a restart loop)."""
        own = str(os.getpid())
        path = self.settings.pid_file
        try:
            try:
                with open(path, encoding="ascii", errors="replace") as f:
                    text = f.read().strip()
            except FileNotFoundError:
                text = ""
            if text == own:
                return
            self.log.warn(f"The daemon pid file {_display(path, self.settings.root)} "
                          f"{f'holds {text!r}' if text else 'is missing'}; writing {own} again")
            atomic.write(path, own.encode())
        except OSError as e:
            self.log.error(f"Cannot write the daemon pid file {_display(path, self.settings.root)}: {e}")

    # -- one child -----------------------------------------------------------------------------------
    def launch(self, cmd: list) -> int:
        """posix_spawn the child (stdout/stderr/cwd inherited, descriptors above 2 not: see
        :func:`_no_inherited_fds`); then a pidfd for it, or the SIGCHLD self-pipe."""
        if not self.use_pidfd:
            self._arm_sigchld()
        spawn = os.posix_spawn if os.path.isabs(cmd[0]) else os.posix_spawnp
        sigdef = (signal.SIGPIPE, signal.SIGXFSZ)
        self.child_pid = spawn(cmd[0], cmd, child_env(), setsigdef=sigdef)
        self.child_fd = None
        if self.use_pidfd:
            try:
                self.child_fd = os.pidfd_open(self.child_pid)
            except OSError:  # kernel < 5.3: from now on the fallback
                self.use_pidfd = False
                self._arm_sigchld()
        return self.child_pid

    def wait_child(self) -> int:
        """Block until the child exits; keeps the 15-minute "healthy" window semantics."""
        assert self.child_pid is not None
        launched = f"Agent {AGENT_LONG_NAME} launched with command '{' '.join(self.settings.child)}'"
        try:
            rc = self._wait(CHILD_HEALTH_WINDOW)
            if rc is None:
                self.event(True, f"{launched} is successfully running")
                rc = self._wait(None)
            elif rc > 0:
                self.event(False, f"{launched} failed with return code: {rc}")
        finally:
            if self.child_fd is not None:
                os.close(self.child_fd)
                self.child_fd = None
        return rc if rc is not None else 0

    def _wait(self, timeout: float | None) -> int | None:
        """The child's exit code once it exits, None when ``timeout`` passed first. Sleeps in the kernel."""
        pid = self.child_pid
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.child_fd is None:  # fallback: SIGCHLD writes to the self-pipe
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    self.child_pid = None
                    return os.waitstatus_to_exitcode(status)
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            fd = self.child_fd if self.child_fd is not None else self._wake_r
            ready, _, _ = select.select([fd], [], [], remaining)
            if fd == self._wake_r and ready:
                _drain(fd)
            if self.child_fd is not None and ready:
                _, status = os.waitpid(pid, 0)
                self.child_pid = None
                return os.waitstatus_to_exitcode(status)
            if not ready and deadline is not None and time.monotonic() >= deadline:
                return None

    def _arm_sigchld(self) -> None:
        if self._wake_r is not None:
            return
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wake_r = r
        signal.set_wakeup_fd(w)
        signal.signal(signal.SIGCHLD, _on_sigchld)

    # -- events and signals --------------------------------------------------------------------------
    def event(self, ok: bool, message: str) -> None:
        """An ``Enable`` event, written by a fork that imports guestagent.events and exits, so this
        process never keeps those modules; failures are logged here as add_event logs them. The event is
        on disk before the log line that announces it (whoever reads the log finds the event)."""
        write_event(self.settings, "Enable", ok, message)
        if ok:
            self.log.info(message)
        else:
            self.log.error(f"Event: name=WALinuxAgent, op=Enable, message={message}, duration=0")

    def _on_sigterm(self, signum, frame) -> None:
        self.stopping = True
        try:
            if self.child_fd is not None and hasattr(signal, "pidfd_send_signal"):
                signal.pidfd_send_signal(self.child_fd, signal.SIGTERM)
            elif self.child_pid is not None:
                os.kill(self.child_pid, signal.SIGTERM)
        except OSError:
            pass
        try:
            with open(self.settings.pid_file, encoding="ascii", errors="replace") as f:
                if f.read().strip() == str(os.getpid()):
                    os.remove(self.settings.pid_file)
        except OSError:
            pass
        os._exit(0)


def _on_sigchld(signum, frame) -> None:
    """Installed only so the C handler writes to the wake-up fd."""


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except OSError:  # EAGAIN: empty
        pass


def _display(path: str, root: str) -> str:
    """The path as the agent names it (without a test root)."""
    if root not in ("", "/") and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")):]
    return path


def _no_inherited_fds() -> None:
    """``close_fds`` semantics for every launch: descriptors above 2 are not inherited by the child.
    Python creates its own non-inheritable; this covers any the daemon was started with."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


def write_event(settings: Settings, op: str, ok: bool, message: str) -> None:
    """Write the event from a fork (the daemon's PID and thread name in it); in-process if fork fails."""
    try:
        pid = os.fork()
    except OSError:
        pid = -1
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _write_event_here(settings, op, ok, message, os.getppid())
            code = 0
        finally:
            os._exit(code)
    if pid > 0:
        while True:
            try:
                os.waitpid(pid, 0)
                return
            except ChildProcessError:
                return
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
    try:
        _write_event_here(settings, op, ok, message, os.getpid())
    except Exception as e:  # never let an event stop supervision
        LineLog(settings.log_file, settings.file_level, settings.stdout_level).warn(f"Failed to write event: {e}")


def _write_event_here(settings: Settings, op: str, ok: bool, message: str, daemon_pid: int) -> None:
    import threading

    from guestagent import events, log
    from guestagent.osutil import system

    threading.current_thread().name = "Daemon"
    log.set_prefix("Daemon")
    if settings.log_file:
        log.add_appender("file", log.FileAppender(settings.file_level, settings.log_file))
    system.set_root(settings.root)
    events.add_event(op, is_success=ok, message=message, log_event=False, lib_dir=settings.lib_dir, pid=daemon_pid)


def main() -> int:
    """Entry after the re-exec (from guestagent.cli): the daemon's settings from the environment."""
    marker = os.environ.pop(SUPERVISE_ENV, None)
    text = os.environ.pop(SETTINGS_ENV, None)
    if marker != str(os.getpid()) or text is None:
        os.write(2, b"guestagent: the lean supervisor needs the daemon's re-exec environment\n")
        return 1
    try:
        settings = decode_settings(text)
    except ValueError as e:
        os.write(2, f"guestagent: {e}\n".encode("ascii", "backslashreplace"))
        return 1
    return Supervisor(settings).run()
