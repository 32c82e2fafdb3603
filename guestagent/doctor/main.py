"""``guestagent doctor [--json] [-c CONF]``: every check, in the order support would ask.

Read-only: files, /proc, read-only commands (``systemctl is-active``, the firewall tools' check and
list commands, ``cloud-init --version``) and GET requests to the endpoint the agent recorded. Exit 0
healthy, 1 problems found, 2 the doctor could not run.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from guestagent import conf
from guestagent.doctor import agent, network, proxyagent
from guestagent.doctor.context import STALE_AFTER, DoctorContext
from guestagent.doctor.report import (
    EXIT_COULD_NOT_RUN,
    WARN,
    CouldNotRun,
    Finding,
    exit_code,
    render_json,
    render_text,
)
from guestagent.errors import ConfigError
from guestagent.osutil import system

Check = Callable[[DoctorContext], list[Finding]]

#: The endpoint check comes before the checks that use what it found.
CHECKS: tuple[tuple[str, Check], ...] = (
    ("config", agent.check_config),
    ("provisioning", agent.check_provisioning),
    ("processes", agent.check_processes),
    ("endpoint", network.check_endpoint),
    ("hostgaplugin", network.check_hostplugin),
    ("clock", network.check_clock),
    ("firewall", network.check_firewall),
    ("goal-state", agent.check_goal_state),
    ("status", agent.check_status),
    ("cgroups", agent.check_cgroups),
    ("disk", agent.check_disk),
    ("gpa", proxyagent.check_status),
    ("gpa.service", proxyagent.check_service),
    ("gpa.prerequisites", proxyagent.check_prerequisites),
    ("gpa.cloud-init", proxyagent.check_cloud_init),
)


def make_context(conf_path: Optional[str], stale_after: float) -> DoctorContext:
    try:
        config = conf.load(conf_path, log_now=False)
    except ConfigError as e:
        raise CouldNotRun(str(e))
    lib = system.path(config.lib_dir)
    if lib.is_dir() and not os.access(lib, os.R_OK | os.X_OK):
        raise CouldNotRun(f"cannot read {config.lib_dir}: run the doctor as root")
    return DoctorContext(config, stale_after=stale_after)


def run_checks(ctx: DoctorContext, checks: Sequence[tuple[str, Check]] = CHECKS) -> list[Finding]:
    findings: list[Finding] = []
    for name, check in checks:
        try:
            findings += check(ctx)
        except Exception as e:  # one broken check must not hide the others' answers
            findings.append(Finding(name, WARN, f"the check itself failed: {type(e).__name__}: {e}"))
    return findings


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="guestagent doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("-c", "--conf", help="configuration file (default /etc/waagent.conf)")
    parser.add_argument("--stale-after", type=float, default=STALE_AFTER, metavar="SECONDS",
                        help="status older than this is stale (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        ctx = make_context(args.conf, args.stale_after)
    except CouldNotRun as e:
        print(f"guestagent doctor: could not run: {e}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    findings = run_checks(ctx)
    print(render_json(findings) if args.json else render_text(findings))
    return exit_code(findings)
