"""``guestagent ext-test DIR``: run an extension handler folder through its whole contract, inside the lab's
namespace sandbox (root only).

The sandbox (:class:`guestagent.lab.sandbox.Sandbox`) is a throwaway overlay of this machine with its own
mount, PID and network namespaces: only loopback, where the fabric emulator listens. In it the handler runs
as on a VM, as root, at its real paths: ``/var/lib/waagent`` (the goal state's certificates as
``<THUMBPRINT>.crt``/``.prv`` beside the handler directory), ``/var/log/azure``, ``/etc`` (users, sudoers,
sshd_config: the sandbox's copies). Nothing it writes reaches the host; the report folder (``--report``)
receives the kit's report, each command's output, the status files after each step and the handler's logs.
The flow and its checks are :mod:`guestagent.kit.flow`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence, TextIO

from guestagent import log
from guestagent.kit.flow import SETTLE, Json, KitOptions, run_ext_test
from guestagent.lab.errors import SandboxUnavailable
from guestagent.lab.image import SSHD_CONFIG
from guestagent.lab.sandbox import Sandbox, interpreter

PROG = "guestagent ext-test"
#: Inside the sandbox: the handler folder as copied in, and the report the flow writes (copied out at the end).
INSIDE = "/run/guestagent-kit"
LIB_DIR, LOG_ROOT, AGENT_LOG = "/var/lib/waagent", "/var/log/azure", "/var/log/waagent.log"
HOSTNAME = "ext-test"
SHOWN_CHANGES = 25


def _json_option(value: Optional[str], what: str) -> Json:
    """A JSON document given inline or as @FILE; a clear error when it is not JSON."""
    if value is None:
        return None
    try:
        if value.startswith("@"):
            with open(value[1:], encoding="utf-8") as f:
                return json.load(f)
        return json.loads(value)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} is not a JSON document: {e}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Run an extension handler folder through the handler "
                                "contract, inside a throwaway namespace sandbox (root)")
    p.add_argument("folder", help="handler folder (with HandlerManifest.json at its root)")
    p.add_argument("--name", help="handler name (Publisher.Type); default Kit.<manifest name>")
    p.add_argument("--versions", default="1.0.0,1.1.0", metavar="V1,V2",
                   help="the two versions the folder is published as (install V1, update to V2; default 1.0.0,1.1.0)")
    p.add_argument("--fast-track", action="store_true", help="deliver goal states as vmSettings (FastTrack)")
    p.add_argument("--wait", type=float, default=SETTLE, metavar="S",
                   help=f"seconds each step waits for a final (not transitioning) status (default {SETTLE:.0f})")
    p.add_argument("--settings", metavar="JSON|@FILE", help="public settings for every step (default: the kit's)")
    p.add_argument("--protected-settings", metavar="JSON|@FILE",
                   help="protected settings (a JSON object), encrypted by the fabric to its tenant certificate")
    p.add_argument("--report", metavar="DIR", help="folder for the report, each command's output, the status files "
                   "and the handler's logs (default: a new ext-test-<name>-<time> folder here)")
    p.add_argument("--inside", help=argparse.SUPPRESS)  # the sandbox side: the report folder inside
    return p


def _options(args: argparse.Namespace) -> KitOptions:
    public = _json_option(args.settings, "--settings")
    protected = _json_option(args.protected_settings, "--protected-settings")
    if protected is not None and not isinstance(protected, dict):
        raise ValueError("--protected-settings must be a JSON object")
    versions = tuple(v.strip() for v in args.versions.split(","))
    if len(versions) != 2 or not all(versions):
        raise ValueError("--versions takes two versions, e.g. 1.0.0,1.1.0")
    return KitOptions(name=args.name, versions=(versions[0], versions[1]), fast_track=args.fast_track,
                      settle=args.wait, public=public, protected=protected)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    try:
        options = _options(args)
    except ValueError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(args.folder, "HandlerManifest.json")):
        print(f"{PROG}: {args.folder}: no HandlerManifest.json", file=sys.stderr)
        return 2
    if args.inside:
        if not _in_sandbox():  # at the host's real paths the flow would write /var/lib/waagent: never
            print(f"{PROG}: --inside is the sandbox's side of ext-test, not for use on a host", file=sys.stderr)
            return 2
        return _inside(args.folder, args.inside, options)
    if os.geteuid() != 0:
        print(f"{PROG} needs root: the handler runs as root inside a namespace sandbox (mounts, its own "
              f"network); run it with sudo.", file=sys.stderr)
        return 2
    label = (args.name or Path(args.folder).resolve().name).replace(os.sep, "_")
    report = Path(args.report or f"ext-test-{label}-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    try:
        report.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"{PROG}: cannot create the report folder {report}: {e}", file=sys.stderr)
        return 2
    try:
        return run_in_sandbox(Path(args.folder).resolve(), args, report, sys.stdout)
    except SandboxUnavailable as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the sandbox is gone already (its processes killed); the report folder stays
        print(f"\n{PROG}: interrupted; what was collected is in {report}", file=sys.stderr)
        return 130


def run_in_sandbox(folder: Path, args: argparse.Namespace, report: Path, out: TextIO) -> int:
    """Copy the handler into a fresh sandbox, run the flow there (its output streamed to ``out`` and to
    ``report/report.txt``), copy the report out; the sandbox and all it wrote are gone afterwards."""
    inner = [interpreter(), "-m", "guestagent.kit.main", f"{INSIDE}/handler/{folder.name}", "--inside",
             f"{INSIDE}/report", "--versions", args.versions, "--wait", str(args.wait)]
    inner += ["--name", args.name] if args.name else []
    inner += ["--fast-track"] if args.fast_track else []
    # Settings are read here (an @FILE may be invisible inside) and passed on as JSON text.
    for flag, value in (("--settings", args.settings), ("--protected-settings", args.protected_settings)):
        if value is not None:
            inner += [flag, json.dumps(_json_option(value, flag))]
    t0 = time.monotonic()
    with Sandbox(hostname=HOSTNAME, loopback_addrs=(), eth0=False) as sb, \
            open(report / "report.txt", "w", encoding="utf-8") as text:
        def say(line: str) -> None:
            out.write(line)
            out.flush()
            text.write(line)

        say(f"{PROG}: sandbox ready in {sb.startup_seconds:.2f} s (init pid {sb.init_pid}; network: loopback "
            f"only); report folder {report}\n")
        # A pristine VM: no agent state (the host's, seen through the overlay, is hidden, not touched).
        sb.run(["rm", "-rf", LIB_DIR, LOG_ROOT, AGENT_LOG])
        if not sb.host_path("/etc/ssh/sshd_config").exists():
            sb.write_file("/etc/ssh/sshd_config", SSHD_CONFIG)  # a VM image has openssh-server; this host may not
        shutil.copytree(folder, sb.host_path(f"{INSIDE}/handler/{folder.name}"), symlinks=True)
        proc = sb.spawn(inner, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd="/")
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                say(raw.decode("utf-8", errors="replace"))
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            inside = sb.host_path(f"{INSIDE}/report")
            if inside.is_dir():
                shutil.copytree(inside, report, symlinks=True, dirs_exist_ok=True)
            changes = _changes(sb, report)
        say(f"\nwritten in the sandbox outside {LIB_DIR}, {LOG_ROOT}, /run, /tmp ({len(changes)}; never on the "
            f"host; all in changes.txt):\n")
        for path, what in changes[:SHOWN_CHANGES]:
            say(f"  {what:<8} {path}\n")
        if len(changes) > SHOWN_CHANGES:
            say(f"  ... and {len(changes) - SHOWN_CHANGES} more\n")
        say(f"\n{PROG}: exit {code} in {time.monotonic() - t0:.1f} s; report, command outputs, status files "
            f"and the handler's logs in {report}\n")
    return code


def _changes(sb: Sandbox, report: Path) -> list[tuple[str, str]]:
    """What the run wrote into the sandbox's copy of this machine (all of it in ``changes.txt``); returns the
    entries outside the agent's own folders: what the handler did to the "VM" (users, sshd_config, ...)."""
    changes = sb.change_set()
    (report / "changes.txt").write_text("".join(f"{what} {path}\n" for path, what in changes.items()),
                                        encoding="utf-8")
    own = (LIB_DIR, LOG_ROOT, AGENT_LOG, "/root/.cache")
    return [(p, w) for p, w in changes.items() if not any(p == o or p.startswith(o + "/") for o in own)]


def _in_sandbox() -> bool:
    """PID 1 here is the sandbox's init (forked from its keeper, whose command line it shares)."""
    try:
        with open("/proc/1/cmdline", "rb") as f:
            return b"keeper_main" in f.read()
    except OSError:
        return False


def _inside(folder: str, report_dir: str, options: KitOptions) -> int:
    """The sandbox side: the flow at the real paths, the agent's log in /var/log/waagent.log."""
    log.add_appender("file", log.FileAppender(log.INFO, AGENT_LOG))
    os.makedirs(report_dir, exist_ok=True)
    options.lib_dir, options.log_root, options.report_dir = LIB_DIR, LOG_ROOT, report_dir
    options.extra_logs = [AGENT_LOG]
    return run_ext_test(folder, options)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
