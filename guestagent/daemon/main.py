"""``waagent -daemon``: start sequence, provisioning, then supervision of the ext-handler child.

The sequence follows spec 06 §3. Once the VM is Ready the daemon re-executes itself (same PID and
command line, so the pid file, systemd and the child's orphan check stay valid) into the lean
supervisor of :mod:`guestagent.daemon.supervisor`: the protocol, XML and crypto modules it needed
before Ready are gone from memory, and all it does from then on is wait for the child in the kernel,
restart it with back-off and forward SIGTERM.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import threading
import time

from guestagent import events, log
from guestagent.cli import CliArgs
from guestagent.conf import Config
from guestagent.daemon import resourcedisk, scvmm
from guestagent.daemon.supervisor import (
    RETRY_AFTER_ERROR,
    SETTINGS_ENV,
    SUPERVISE_ENV,
    Settings,
    Supervisor,
    encode_settings,
)
from guestagent.osutil import processes, system
from guestagent.osutil.osrelease import distro_info
from guestagent.protocol.wire import make_transport_cert
from guestagent.provisioning.handler import provision
from guestagent.version import AGENT_LONG_NAME, AGENT_VERSION

DAEMON_VERSION_ENV = "_AZURE_GUEST_AGENT_DAEMON_VERSION_"


def run_daemon(args: CliArgs, config: Config) -> int:
    threading.current_thread().name = "Daemon"
    log.set_prefix("Daemon")
    os.environ[DAEMON_VERSION_ENV] = AGENT_VERSION
    lib_dir = config.lib_dir
    pid_file = config.pid_file

    events.set_lib_dir(lib_dir)
    return Daemon(args, config, lib_dir, pid_file).start()


class Daemon:
    def __init__(self, args: CliArgs, config: Config, lib_dir: str, pid_file: str):
        self.args = args
        self.config = config
        self.lib_dir = lib_dir
        self.pid_file = pid_file

    # -- start sequence -------------------------------------------------------------------------
    def start(self) -> int:
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
        if self.config.os_enable_fips:
            os.environ["OPENSSL_FIPS"] = "1"
        signal.signal(signal.SIGTERM, self._on_sigterm)
        log.info("Run daemon")
        while True:
            try:
                self._body()
                return 0
            except Exception as e:
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
        if scvmm.detect_and_handover(self.config):
            return  # the VMM agent took over: the daemon exits 0 (05 §8)
        resourcedisk.activate(self.config)
        for name in ("Protocol", "WireServerEndpoint"):
            system.remove(os.path.join(self.lib_dir, name))
        self._finish_detection(provision(self.config))
        if system.exists(os.path.join(self.lib_dir, "disable_agent")):
            log.warn("The agent is disabled by {0}; it will not process extensions",
                     os.path.join(self.lib_dir, "disable_agent"))
            while True:
                time.sleep(3600)
        log.info("End of log to /dev/console. The agent will now check for updates and then will process "
                 "extensions.")
        log.remove_appender("console")
        self._reexec_lean()

    def _finish_detection(self, protocol) -> None:
        """Ready went out without the transport certificate when nothing needed certificates (no
        cryptography before Ready); the child needs it for its first Certificates request, so it is
        made now, before the re-exec drops whatever it imported. Failed detection: made if missing."""
        if protocol is not None:
            protocol.finish_detection()
            return

        make_transport_cert(self.lib_dir, regenerate=False)

    def supervisor_settings(self) -> Settings:
        """What the lean supervisor needs, resolved here where the configuration is loaded."""
        appender = log.file_appender()
        verbose = self.args.verbose
        return Settings(pid_file=str(system.path(self.pid_file)), lib_dir=self.lib_dir, child=self.child_command(),
                        root=str(system.get_root()), log_file=appender.path if appender else "",
                        file_level=appender.level if appender else log.INFO,
                        stdout_level=log.VERBOSE if verbose else log.INFO)

    def _reexec_lean(self) -> None:
        """Replace this process by a fresh interpreter that only supervises (same PID, same argv);
        guestagent.cli sees SUPERVISE_ENV and runs guestagent.daemon.supervisor before anything else."""
        argv = list(sys.orig_argv) if sys.version_info >= (3, 10) else []
        if not argv:
            argv = [sys.executable, "-u", "-m", "guestagent.cli", *sys.argv[1:]]
        settings = self.supervisor_settings()
        os.environ[SETTINGS_ENV] = encode_settings(settings)
        os.environ[SUPERVISE_ENV] = str(os.getpid())
        rss = processes.rss_kb()
        peak = max(rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # the kernel updates it lazily
        log.info("Re-executing the daemon as the lean supervisor (pid {0}, RSS {1} kB, peak {2} kB, {3} modules "
                 "loaded)", os.getpid(), rss, peak, len(sys.modules))
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(sys.executable, [sys.executable, *argv[1:]])
        except OSError as e:
            os.environ.pop(SUPERVISE_ENV, None)
            os.environ.pop(SETTINGS_ENV, None)
            log.warn("Could not re-execute the daemon ({0}); supervising in place", e)
            self.supervise(settings)

    # -- supervision ----------------------------------------------------------------------------
    def child_command(self) -> list[str]:
        argv0 = sys.argv[0]
        if os.path.basename(argv0).startswith("waagent"):
            cmd = [sys.executable, "-u", argv0, "-run-exthandlers"]
        else:
            cmd = [sys.executable, "-u", "-m", "guestagent.cli", "-run-exthandlers"]
        if self.args.conf_path:
            cmd.append(f"-configuration-path:{self.args.conf_path}")
        return cmd

    def supervise(self, settings: Settings | None = None) -> int:
        """Supervise in this process (only when the re-exec failed)."""
        return Supervisor(settings or self.supervisor_settings()).run()

    def _on_sigterm(self, signum, frame) -> None:
        """Before Ready there is no child: leave, removing the pid file if it is ours."""
        try:
            if (system.read_text(self.pid_file, default="") or "").strip() == str(os.getpid()):
                system.remove(self.pid_file)
        except OSError:
            pass
        os._exit(0)

