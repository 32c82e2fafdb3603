#!/usr/bin/env python3
"""The guestagent benchmark: figures, not tests (root; every run in a fresh namespace sandbox).

    python3 bench/run.py [--runs N] [--idle-seconds S] [--only GROUP[,GROUP]] [--upstream | --no-upstream]

Groups: ready, status, memory, idle, cli, incarnation, parse. Each figure is printed as median/min/max of N
runs; the last table compares with upstream (Debian's waagent measured in the same sandbox, when
asked and available) and with the figures the issues give for WALinuxAgent 2.15.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Optional

BENCH_DIR = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH_DIR.parent), str(BENCH_DIR)]

from figures import GROUPS, table  # noqa: E402
from harness import (  # noqa: E402
    Agent,
    BenchFailure,
    Session,
    interpreter_floor,
    memory_kb,
    our_agent,
    timed_commands,
)

SCENARIOS = BENCH_DIR / "scenarios"
SAMPLE = "GuestAgent.Fabric.Sample"
PLUGINS = 20000
MB = 1024.0


def say(text: str) -> None:
    print(text, flush=True)


def _ext(st, version: str, cond: Callable) -> bool:
    return any(e.handler == SAMPLE and e.version == version and cond(e) for e in st.extensions)


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.groups = set(args.only.split(",")) if args.only else set(GROUPS)
        self.results: dict[str, dict[str, list[float]]] = {}
        self.mix: dict[str, dict[str, Counter]] = {}
        self.failures: list[str] = []
        self.floor = ""

    def record(self, agent: Agent, key: str, value: float) -> None:
        self.results.setdefault(agent.name, {}).setdefault(key, []).append(value)

    # -- sessions
    def session(self, agent: Agent, kind: str, run: int) -> None:
        """kind 'bare': no provisioning, no extension; 'prov': provisioning, one extension, then an
        update and a disable by new incarnations."""
        g = self.groups
        prov = kind == "prov"
        scenario = SCENARIOS / ("extension.json" if prov else "bare.json")
        idle = self.args.idle_seconds if "idle" in g else 0.0
        tag = f"[{agent.name} run {run + 1}/{self.args.runs} {'provisioning+extension' if prov else 'bare'}]"
        with Session(agent, str(scenario), provision=prov) as s:
            try:
                s.prepare()
                s.start_fabric()
                s.start_daemon()
                ready = s.first_ready()
                first = s.first_status()
                self.record(agent, "ready_" + kind, ready["t"] - s.t0)
                self.record(agent, "status_" + kind, first["t"] - s.t0)
                say(f"{tag} Ready {ready['t'] - s.t0:.3f} s, first status {first['t'] - s.t0:.3f} s")
                if not (g & {"memory", "idle", "incarnation"}):
                    return
                if prov:
                    settled = s.status_where(lambda st: _ext(st, "1.0.0", lambda e: e.status == "success"), 0, 120,
                                             "the extension's success status")
                else:
                    settled = s.status_where(lambda st: st.agent_status == "Ready", 0, 60, "a Ready status")
                say(f"{tag} settled at {settled['t'] - s.t0:.3f} s; settling {self.args.settle:.0f} s more")
                time.sleep(self.args.settle)
                if g & {"memory", "idle"}:
                    self._idle(agent, s, kind, idle, tag)
                if prov and "incarnation" in g:
                    self._incarnation(agent, s, tag)
            except BenchFailure as e:
                self.failures.append(f"{tag} {e}")
                say(f"{tag} FAILED: {e}\n{s.diagnostics()}")

    def _idle(self, agent: Agent, s: Session, kind: str, idle: float, tag: str) -> None:
        dpid, cpid = s.daemon_pid(), s.child_pid()
        cpu0, t1 = s.cpu(), time.time()
        if idle > 0:
            time.sleep(idle)
            cpu1, t2 = s.cpu(), time.time()
            s.events.poll()
            mix = s.requests_between(t1, t2)
            minutes = (t2 - t1) / 60.0
            suffix = "ext" if kind == "prov" else "bare"
            self.record(agent, "cpu_" + suffix, (cpu1 - cpu0) / minutes)
            self.record(agent, "req_" + suffix, sum(mix.values()) / minutes)
            self.mix.setdefault(agent.name, {}).setdefault(suffix, Counter()).update(mix)
            say(f"{tag} idle {t2 - t1:.0f} s: CPU {(cpu1 - cpu0) / minutes:.3f} s/min, "
                f"{sum(mix.values()) / minutes:.1f} requests/min ({', '.join(f'{k} {n}' for k, n in mix.most_common())})")
        if child_pid_changed := (s.child_pid() != cpid):
            say(f"{tag} note: the ext-handler child restarted during the window")
        dm, cm = memory_kb(dpid), memory_kb(s.child_pid())
        child = "child" if kind == "prov" else "child_bare"
        self.record(agent, "rss_" + child, cm["VmRSS"] / MB)
        self.record(agent, "hwm_" + child, cm["VmHWM"] / MB)
        self.record(agent, "pss_" + child, cm.get("Pss", 0) / MB)
        self.record(agent, "uss_" + child, cm.get("Uss", 0) / MB)
        peak = s.daemon_peak_kb() or dm["VmHWM"]
        if kind == "prov":
            self.record(agent, "rss_daemon", dm["VmRSS"] / MB)
            self.record(agent, "hwm_daemon", dm["VmHWM"] / MB)
            self.record(agent, "peak_daemon", peak / MB)
            self.record(agent, "rss_total", (dm["VmRSS"] + cm["VmRSS"]) / MB)
            self.record(agent, "pss_total", (dm.get("Pss", 0) + cm.get("Pss", 0)) / MB)
            self.record(agent, "uss_total", (dm.get("Uss", 0) + cm.get("Uss", 0)) / MB)
        say(f"{tag} memory: daemon VmRSS {dm['VmRSS'] / MB:.1f} MB (PSS {dm.get('Pss', 0) / MB:.1f}, "
            f"USS {dm.get('Uss', 0) / MB:.1f}, anon {dm.get('RssAnon', 0) / MB:.1f}; peak before the supervisor "
            f"{peak / MB:.1f}), child VmRSS {cm['VmRSS'] / MB:.1f} MB (PSS {cm.get('Pss', 0) / MB:.1f}, "
            f"USS {cm.get('Uss', 0) / MB:.1f}, HWM {cm['VmHWM'] / MB:.1f}, anon {cm.get('RssAnon', 0) / MB:.1f})"
            f"{' [child restarted]' if child_pid_changed else ''}")

    def _incarnation(self, agent: Agent, s: Session, tag: str) -> None:
        cases = (("inc_update", "update to 1.1.0",
                  lambda st: _ext(st, "1.1.0", lambda e: e.status == "success" and str(e.sequence_number) == "1")),
                 ("inc_disable", "disable 1.1.0", lambda st: _ext(st, "1.1.0", lambda e: e.handler_status == "NotReady")))
        for key, what, pred in cases:
            adv = s.advance()
            fetch = s.wait(lambda t=adv["t"]: s.events.find(lambda e: e.get("kind") == "goalstate", t),
                           60, f"the goal-state fetch of incarnation {adv['incarnation']}")
            done = s.status_where(pred, fetch["t"], 120, f"a status with the extension's {what}")
            self.record(agent, key, done["t"] - fetch["t"])
            say(f"{tag} incarnation {adv['incarnation']} ({what}): fetched {fetch['t'] - adv['t']:.3f} s after the "
                f"fabric moved; status uploaded {done['t'] - fetch['t']:.3f} s after the fetch")

    def cli(self, agent: Agent) -> None:
        times = timed_commands(agent, ["-version", "-show-configuration"], self.args.runs)
        for verb, key in (("-version", "cli_version"), ("-show-configuration", "cli_showconf")):
            for t in times[verb]:
                self.record(agent, key, t)
            say(f"[{agent.name}] waagent {verb}: " + ", ".join(f"{t:.3f}" for t in times[verb]) + " s")

    def parse(self, agent: Agent) -> None:
        """In this process (our code only): the figures are CPU seconds for PLUGINS plugins."""
        import parse

        doc_mb = len(parse.extensions_config(PLUGINS)) / 1e6
        for _ in range(self.args.runs):
            xml_s, json_s = parse.extensions_config_seconds(PLUGINS), parse.vm_settings_seconds(PLUGINS)
            self.record(agent, "parse_xml", xml_s)
            self.record(agent, "parse_json", json_s)
            say(f"[{agent.name}] {PLUGINS:,} plugins parse in {xml_s:.2f} s (ExtensionsConfig, {doc_mb:.1f} MB), "
                f"{json_s:.2f} s (vmSettings)".replace(",", " ", 1))

    def run(self, agents: list[Agent]) -> int:
        self.load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        self.source = source_state()
        if "memory" in self.groups:
            f = interpreter_floor(self.args.python)
            self.floor = (f"interpreter floor ({self.args.python} -c pass, in the sandbox): VmRSS "
                          f"{f['VmRSS'] / MB:.1f} MB (anon {f['RssAnon'] / MB:.1f}, file {f['RssFile'] / MB:.1f}), "
                          f"{f['modules']} modules -- every agent process pays this before its first import")
            say(self.floor)
        for run in range(self.args.runs):
            for agent in agents:
                if self.groups & {"ready", "status", "memory", "idle"}:
                    self.session(agent, "bare", run)
                if self.groups & {"ready", "status", "memory", "idle", "incarnation"}:
                    self.session(agent, "prov", run)
        if "cli" in self.groups:
            for agent in agents:
                self.cli(agent)
        if "parse" in self.groups:
            self.parse(agents[0])
        self.report(agents)
        return 1 if self.failures else 0

    def report(self, agents: list[Agent]) -> None:
        say("")
        say(f"=== guestagent benchmark: {self.args.runs} run(s), idle window {self.args.idle_seconds:.0f} s, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.machine()}, "
            f"{os.cpu_count()} CPU(s), kernel {platform.release()}, agents run by {self.args.python} "
            f"({python_version(self.args.python)}), load average before {self.load} ===")
        say(f"agent source: {self.source}")
        if source_state() != self.source:
            say("WARNING: the agent's sources changed during the run: the runs measured different code")
        if self.floor:
            say(self.floor)
        for name, kinds in self.mix.items():
            for kind, mix in sorted(kinds.items()):
                total = sum(mix.values()) or 1
                say(f"idle request mix, {name}, {'one extension' if kind == 'ext' else 'no extension'} "
                    f"(all runs): " + ", ".join(f"{k} {100 * n / total:.0f}%" for k, n in mix.most_common()))
        say(table(self.results, [a.name for a in agents], self.groups))
        for f in self.failures:
            say("failed: " + f)


def source_state() -> str:
    """The commit the agent's sources are at, whether they differ from it, and their newest change."""
    tree = BENCH_DIR.parent
    newest = max((p.stat().st_mtime for p in (tree / "guestagent").rglob("*.py")), default=0.0)
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "guestagent"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        head, dirty = "", ""
    return (f"{head or 'no git'}{' + uncommitted changes' if dirty else ''}, newest file "
            f"{time.strftime('%H:%M:%S', time.gmtime(newest))} UTC")


AGENT_IMPORTS = "import cryptography.x509, asn1crypto.cms"


def python_version(python: str) -> str:
    res = subprocess.run([python, "-c", "import platform; print(platform.python_version())"], capture_output=True,
                         text=True)
    return "Python " + res.stdout.strip() if res.returncode == 0 else "?"


def pick_python(choice: str) -> str:
    """``auto``: the distribution's /usr/bin/python3 when it can import what the agent needs (as on a VM,
    where both the package and ours run under it), else the interpreter running the bench."""
    if choice != "auto":
        return choice
    system = "/usr/bin/python3"
    if os.path.exists(system) and subprocess.run([system, "-c", AGENT_IMPORTS], capture_output=True).returncode == 0:
        return system
    return sys.executable


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    p.add_argument("--idle-seconds", type=float, default=60.0, help="idle window (default 60)")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds to wait after the expected status before the idle window (default 5)")
    p.add_argument("--only", default="", help="comma-separated groups: " + ", ".join(GROUPS))
    p.add_argument("--python", default="auto",
                   help="interpreter that runs the agents (default auto: /usr/bin/python3 when it has cryptography "
                        "and asn1crypto, else this one)")
    p.add_argument("--tree", type=Path, action="append", default=[],
                   help="also measure our agent from this copy of the project (bin/, guestagent/): try a change "
                        "before making it; repeatable; must be visible in the sandbox (not under /tmp)")
    p.add_argument("--upstream", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure Debian's waagent package in the same sandbox (default on)")
    args = p.parse_args(argv)
    bad = set(filter(None, args.only.split(","))) - set(GROUPS)
    if bad:
        p.error(f"unknown group(s) {', '.join(sorted(bad))}; choose from {', '.join(GROUPS)}")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if os.geteuid() != 0:
        print("bench/run.py needs root: every figure is measured in a namespace sandbox (mounts, loop devices, "
              "its own network); run it with sudo.", file=sys.stderr)
        return 2
    from guestagent.lab.sandbox import SandboxUnavailable

    args.python = pick_python(args.python)
    agents = [our_agent(args.python)] + [our_agent(args.python, tree) for tree in args.tree]
    if args.upstream:
        from upstream import UpstreamUnavailable, upstream_agent

        try:
            agents.append(upstream_agent(args.python))
        except UpstreamUnavailable as e:
            say(f"upstream comparison skipped: {e}")
    try:
        return Runner(args).run(agents)
    except SandboxUnavailable as e:
        print(f"bench/run.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
