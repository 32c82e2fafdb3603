"""Running one handler command (04 §6): command line, environment, timeout, exit code, captured output.

The command runs through ``/bin/sh -c`` in the handler's base dir, in its own session, with stdout/stderr in
two anonymous temporary files in the base dir (as upstream), so a background process the handler leaves
behind never blocks the agent. The exit is noticed as it happens (no polling sleep, no extra 1 s wait).
With cgroups enabled the command starts in its own ``systemd-run --scope`` under the extension's slice
(06 §10); when systemd-run itself fails, cgroups are disabled and the command runs again directly.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from guestagent import log
from guestagent.errors import ExtensionError, PathEscapeError
from guestagent.exthandler.cgroups import CGroupConfigurator
from guestagent.osutil import pathguard, system

TIMEOUTS = {"install": 900, "enable": 300, "disable": 900, "update": 900, "uninstall": 300}
ERROR_CODES = {"install": 1007, "enable": 1009, "disable": 1010, "update": 1008, "uninstall": 1000}
CODE_TIMEOUT = 1011
OUTPUT_BYTES = 3200
OUTPUT_CHARS = 3200
SUPPORTED_FEATURES = json.dumps([{"Key": "ExtensionTelemetryPipeline", "Value": "1.0"}])
COMMAND_LOG_CAP = 10 * 1024 * 1024
_TEMPLATE = "[stdout]\n{0}\n\n[stderr]\n{1}"


class CommandFailed(ExtensionError):
    """A handler command failed; ``exit_code`` is the process exit code (or 1011 on timeout)."""

    def __init__(self, msg: str, code: int, exit_code: int, output: str = ""):
        self.exit_code = exit_code
        self.output = output
        super().__init__(msg, code=code)

    @property
    def upstream_text(self) -> str:
        """The message as upstream words this failure: its class is ExtensionOperationError for an exit code,
        ExtensionError for a timeout (the handler status and the failure event carry it)."""
        kind = "ExtensionError" if self.code == CODE_TIMEOUT else "ExtensionOperationError"
        return f"[{kind}] {self.msg}"


@dataclass
class CommandResult:
    op: str
    command: str
    exit_code: int
    timed_out: bool
    duration: float
    output: str
    env: dict


def format_output(stdout: str, stderr: str) -> str:
    """``[stdout]\\n…\\n\\n[stderr]\\n…``; over 3200 characters each stream keeps its tail, unused room
    going to the other stream."""
    room = OUTPUT_CHARS - len(_TEMPLATE.format("", ""))
    if len(stdout) + len(stderr) <= room:
        return _TEMPLATE.format(stdout, stderr)
    half = room // 2
    out_len = min(len(stdout), max(half, room - len(stderr)))
    err_len = min(len(stderr), room - out_len)
    return _TEMPLATE.format(stdout[len(stdout) - out_len:], stderr[len(stderr) - err_len:])


def _read_head(f: Any) -> str:
    f.seek(0)
    raw = f.read(OUTPUT_BYTES)
    return raw.decode("utf-8", errors="backslashreplace")


def base_environment(base_dir: str, version: str, wire_address: str, seq: Optional[int],
                     ext_name: Optional[str]) -> dict:
    env = {"AZURE_GUEST_AGENT_EXTENSION_PATH": base_dir, "AZURE_GUEST_AGENT_EXTENSION_VERSION": version,
           "AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS": wire_address,
           "ConfigSequenceNumber": str(seq if seq is not None else 0)}
    if ext_name:
        env["ConfigExtensionName"] = ext_name
    env["AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES"] = SUPPORTED_FEATURES
    return env


def _execute(argv: list, real_base: Any, timeout: float, env: dict) -> tuple:
    """(RunResult, formatted output, stderr head) of one run of ``argv``."""
    with tempfile.TemporaryFile(dir=real_base) as out, tempfile.TemporaryFile(dir=real_base) as err:
        res = system.run_to_files(argv, out, err, timeout=timeout, env=env, cwd=real_base)
        stderr = _read_head(err)
        return res, format_output(_read_head(out), stderr), stderr


def _scope_of(argv: list) -> str:
    return next((a[len("--unit="):] + ".scope" for a in argv if a.startswith("--unit=")), "")


def run_command(op: str, base_dir: str, command: str, env: dict, *, handler_name: str,
                log_dir: Optional[str] = None, ext_name: Optional[str] = None,
                timeout: Optional[float] = None, sink: Any = None,
                cgroups: Optional[CGroupConfigurator] = None,
                report: Optional[Callable[[str, int], None]] = None) -> CommandResult:
    """Run ``command`` (relative to ``base_dir``); raise CommandFailed on non-zero exit or timeout.
    ``sink``, when given, is called with every CommandResult (the extension kit prints them). ``cgroups``
    (the child's configurator) decides whether the command runs in a scope; None: it runs directly.
    ``report(message, duration_ms)`` gets upstream's two telemetry messages: ``Executing command: …`` before
    the run, ``Command: …`` with the output after a successful one (a failure is the caller's to report)."""

    began = time.monotonic()
    timeout = TIMEOUTS[op] if timeout is None else timeout
    full = os.path.join(base_dir, command.lstrip("/"))
    real_base = system.path(base_dir)
    child_env = dict(env)
    child_env.update(os.environ)  # the agent's own environment wins on a clash (04 §6.2)
    plog = log.PrefixLogger(f"[{handler_name}-{env.get('AZURE_GUEST_AGENT_EXTENSION_VERSION', '')}]")
    executing = f"Executing command: {full} with environment variables: {json.dumps(env)}"
    plog.info("{0}", executing)
    _report(report, executing, 0)
    # Under a test root the command must run from the mapped directory too.
    shown_cmd = os.path.join(os.fspath(real_base), command.lstrip("/"))
    argv = ["/bin/sh", "-c", shown_cmd]
    wrapped = argv if cgroups is None else cgroups.wrap_extension_command(argv, handler_name, ext_name, op=op)
    res, output, stderr = _execute(wrapped, real_base, timeout, child_env)
    if cgroups is not None and wrapped != argv and not res.timed_out and res.returncode != 0 and \
            cgroups.extension_command_failed(handler_name, stderr, _scope_of(wrapped)):
        plog.info("Failed to start {0} using systemd-run, invoking the extension directly", handler_name)
        res, output, stderr = _execute(argv, real_base, timeout, child_env)
    exit_code = CODE_TIMEOUT if res.timed_out else res.returncode
    result = CommandResult(op, full, exit_code, res.timed_out, res.duration, output, env)
    text = _log_execution(plog, log_dir, ext_name, command, output, result)
    if sink is not None:
        try:
            sink(result)
        except Exception as e:  # a reporting hook never breaks the lifecycle
            log.warn("Command sink failed: {0}", e)
    if res.timed_out:
        raise CommandFailed(f"Timeout({int(timeout)}): {full}\n{output}", CODE_TIMEOUT, CODE_TIMEOUT, output)
    if res.returncode != 0:
        raise CommandFailed(f"Non-zero exit code: {res.returncode}, {full}\n{output}", ERROR_CODES[op],
                            res.returncode, output)
    _report(report, text, int((time.monotonic() - began) * 1000))
    return result


def _report(report: Optional[Callable[[str, int], None]], message: str, duration_ms: int) -> None:
    if report is not None:
        try:
            report(message, duration_ms)
        except Exception as e:  # telemetry never breaks the lifecycle
            log.warn("Command event failed: {0}", e)


def _log_execution(plog: Any, log_dir: Optional[str], ext_name: Optional[str], command: str, output: str,
                   result: CommandResult) -> str:
    """Log (and append to CommandExecution.log) ``Command: <cmd>`` and the non-empty output lines; return it."""
    lines = "\n".join(line for line in output.split("\n") if line != "")
    text = f"Command: {command}\n{lines}"
    plog.info("{0}", text)
    if not log_dir:
        return text
    name = f"CommandExecution_{ext_name}.log" if ext_name else "CommandExecution.log"
    try:
        system.mkdir(log_dir, mode=0o755)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 1000000:06d}Z"
        system.append_file(pathguard.join(log_dir, name),
                           f"{stamp} INFO [{result.op}] exit code {result.exit_code} in "
                           f"{result.duration:.3f} s\n{log.redact(text)}\n")
    except (OSError, PathEscapeError) as e:
        log.periodic(3600, log.WARNING, "Could not write {0}: {1}", name, e)
    return text


def truncate_command_log(log_dir: str, ext_name: Optional[str] = None) -> None:
    """Keep only the last ~10 MiB of CommandExecution.log (done when a handler object is created)."""
    name = f"CommandExecution_{ext_name}.log" if ext_name else "CommandExecution.log"
    try:
        path = system.path(pathguard.join(log_dir, name))
        size = os.path.getsize(path)
        if size <= COMMAND_LOG_CAP:
            return
        with open(path, "rb") as f:
            f.seek(size - COMMAND_LOG_CAP)
            tail = f.read()
        system.write_file(pathguard.join(log_dir, name), tail, fsync=False)
    except (OSError, PathEscapeError):
        pass
