"""One benchmark session: a fresh namespace sandbox, the fabric, one agent daemon, and the probes.

The set-up is the lab's (guestagent.lab): the same pristine image, DHCP lease with option 245,
configuration and OVF DVD; what differs is what is observed. The fabric runs bench/fabric_driver.py,
which stamps every request with the wall clock; the daemon is started by a shell that stamps the
instant just before it execs the interpreter, so "start → X" excludes only nsenter. Processes are
found and read from the host side (/proc of the sandbox's PID namespace is the host's /proc).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import psutil

from guestagent.lab.main import SSHD_CONFIG, adapt_conf, lease_file
from guestagent.lab.sandbox import Sandbox, build_image, interpreter, project_root
from guestagent.lab.summary import VmStatus, parse_status

WIRE_HOST, IMDS_HOST = "127.63.129.16", "169.254.169.254"
RUN = "/run/bench"
BENCH_DIR = Path(__file__).resolve().parent


class BenchFailure(Exception):
    """A session could not produce its figure; the message says why."""


@dataclass
class Agent:
    """How to run one agent implementation inside the sandbox."""

    name: str
    argv: list[str]                       # the waagent command (interpreter + script)
    env: dict[str, str] = field(default_factory=dict)
    conf: dict[str, str] = field(default_factory=dict)   # extra waagent.conf settings
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # written into the image: (text, mode)


#: Byte-code cache for both agents, as an installed package has one (pip and dpkg compile on
#: install). This machine runs with PYTHONDONTWRITEBYTECODE and the project keeps no __pycache__,
#: so without it every start would compile the sources. A prefix keeps the cache out of the tree.
PYCACHE = BENCH_DIR / ".cache" / "pycache"


def byte_compile(python: str, *trees: Path) -> dict[str, str]:
    """Compile ``trees`` into :data:`PYCACHE`; returns the environment that makes Python use it."""
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(PYCACHE)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for tree in trees:
        subprocess.run([python, "-m", "compileall", "-q", str(tree)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    return {"PYTHONPYCACHEPREFIX": str(PYCACHE)}


def our_agent(python: str, tree: Optional[Path] = None) -> Agent:
    """Ours, from the project or from ``tree`` (a copy with a change to try; it must be visible inside
    the sandbox: under the project or on the root file system, not under /tmp)."""
    tree = Path(tree).resolve() if tree else project_root()
    env = byte_compile(python, tree / "guestagent")
    if tree != project_root():
        env["PYTHONPATH"] = str(tree)
    name = "guestagent" if tree == project_root() else f"guestagent ({tree.name})"
    return Agent(name, [python, str(tree / "bin" / "waagent")], env=env)


def interpreter_floor(python: str) -> dict[str, int]:
    """VmRSS etc. of ``python -c pass`` in a sandbox: the memory every agent process pays before its
    first own import (site, .pth files)."""
    code = ("import sys\nfor l in open('/proc/self/status'):\n"
            "    k, _, v = l.partition(':')\n"
            "    if k in ('VmRSS', 'RssAnon', 'RssFile'): print(k, v.split()[0])\n"
            "print('modules', len(sys.modules))\n")
    with Sandbox(hostname="bench-image", loopback_addrs=(WIRE_HOST, IMDS_HOST)) as sb:
        out = sb.run([python, "-c", code], env={"PYTHONPATH": ""}).stdout
    return {k: int(v) for k, v in (line.split() for line in out.splitlines())}


# ------------------------------------------------------------------------------------------ processes
def children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def cpu_seconds(pid: int) -> float:
    """user + system CPU of the process (all its threads, living and dead)."""
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile (status) plus Pss and Uss (smaps): RSS counts every shared
    library page in full; PSS shares them out among the processes that map them; USS is what the
    process alone holds (what would be freed if it exited)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    try:
        full = psutil.Process(pid).memory_full_info()
        out["Pss"], out["Uss"] = full.pss // 1024, full.uss // 1024
    except psutil.Error:
        pass
    return out


# ------------------------------------------------------------------------------------------ events
class Events:
    """The driver's events.jsonl, read incrementally."""

    def __init__(self, path: Callable[[], Path]):
        self._path = path
        self._pos = 0
        self._partial = b""
        self.all: list[dict] = []

    def poll(self) -> list[dict]:
        try:
            with open(self._path(), "rb") as fh:
                fh.seek(self._pos)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._pos += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        new = [json.loads(line) for line in lines if line.strip()]
        self.all.extend(new)
        return new

    def find(self, pred: Callable[[dict], bool], after: float = 0.0) -> Optional[dict]:
        for ev in self.all:
            if ev.get("t", 0) > after and pred(ev):
                return ev
        return None


def is_status(ev: dict) -> bool:
    return ev.get("type") == "request" and "blob" in ev


def status_of(ev: dict) -> VmStatus:
    return parse_status(ev.get("blob"))


# ------------------------------------------------------------------------------------------ session
class Session:
    """``with Session(agent, scenario) as s: s.start(); s.wait(...)`` — everything dies with the sandbox."""

    def __init__(self, agent: Agent, scenario: str, *, provision: bool, hostname: str = "bench-image"):
        self.agent = agent
        self.scenario = str(Path(scenario).resolve())
        self.provision = provision
        self.hostname = hostname
        self.workdir = Path(tempfile.mkdtemp(prefix="guestagent-bench-"))
        self.sb = Sandbox(hostname=hostname, loopback_addrs=(WIRE_HOST, IMDS_HOST))
        self.events = Events(lambda: self.sb.host_path(f"{RUN}/events.jsonl"))
        self.daemon_proc: Any = None
        self.t0 = 0.0

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sb.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- set-up
    def prepare(self) -> None:
        sb = self.sb
        sb.run(["rm", "-rf", "/var/lib/waagent", "/var/log/waagent.log", "/var/log/azure", "/var/lib/dhcp",
                "/var/lib/dhclient", "/etc/waagent.conf"])
        base = project_root() / "config" / "waagent.conf"
        settings = {"Provisioning.Agent": "waagent" if self.provision else "disabled",
                    "ResourceDisk.Format": "n", "OS.EnableFirewall": "n", "Logs.Verbose": "n",
                    **self.agent.conf}
        sb.write_file("/etc/waagent.conf", adapt_conf(base.read_text(encoding="utf-8"), settings))
        sb.write_file("/var/lib/dhcp/dhclient.eth0.leases", lease_file(WIRE_HOST))
        sb.write_file("/run/systemd/netif/leases/2", "# This is private data. Do not parse.\nADDRESS=10.0.0.4\n"
                      f"OPTION_245={''.join(f'{int(o):02x}' for o in WIRE_HOST.split('.'))}\n")
        if not sb.host_path("/etc/ssh/sshd_config").exists():
            sb.write_file("/etc/ssh/sshd_config", SSHD_CONFIG)
        for path, (text, mode) in self.agent.files.items():
            sb.write_file(path, text, mode=mode)
        sb.run(["mkdir", "-p", RUN])

    def start_fabric(self) -> None:
        cfg = {"run": RUN, "scenario": self.scenario, "host": WIRE_HOST, "imds_host": IMDS_HOST,
               "ovf": self.provision}
        err = open(self.sb.host_path(f"{RUN}/fabric.err"), "wb")
        self.fabric_proc = self.sb.spawn([interpreter(), "-u", str(BENCH_DIR / "fabric_driver.py"), json.dumps(cfg)],
                                         stdout=err, stderr=err)
        err.close()
        self.wait(lambda: self.events.find(lambda e: e["type"] == "started"), 60, "the fabric to start")
        if self.provision:
            ovf = self.sb.host_path(f"{RUN}/ovf-env.xml").read_bytes()
            image = build_image(self.workdir / "dvd.img", {"ovf-env.xml": ovf}, fstype="ext4", label="CDROM")
            self.sb.attach_image(image, device="/dev/sr0")

    def start_daemon(self) -> None:
        out = open(self.sb.host_path(f"{RUN}/daemon.out"), "wb")
        stamp = f'date +%s.%N > {RUN}/t0; exec "$@"'
        self.daemon_proc = self.sb.spawn(["sh", "-c", stamp, "sh", *self.agent.argv, "-daemon"],
                                         env=self.agent.env, stdout=out, stderr=out)
        out.close()
        self.wait(lambda: self._read_t0(), 10, "the daemon to start")

    def _read_t0(self) -> bool:
        try:
            self.t0 = float(self.sb.read_text(f"{RUN}/t0").strip())
            return True
        except (OSError, ValueError):
            return False

    # -- waiting
    def wait(self, cond: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            self.events.poll()
            value = cond()
            if value:
                return value
            if self.daemon_proc is not None and self.daemon_proc.poll() is not None:
                raise BenchFailure(f"the daemon exited (code {self.daemon_proc.returncode}) while waiting for {what}")
            if time.monotonic() > deadline:
                raise BenchFailure(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.05)

    def first_ready(self, timeout: float = 90) -> dict:
        return self.wait(lambda: self.events.find(lambda e: e.get("health") == "Ready"), timeout,
                         "a Ready health report")

    def first_status(self, timeout: float = 90) -> dict:
        return self.wait(lambda: self.events.find(is_status), timeout, "the first status upload")

    def status_where(self, pred: Callable[[VmStatus], bool], after: float, timeout: float, what: str) -> dict:
        return self.wait(lambda: self.events.find(lambda e: is_status(e) and pred(status_of(e)), after),
                         timeout, what)

    # -- processes
    def daemon_pid(self) -> int:
        kids = children(self.daemon_proc.pid)   # nsenter forks once; sh execs the interpreter
        if not kids:
            raise BenchFailure("the daemon process is gone")
        return kids[0]

    def child_pid(self, timeout: float = 30) -> int:
        def find() -> Optional[int]:
            for pid in children(self.daemon_pid()):
                if "-run-exthandlers" in cmdline(pid):
                    return pid
            return None
        return self.wait(find, timeout, "the ext-handler child")

    def daemon_peak_kb(self) -> Optional[int]:
        """The daemon's peak RSS before it re-executed into the lean supervisor, from its own log line
        (an exec starts a new address space: the kernel's high-water mark of the first image is gone
        after it). None for an agent that does not re-execute: its VmHWM is the same figure."""
        try:
            text = self.sb.read_text("/var/log/waagent.log")
        except OSError:
            return None
        m = re.search(r"Re-executing the daemon as the lean supervisor \(pid \d+, RSS \d+ kB, peak (\d+) kB", text)
        return int(m.group(1)) if m else None

    def cpu(self) -> float:
        return cpu_seconds(self.daemon_pid()) + cpu_seconds(self.child_pid())

    # -- fabric control
    def _control(self, command: str, answer: str) -> dict:
        before = time.time()
        with open(self.sb.host_path(f"{RUN}/control"), "w") as fifo:
            fifo.write(command + "\n")
        return self.wait(lambda: self.events.find(lambda e: e["type"] == answer, before - 1.0), 10,
                         f"the fabric to answer {command!r}")

    def advance(self) -> dict:
        return self._control("advance", "advanced")

    def recorded(self) -> dict:
        """Health reports, telemetry and the other records the fabric kept (its ``dump``)."""
        self._control("dump", "dumped")
        return json.loads(self.sb.read_text(f"{RUN}/recorded.json"))

    def requests_between(self, t1: float, t2: float) -> Counter:
        return Counter(e["kind"] for e in self.events.all
                       if e["type"] == "request" and t1 <= e["t"] < t2 and e.get("kind") != "control")

    # -- diagnostics
    def tail(self, path: str, n: int = 20) -> str:
        try:
            lines = self.sb.read_text(path).splitlines()
        except OSError:
            return "    (not found)"
        return "\n".join("    " + line for line in lines[-n:]) or "    (empty)"

    def diagnostics(self) -> str:
        return (f"  last lines of /var/log/waagent.log:\n{self.tail('/var/log/waagent.log')}\n"
                f"  daemon output:\n{self.tail(RUN + '/daemon.out', 10)}\n"
                f"  fabric errors:\n{self.tail(RUN + '/fabric.err', 10)}")


def timed_commands(agent: Agent, verbs: list[str], runs: int) -> dict[str, list[float]]:
    """Wall time of ``waagent <verb>`` measured inside a sandbox by a timer there (no nsenter cost)."""
    code = ("import json, subprocess, sys, time\n"
            "argv, verbs, runs = json.loads(sys.argv[1])\n"
            "out = {}\n"
            "for verb in verbs:\n"
            "    out[verb] = []\n"
            "    for _ in range(runs):\n"
            "        t = time.perf_counter()\n"
            "        subprocess.run(argv + [verb], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "        out[verb].append(time.perf_counter() - t)\n"
            "print(json.dumps(out))\n")
    with Sandbox(hostname="bench-image", loopback_addrs=(WIRE_HOST, IMDS_HOST)) as sb:
        base = project_root() / "config" / "waagent.conf"
        sb.write_file("/etc/waagent.conf", adapt_conf(base.read_text(encoding="utf-8"), agent.conf))
        res = sb.run([interpreter(), "-c", code, json.dumps([agent.argv, verbs, runs])], env=agent.env, timeout=300)
        return json.loads(res.stdout)
