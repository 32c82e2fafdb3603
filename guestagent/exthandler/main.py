"""``waagent -run-exthandlers``: the ext-handler child (spec 06 §5–§7).

The main thread runs the extension loop every ``Extensions.GoalStatePeriod``; the monitor, env and
telemetry threads run named periodic operations (guestagent.periodic). Nothing that fails in one
iteration or one operation ends the process: it is logged, reported and retried.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import threading
import time
import traceback
import uuid
from typing import Callable, Optional

from guestagent import events, log
from guestagent.cli import CliArgs
from guestagent.conf import Config
from guestagent.exthandler import env, logcollector, monitor, startup, telemetry
from guestagent.exthandler.cgroups import CGroupConfigurator
from guestagent.exthandler.cloudinitwait import CloudInitWait
from guestagent.exthandler.context import ThreadContext
from guestagent.exthandler.extensions import signing
from guestagent.exthandler.extensions.manager import ExtensionsManager
from guestagent.exthandler.extensions.orphans import LeftCommands
from guestagent.exthandler.monitor import AgentMemoryCheck
from guestagent.exthandler.remoteaccess import RemoteAccessHandler
from guestagent.exthandler.selfupdate import AgentUpdateReporter
from guestagent.exthandler.summary import GoalStateProgress
from guestagent.osutil import distros, processes, system
from guestagent.osutil.processes import pid_alive
from guestagent.periodic import PeriodicThread
from guestagent.protocol import history
from guestagent.protocol.goalstate import GoalState
from guestagent.protocol.status import build_vm_status
from guestagent.protocol.wire import WireProtocol, from_files
from guestagent.version import AGENT_LONG_NAME

HEARTBEAT_PERIOD = 30 * 60.0
#: A status that did not change is uploaded again at this cadence (at most; 10 goal-state periods when
#: the period is shorter); a change is uploaded at once.
STATUS_REFRESH_PERIOD = 60.0
STATUS_REFRESH_PERIODS = 10
ORPHAN_WAIT = 15 * 60.0
#: Consecutive goal-state errors logged at once; after that one line every GOAL_STATE_ERROR_LOG_PERIOD.
GOAL_STATE_ERRORS_LOGGED = 3
GOAL_STATE_ERROR_LOG_PERIOD = 6 * 3600.0
SENTINEL = "current_version"
READ_ONLY_PATTERNS = ("*.crt", "*.p7m", "*.pem", "*.prv", "Certificates.xml", "ovf-env.xml")


def run_exthandlers(args: CliArgs, config: Config) -> int:
    threading.current_thread().name = "ExtHandler"
    log.set_prefix("ExtHandler")
    child = ExtHandler(args, config)
    try:
        return child.run()
    except SystemExit:
        raise
    except BaseException as e:  # also KeyboardInterrupt: the next child must learn it was not a clean stop
        msg = f"Agent {AGENT_LONG_NAME} failed with exception: {_describe(e)}"
        child.write_sentinel(msg)
        log.warn("{0}", msg)
        log.warn("{0}", "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip())
        return 1


class ExtHandler:
    """The child and what it owns: the protocol, the extensions manager, the cgroup configurator it hands
    to its threads and handlers, the JIT-user handler and the agent memory check."""

    def __init__(self, args: CliArgs, config: Config):
        self.args = args
        self.config = config
        self.lib_dir: str = config.lib_dir
        # Extensions.InitialGoalStatePeriod until the first goal state converged (the initial_goal_state marker)
        self.progress = GoalStateProgress(self.lib_dir, config.extensions_enabled,
                                          float(config.extensions_goal_state_period),
                                          float(config.extensions_initial_goal_state_period))
        self.period: float = self.progress.period
        if not config.extensions_enabled:
            self.period = 300.0
        self.updates = AgentUpdateReporter(config, self.lib_dir)
        self.cloud_init = CloudInitWait(config, self.lib_dir)
        self.protocol: Optional[WireProtocol] = None
        self.extensions: Optional[ExtensionsManager] = None
        self.cgroups = CGroupConfigurator(config)
        self.remote_access = RemoteAccessHandler(config, self.lib_dir)
        self.memory_check = AgentMemoryCheck(config, self.cgroups, self.lib_dir)
        self.threads: dict[str, PeriodicThread] = {}
        self.thread_factories: dict[str, Callable[[], PeriodicThread]] = {}
        self.stop_event = threading.Event()
        self.pid_file: Optional[str] = None
        self.heartbeat_id = str(uuid.uuid4()).upper()
        self.heartbeat_counter = 0
        self.gs_errors = 0             # since the last heartbeat
        self.gs_errors_in_a_row = 0    # since the last successful update
        self.next_gs_error_log = 0.0
        self.status_refresh = min(STATUS_REFRESH_PERIOD, STATUS_REFRESH_PERIODS * self.period)
        self.last_status_key: Optional[str] = None
        self.last_status_upload = 0.0
        self.last_extensions_id: Optional[str] = None
        self.last_incarnation: Optional[str] = None

    # -- start-up ----------------------------------------------------------------------------------
    def run(self) -> int:
        distro = distros.detect()
        os_info = startup.log_start(distro)
        events.set_lib_dir(self.lib_dir)
        self.protocol = self._get_protocol()
        if not self._initialize_goal_state():
            log.info("Agent {0} is an orphan -- exiting", AGENT_LONG_NAME)
            return 0
        events.update_common_from_goal_state(self.protocol.goal_state)
        startup.send_identity(self.protocol.endpoint, os_info, self.lib_dir)
        self._write_pid_file()
        self._check_sentinel()
        startup.send_configuration_changes(self.config, self.lib_dir)
        self._make_secrets_read_only()
        history.purge_legacy(self.lib_dir)
        signing.write_root_certificate(self.lib_dir)
        self.updates.log_start()
        # from now on a new certificate bundle is decrypted beside the loop (waited for only where needed)
        self.protocol.updater.async_certificates = True
        self.extensions = self._make_extensions_manager()
        self._start_threads()
        log.info("Goal State Period: {0} sec. This indicates how often the agent checks for new goal states "
                 "and reports status.", int(self.period))
        try:
            self._main_loop()
        finally:
            self.stop_event.set()
            self._remove_pid_file()
        self._remove_sentinel()
        return 0

    def _get_protocol(self) -> WireProtocol:
        return from_files(self.config, self.lib_dir)

    def _initialize_goal_state(self) -> bool:
        """Retry every period until one goal-state update succeeds (errors logged as in the loop);
        False if the daemon went away meanwhile."""
        self._info_event(events.WALAEventOperation.GoalState, "Initializing the goal state...")
        while True:
            try:
                goal_state = self.protocol.update_goal_state()
            except Exception as e:
                self._goal_state_error(e)
            else:
                self._goal_state_recovered(goal_state)
                self._info_event(events.WALAEventOperation.GoalState, "Goal state initialization completed.")
                return True
            if self._is_orphan():
                return False
            time.sleep(self.period)

    def _info_event(self, op: str, message: str) -> None:
        log.info("{0}", message)
        events.add_event(op, message=message, lib_dir=self.lib_dir)

    def _write_pid_file(self) -> None:
        pid_path = self.config.pid_file
        directory, name = os.path.split(system.path(pid_path))
        older: list[tuple[int, str]] = []
        for path in glob.glob(os.path.join(directory, f"*_{name}")):
            prefix = os.path.basename(path).split("_", 1)[0]
            if prefix.isdigit():
                older.append((int(prefix), path))
        index = max((n for n, _ in older), default=-1) + 1
        self.pid_file = os.path.join(directory, f"{index}_{name}")
        system.write_file(self.pid_file, str(os.getpid()), fsync=False)
        for _, path in sorted(older):
            self._retire_older(path)

    def _retire_older(self, path: str) -> None:
        """Wait for an older ext-handler to end (3 s polls, 15 min), then kill it for real."""
        try:
            pid = int(open(path).read().strip())
        except (OSError, ValueError):
            system.remove(path)
            return
        deadline = time.monotonic() + ORPHAN_WAIT
        while pid != os.getpid() and pid_alive(pid) and time.monotonic() < deadline:
            log.info("Waiting for the older extension handler (pid {0}) to exit", pid)
            time.sleep(3)
        if pid != os.getpid() and pid_alive(pid):
            log.warn("Killing the older extension handler (pid {0})", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError as e:
                log.warn("Could not kill {0}: {1}", pid, e)
        system.remove(path)

    def _remove_pid_file(self) -> None:
        if self.pid_file:
            system.remove(self.pid_file)

    def _check_sentinel(self) -> None:
        path = os.path.join(self.lib_dir, SENTINEL)
        text = system.read_text(path, default="")
        if text:
            msg = f"Agent did not terminate cleanly: {text}"
            log.info("{0}", msg)
            events.add_event(events.WALAEventOperation.Restart, is_success=False, message=msg,
                             lib_dir=self.lib_dir)
            system.remove(path)

    def write_sentinel(self, message: str) -> None:
        try:
            system.write_file(os.path.join(self.lib_dir, SENTINEL), f"[{AGENT_LONG_NAME}] [{message}]")
        except OSError as e:
            log.warn("Exception writing sentinel file {0}: {1}", os.path.join(self.lib_dir, SENTINEL), e)

    def _remove_sentinel(self) -> None:
        system.remove(os.path.join(self.lib_dir, SENTINEL))

    def _make_secrets_read_only(self) -> None:
        base = system.path(self.lib_dir)
        for pattern in READ_ONLY_PATTERNS:
            for path in glob.glob(os.path.join(base, pattern)):
                if os.path.basename(path) != "microsoft_root_certificate.pem":
                    try:
                        os.chmod(path, 0o400)
                    except OSError as e:
                        log.warn("Could not make {0} read-only: {1}", path, e)

    def _make_extensions_manager(self) -> ExtensionsManager:
        left = LeftCommands.find(event=lambda op, **kw: events.add_event(op, lib_dir=self.lib_dir, log_event=False,
                                                                        **kw))
        return ExtensionsManager(self.config, self.protocol, cgroups=self.cgroups, left_commands=left)

    def _start_threads(self) -> None:
        ctx = ThreadContext(self.config, self.protocol, self.lib_dir, self.stop_event, self.cgroups)
        self.thread_factories = {
            "MonitorHandler": lambda: PeriodicThread("MonitorHandler", monitor.operations(ctx), self.stop_event),
            "EnvHandler": lambda: PeriodicThread("EnvHandler", env.operations(ctx), self.stop_event),
            "SendTelemetryHandler": lambda: PeriodicThread("SendTelemetryHandler", telemetry.send_operations(ctx),
                                                           self.stop_event),
            "TelemetryEventsCollector": lambda: PeriodicThread("TelemetryEventsCollector",
                                                               telemetry.collect_operations(ctx), self.stop_event),
        }
        log_ops = logcollector.operations(ctx)
        if log_ops:
            self.thread_factories["CollectLogsHandler"] = lambda: PeriodicThread("CollectLogsHandler",
                                                                                 logcollector.operations(ctx),
                                                                                 self.stop_event)
        for name, factory in self.thread_factories.items():
            self.threads[name] = factory()
            self.threads[name].start()

    def _check_threads(self) -> None:
        for name, thread in list(self.threads.items()):
            if not thread.is_alive():
                log.warn("{0} thread died, restarting", name)
                self.threads[name] = self.thread_factories[name]()
                self.threads[name].start()

    # -- main loop ---------------------------------------------------------------------------------
    def _main_loop(self) -> None:
        next_heartbeat = time.monotonic()
        while True:
            if self._is_orphan():
                log.info("Agent {0} is an orphan -- exiting", AGENT_LONG_NAME)
                return
            self._check_threads()
            self.iterate()
            self.remote_access.on_goal_state(self.protocol.goal_state)  # JIT users (new incarnation)
            if self.memory_check.exceeded(self.extensions):  # Debug.EnableAgentMemoryUsageCheck
                return
            if time.monotonic() >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = time.monotonic() + HEARTBEAT_PERIOD
            time.sleep(self.period)

    def iterate(self) -> None:
        """One pass: goal state → extensions → status. Every failure is contained here."""
        goal_state: Optional[GoalState] = None
        try:
            goal_state = self.protocol.update_goal_state()
        except Exception as e:
            self._goal_state_error(e)
        else:
            self._goal_state_recovered(goal_state)
        if goal_state is not None:
            ext_id = _extensions_id(goal_state)
            new = ext_id is not None and ext_id != self.last_extensions_id
            retry = not new and ext_id is not None and self.extensions.retry_due()  # after a full disk
            self.updates.on_goal_state(goal_state, new)
            self.cloud_init.wait()  # Extensions.WaitForCloudInit: once, before the first extension
            if new:
                self.progress.on_new_goal_state()
            if new or retry:
                try:
                    self.extensions.process(goal_state, retry=retry)
                except Exception as e:
                    log.error("Error processing extensions goal state {0}: {1}", ext_id, e)
                self.last_extensions_id = ext_id
                self.last_incarnation = goal_state.incarnation
                self.report_status(goal_state)
                self._archive_history()
                processes.release_free_heap()
                return
        self.report_status(goal_state)
        if goal_state is not None:
            self.last_incarnation = goal_state.incarnation

    def _archive_history(self) -> None:
        history = self.protocol.history
        goal_state = self.protocol.goal_state
        job = goal_state.certificates_job if goal_state is not None else None
        if job is not None and not job.done() and job.history_folder != history.current:
            goal_state.wait_for_certificates()  # its Certificates.json goes to a folder archive() may zip
        try:
            history.archive()
        except Exception as e:
            log.periodic(3600, log.WARNING, "Failed to archive the goal-state history: {0}", e)

    def _goal_state_error(self, error: Exception) -> None:
        """The first errors in a row are logged (and sent as events) at once, then one every 6 h."""
        self.gs_errors += 1
        self.gs_errors_in_a_row += 1
        now = time.monotonic()
        if self.gs_errors_in_a_row <= GOAL_STATE_ERRORS_LOGGED:
            msg = f"Error fetching the goal state: {_describe(error)}"
        elif now >= self.next_gs_error_log:
            msg = f"Fetching the goal state is still failing: {_describe(error)}"
        else:
            return
        self.next_gs_error_log = now + GOAL_STATE_ERROR_LOG_PERIOD
        log.error("{0}", msg)
        events.add_event(events.WALAEventOperation.FetchGoalState, is_success=False, message=msg, log_event=False,
                         lib_dir=self.lib_dir)

    def _goal_state_recovered(self, goal_state: GoalState) -> None:
        if not self.gs_errors_in_a_row:
            return
        msg = (f"Fetching the goal state recovered from previous errors ({self.gs_errors_in_a_row} in a row). "
               f"Fetched {_extensions_id(goal_state)}")
        self.gs_errors_in_a_row = 0
        self._info_event(events.WALAEventOperation.FetchGoalState, msg)

    def report_status(self, goal_state: Optional[GoalState] = None) -> None:
        try:
            statuses = self.extensions.handler_statuses()
            status = build_vm_status(self.config, goal_state or self.protocol.goal_state, statuses,
                                     goal_state_status=self.extensions.goal_state_status(),
                                     update_status=self.updates.update_status())
            self.progress.on_status(status)
            if self.config.extensions_enabled:
                self.period = self.progress.period
            key = _status_key(status)
            now = time.monotonic()
            if key == self.last_status_key and now - self.last_status_upload < self.status_refresh:
                return
            self.protocol.upload_status(status)
            if key != self.last_status_key:
                log.verbose("Status uploaded (changed)")
            self.last_status_key = key
            self.last_status_upload = now
        except Exception as e:
            log.periodic(3600, log.WARNING, "Failed to report status: {0}", e)

    def _heartbeat(self) -> None:
        msg = (f"[HEARTBEAT] Agent {AGENT_LONG_NAME} is running as the goal state agent [DEBUG HeartbeatCounter: "
               f"{self.heartbeat_counter};HeartbeatId: {self.heartbeat_id};UpdateGSErrors: {self.gs_errors};"
               f"{self.updates.heartbeat_fields()}]")
        log.info("{0}", msg)
        events.add_event(events.WALAEventOperation.HeartBeat, message=msg, log_event=False, lib_dir=self.lib_dir)
        self.heartbeat_counter += 1
        self.gs_errors = 0

    def _is_orphan(self) -> bool:
        if self.args.debug:
            return False
        ppid = os.getppid()
        if ppid == 1:
            return True
        text = system.read_text(self.config.pid_file, default="")
        return (text or "").strip() != str(ppid)


def _describe(error: BaseException) -> str:
    text = str(error)
    return text if text else type(error).__name__


def _extensions_id(goal_state: GoalState) -> str:
    return goal_state.extensions_goal_state.id


def _status_key(status: dict) -> str:
    """The status without its generation timestamps: what decides whether it 'changed'."""

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "timestampUTC"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(status), sort_keys=True)
