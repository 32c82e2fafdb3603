"""``waagent``: upstream's command line, argument for argument (spec 05 §16, 06 §2).

Arguments match by a start-anchored regular expression after any number of ``-`` or ``/`` (so
``-daemon``, ``--daemon``, ``/daemonX`` are one command); the last command wins; an unknown argument
stops parsing and shows the usage. ``-version`` and ``-help`` import nothing heavy: the command
modules are imported only when their command runs.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("_GUESTAGENT_DAEMON_SUPERVISE_") == str(os.getpid()):
    # The daemon's re-exec after Ready (guestagent.daemon.main): become the lean supervisor before this
    # module imports anything a supervisor does not need (re, typing, conf, log, osutil).
    from guestagent.daemon.supervisor import main as _supervise

    sys.exit(_supervise())

import re
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

from guestagent.errors import ConfigError
from guestagent.version import AGENT_LONG_NAME, AGENT_NAME, AGENT_VERSION, GUESTAGENT_NAME, GUESTAGENT_VERSION

if TYPE_CHECKING:
    from guestagent.conf import Config


class CliArgs(NamedTuple):
    """The parsed command line (a NamedTuple rather than a dataclass: importing dataclasses pulls in
    inspect, which ``-version`` cannot afford)."""

    command: str = "help"
    conf_path: Optional[str] = None
    verbose: bool = False
    force: bool = False
    debug: bool = False
    full: bool = False
    firewall_dst_ip: Optional[str] = None
    #: Legacy ``-setup-firewall -dst_ip=<ip> -uid=<uid> [-w]`` (network-setup units before 2.12).
    firewall_uid: Optional[int] = None
    firewall_wait: bool = False
    #: The argument that selected the usage text because nothing matched it.
    unknown: Optional[str] = None


class UsageError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


#: command → "module:function" called as ``function(args: CliArgs, config: Config) -> int``.
COMMANDS = {
    "daemon": "guestagent.daemon.main:run_daemon",
    "run-exthandlers": "guestagent.exthandler.main:run_exthandlers",
    "deprovision": "guestagent.provisioning.deprovision:run_deprovision",
    "deprovision+user": "guestagent.provisioning.deprovision:run_deprovision",
    "provision": "guestagent.provisioning.handler:run_provision_command",
    "collect-logs": "guestagent.exthandler.logcollector:run_collect_logs",
    "setup-firewall": "guestagent.exthandler.firewall:run_setup_firewall",
    "register-service": "guestagent.osutil.service:register_service",
    "show-configuration": "guestagent.cli:run_show_configuration",
}

_P = r"^[-/]*"
# Upstream's patterns, in upstream's order (the order decides which one a prefix match picks).
_UPSTREAM = [
    (re.compile(_P + r"deprovision\+user"), "command", "deprovision+user"),
    (re.compile(_P + "deprovision"), "command", "deprovision"),
    (re.compile(_P + "daemon"), "command", "daemon"),
    (re.compile(_P + "start"), "command", "start"),
    (re.compile(_P + "register-service"), "command", "register-service"),
    (re.compile(_P + "run-exthandlers"), "command", "run-exthandlers"),
    (re.compile(_P + "version"), "command", "version"),
    (re.compile(_P + "verbose"), "verbose", True),
    (re.compile(_P + "debug"), "debug", True),
    (re.compile(_P + "force"), "force", True),
    (re.compile(_P + "show-configuration"), "command", "show-configuration"),
    (re.compile(_P + r"(help|usage|\?)"), "command", "help"),
    (re.compile(_P + "collect-logs"), "command", "collect-logs"),
    (re.compile(_P + "full"), "full", True),
]
_CONF_PATH = re.compile(_P + r"configuration-path:([\w/\.\-_]+)")
_SETUP_FIREWALL = re.compile(_P + r"setup-firewall=(?P<endpoint>[\d.]{7,})")
# Extensions: only tried after everything upstream knows, so they never change an upstream meaning.
_PROVISION = re.compile(_P + "provision")
_LEGACY_FIREWALL = re.compile(_P + "setup-firewall$")
_LEGACY_DST_IP = re.compile(_P + r"dst_ip=(?P<ip>[\d.]{7,})")
_LEGACY_UID = re.compile(_P + r"uid=(?P<uid>\d+)")
_LEGACY_WAIT = re.compile(_P + "(w|wait)$")


def usage() -> str:
    """Upstream's usage text, spelling (and missing space) included."""
    return (f"\nusage: {sys.argv[0]} [-verbose] [-force] [-help] -configuration-path:<path to configuration file>"
            "-deprovision[+user]|-register-service|-version|-daemon|-start|-run-exthandlers|"
            "-show-configuration|-collect-logs [-full]|-setup-firewall=<IP>]\n")


def parse_args(argv: Sequence[str]) -> CliArgs:
    """Upstream's parser plus ``-provision`` and the legacy firewall form. Raises :class:`UsageError`
    when ``-configuration-path:`` names a file that does not exist."""
    values: dict = {}
    for arg in argv:
        if arg == "":
            continue
        m = _CONF_PATH.match(arg)
        if m:
            conf_path = m.group(1)
            from guestagent.osutil import system

            if not system.path(conf_path).exists():
                raise UsageError(f"Error: Configuration file {conf_path} does not exist")
            values["conf_path"] = conf_path
            continue
        for regex, field, value in _UPSTREAM:
            if regex.match(arg):
                values[field] = value
                break
        else:
            m = _SETUP_FIREWALL.match(arg) or _LEGACY_DST_IP.match(arg)
            if m:
                if "endpoint" in m.groupdict():
                    values["command"] = "setup-firewall"
                values["firewall_dst_ip"] = m.group(1)
            elif _PROVISION.match(arg):
                values["command"] = "provision"
            elif _LEGACY_FIREWALL.match(arg):
                values["command"] = "setup-firewall"
            elif _LEGACY_UID.match(arg):
                values["firewall_uid"] = int(_LEGACY_UID.match(arg).group("uid"))
            elif _LEGACY_WAIT.match(arg):
                values["firewall_wait"] = True
            else:
                values["command"] = "help"
                values["unknown"] = arg
                break
    return CliArgs(**values)


# -- version ---------------------------------------------------------------------------------------
def _path(p: str) -> str:
    """osutil.system.path without importing osutil.system (subprocess, pathlib, dataclasses: ~20 ms)
    on the ``-version`` path."""
    from guestagent.osutil import root

    return root.mapped(p)


_EXT_HANDLER = re.compile(rb".*/WALinuxAgent-(\d+.\d+.\d+[.\d+]*).*-run-exthandlers")
_AGENT_DIR = re.compile(AGENT_NAME + "-(.*)")


def _current_version(lib_dir: str = "/var/lib/waagent") -> str:
    """The version named by the agent directory we run from (a downloaded agent), else our own."""
    cwd = os.getcwd()
    prefix = lib_dir.rstrip("/") + "/"
    m = _AGENT_DIR.match(cwd[len(prefix):].split("/")[0]) if cwd.startswith(prefix) else None
    return m.group(1) if m else AGENT_VERSION


def goal_state_agent_version() -> str:
    """Version of the running ext-handler agent if one runs from a downloaded package (as upstream:
    scan of /proc/<pid>/cmdline), else the current version."""
    proc = _path("/proc")
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        try:
            with open(os.path.join(proc, pid, "cmdline"), "rb") as f:
                m = _EXT_HANDLER.match(f.read())
        except OSError:
            continue
        if m:
            return m.group(1).decode("utf-8", errors="replace")
    return _current_version()


def distro_name_version() -> tuple[str, str]:
    """(ID, VERSION_ID) of /etc/os-release as upstream prints them (ID lower-cased, unquoted)."""
    from guestagent.osutil.osrelease import os_release

    values = os_release()
    name = values.get("ID", "unknown").lower().replace(" ", "_")
    name = {"ol": "oracle", "opensuse-leap": "opensuse"}.get(name, name)
    if os.path.exists(_path("/etc/mariner-release")):
        name = "mariner"
    return name, values.get("VERSION_ID", "")


def version_text() -> str:
    name, ver = distro_name_version()
    py = sys.version_info
    return (f"{AGENT_LONG_NAME} running on {name} {ver}\n"
            f"Python: {py[0]}.{py[1]}.{py[2]}\n"
            f"Goal state agent: {goal_state_agent_version()}\n"
            f"{GUESTAGENT_NAME} {GUESTAGENT_VERSION}\n")


# -- common start-up (06 §2) ---------------------------------------------------------------------------
def setup_command(args: CliArgs) -> Config:
    """Appenders and configuration for every command except version/help/start: stdout, config,
    /var/log/waagent.log, /dev/console until provisioned, Extension.LogDir."""
    from guestagent import conf, log
    from guestagent.osutil import system

    log.add_appender("stdout", log.StreamAppender(log.VERBOSE if args.verbose else log.INFO))
    config = conf.load(args.conf_path, log_now=False)
    level = log.VERBOSE if (args.verbose or config.logs_verbose) else log.INFO
    log.add_appender("file", log.FileAppender(level, str(system.path(conf.AGENT_LOG_FILE))))
    if config.logs_console and not system.exists(config.provisioned_marker_path):
        log.add_appender("console", log.FileAppender(level, str(system.path(log.CONSOLE))))
    config.log_diagnostics()
    ext_log_dir = config.extension_log_dir
    try:
        if system.path(ext_log_dir).is_file():
            raise OSError(f"{ext_log_dir} is a file")
        system.mkdir(ext_log_dir, 0o755)
    except OSError as e:
        log.error("Exception occurred while creating extension log directory {0}: {1}", ext_log_dir, e)
    return config


def run_show_configuration(args: CliArgs, config: Config) -> int:
    from guestagent import conf

    sys.stdout.write(conf.show_configuration(config))
    return 0


def self_command() -> list[str]:
    """How to run this agent again: the waagent script we were started as, else the module."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0 and not argv0.endswith(".py") and os.access(argv0, os.X_OK):
        return [argv0]
    return [sys.executable, "-m", "guestagent.cli"]


def start(args: CliArgs) -> int:
    """``-start``: the daemon in the background, its output on /dev/null."""
    from guestagent.osutil import system

    argv = [*self_command(), "-daemon"]
    if args.conf_path is not None:
        argv.append(f"-configuration-path:{args.conf_path}")
    system.spawn(argv)
    return 0


def resolve(command: str):
    """The function that runs ``command``, or None if that part of the agent does not exist yet."""
    import importlib
    import importlib.util

    module_name, func_name = COMMANDS[command].split(":")
    if importlib.util.find_spec(module_name) is None:
        return None
    return getattr(importlib.import_module(module_name), func_name, None)


def _format_exception(e: BaseException) -> str:
    import traceback

    return f"{e}\n" + "".join(traceback.format_exception(type(e), e, e.__traceback__))


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(e, file=sys.stderr)
        print(usage())
        return e.code
    if args.command == "version":
        sys.stdout.write(version_text())
        return 0
    if args.command == "help":
        print(usage())
        return 2 if args.unknown is not None else 0
    if args.command == "start":
        return start(args)
    if args.command == "setup-firewall" and not args.firewall_dst_ip:
        print("Error: -setup-firewall needs the WireServer address (-setup-firewall=<IP>)", file=sys.stderr)
        print(usage())
        return 2

    from guestagent import log

    try:
        config = setup_command(args)
    except ConfigError as e:
        # no usable waagent.conf: one line that names the file, not upstream's traceback
        print(f"waagent -{args.command}: {e.msg} (-configuration-path:<file> names another file)", file=sys.stderr)
        return 1
    try:
        func = resolve(args.command)
        if func is None:
            print(f"{args.command} is not implemented yet")
            return 1
        return int(func(args, config) or 0)
    except KeyboardInterrupt:
        return 130
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:
        log.error("Failed to run '{0}': {1}", args.command, _format_exception(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
