"""The agent under fault: one sandbox with the fabric (scenario of the tier), the daemon and its child,
and the checks every case of the matrix makes after its fault — a clear error in the log, the agent
still processing goal states and reporting, nothing written outside the agent's directories, no
secret in what the agent wrote, and bounded peak memory.

Set-up is the lab's (guestagent/lab/main.py: conf, DHCP lease, OVF DVD, fabric driver), as the
sandbox tier's daemon tests use it.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional

from guestagent.lab import main as lab
from guestagent.lab.sandbox import Sandbox, interpreter

LIB = "/var/lib/waagent"
RUN = "/run"
AGENT_LOG = "/var/log/waagent.log"
FABRIC_STATE = f"{lab.LAB_RUN}/fabric"
#: Where the agent may write (the rest of the overlay must not change after start-up).
AGENT_DIRS = (LIB, "/var/log/azure", AGENT_LOG)
#: What the fabric hands over in confidence: a protected setting and the provisioning password.
SECRETS = ("fabric-protected-value", "Fabric-Passw0rd!")
#: Peak resident memory allowed (VmHWM, kB): the child's lxml + requests + psutil + cryptography and a
#: 20 000-plugin ExtensionsConfig (137 MB measured) stay under it; D4's 200 MB body read whole (620 MB) did not.
CHILD_PEAK_KB = 200 * 1024
DAEMON_PEAK_KB = 120 * 1024
CONTROL = ("import sys, urllib.request as u\n"
           "m, a, b = sys.argv[1:4]\n"
           "r = u.Request('http://" + lab.WIRE_HOST + "/fabric/' + a, data=b.encode() if b else None, method=m)\n"
           "print(u.urlopen(r, timeout=10).read().decode())\n")


def find_key(doc: Any, key: str) -> list:
    """Every value of ``key`` anywhere in a JSON document."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            if k == key:
                out.append(v)
            out.extend(find_key(v, key))
    elif isinstance(doc, list):
        for v in doc:
            out.extend(find_key(v, key))
    return out


class FaultAgent:
    """See the module docstring. ``lib_mb``: /var/lib/waagent is a tmpfs of that size (a disk that can
    fill up); ``conf``: waagent.conf settings on top of the lab's."""

    def __init__(self, workdir: Path, scenario: Path, *, conf: Optional[dict[str, str]] = None,
                 lib_mb: int = 0):
        self.lab = lab.Lab(str(scenario), out=io.StringIO(), resource_disk_mb=0)
        self.sb = self.lab.sb = Sandbox(hostname=lab.IMAGE_HOSTNAME, loopback_addrs=(lab.WIRE_HOST, lab.IMDS_HOST))
        try:
            sc = self.lab._load_scenario()
            path = self.lab._make_visible(self.sb, sc)
            self.lab._prepare(self.sb, sc, workdir)
            if lib_mb:
                self.sb.run(["sh", "-c", f"mkdir -p {LIB} && mount -t tmpfs -o size={lib_mb}m,mode=0700 lib {LIB}"])
            settings = {"Extensions.GoalStatePeriod": "1", "Logs.Verbose": "y", **(conf or {})}
            self.sb.write_file("/etc/waagent.conf", lab.adapt_conf(self.sb.read_text("/etc/waagent.conf"), settings))
            self.lab._start_fabric(self.sb, path, with_ovf=True)
            self.lab._attach_dvd(self.sb, workdir)
        except BaseException:
            self.sb.close()
            raise
        self.baseline: dict = {}
        self.tmp_baseline: set = set()
        self.peaks = {"daemon": 0, "child": 0}

    def close(self) -> None:
        self.sb.close()

    # -- start ----------------------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        """The daemon up, provisioned, its child reporting the first goal state; then the baselines."""
        self.lab._start_daemon(self.sb)
        self.wait(lambda: self.child(), timeout, "the ext-handler child")
        self.wait(lambda: self.processed(self.incarnation()), timeout, "the first goal state processed")
        self.baseline = self.sb.snapshot()
        self.tmp_baseline = self.tmp_entries()

    # -- the fabric -----------------------------------------------------------------------------------
    def fabric(self, method: str, action: str, body: Optional[dict] = None) -> dict:
        res = self.sb.run([interpreter(), "-c", CONTROL, method, action,
                           json.dumps(body) if body is not None else ""])
        return json.loads(res.stdout)

    def fault(self, kind: str, **spec: Any) -> None:
        self.fabric("POST", "faults", {"kind": kind, **spec})

    def clear_faults(self) -> None:
        self.fabric("DELETE", "faults")

    def step(self, n: int) -> str:
        """Serve step ``n`` (a new goal state); returns its incarnation."""
        return str(self.fabric("POST", f"step?n={n}")["incarnation"])

    def incarnation(self) -> str:
        return str(self.fabric("GET", "state")["incarnation"])

    # -- observation ----------------------------------------------------------------------------------
    def text(self, path: str) -> Optional[str]:
        try:
            return self.sb.read_text(path)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def log(self, since: int = 0) -> str:
        return (self.text(AGENT_LOG) or "")[since:]

    def mark(self) -> int:
        return len(self.log())

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                Path(os.environ.get("TMPDIR", "/tmp"), "guestagent-fault-log.txt").write_text(self.log())
                tail = "\n".join(self.log().splitlines()[-30:])
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n--- waagent.log tail:\n{tail}")
            time.sleep(0.2)

    def wait_log(self, pattern: str, since: int, timeout: float = 20) -> re.Match:
        rx = re.compile(pattern)
        return self.wait(lambda: rx.search(self.log(), since), timeout, f"log line /{pattern}/")

    def alive(self, pid: int) -> bool:
        stat = self.text(f"/proc/{pid}/stat")
        return stat is not None and ") Z " not in stat

    def daemon(self) -> Optional[int]:
        text = (self.text(f"{RUN}/waagent.pid") or "").strip()
        return int(text) if text.isdigit() and self.alive(int(text)) else None

    def children(self) -> list[int]:
        return [pid for pid, cmd in self.sb.processes() if "-run-exthandlers" in cmd and self.alive(pid)]

    def child(self) -> Optional[int]:
        kids = self.children()
        return kids[0] if len(kids) == 1 else None

    def status(self) -> dict:
        try:
            return json.loads(self.text(f"{FABRIC_STATE}/status.json") or "{}")
        except ValueError:
            return {}

    def handler(self, name: str) -> Optional[dict]:
        """The last uploaded handlerAggregateStatus item of ``name``."""
        for item in find_key(self.status(), "handlerAggregateStatus"):
            for h in item:
                if h.get("handlerName") == name:
                    return h
        return None

    def processed(self, incarnation: str, status: str = "Success") -> bool:
        gs = find_key(self.status(), "goalStateAggregateStatus")
        return bool(gs) and str(gs[-1].get("inSvdSeqNo")) == incarnation and gs[-1].get("status") == status

    def requests(self) -> list[dict]:
        text = self.text(f"{FABRIC_STATE}/requests.jsonl") or ""
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def events(self) -> list[dict]:
        """Agent events still on disk plus those the fabric received, as {param: value}."""
        out = []
        folder = self.sb.host_path(f"{LIB}/events")
        for f in sorted(folder.glob("*.tld")) if folder.is_dir() else []:
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            out.append({p["name"]: p["value"] for p in doc.get("parameters", [])})
        text = self.text(f"{FABRIC_STATE}/telemetry.jsonl") or ""
        out += [json.loads(line).get("params", {}) for line in text.splitlines() if line.strip()]
        return out

    # -- the checks of every case ---------------------------------------------------------------------
    def tmp_entries(self) -> set:
        root = self.sb.host_path("/tmp")
        return {os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files}

    def written_outside(self) -> list[str]:
        """Paths written since start-up outside the agent's directories (overlay upper layer and /tmp)."""
        out = [p for p in self.sb.changed_since(self.baseline)
               if not any(p == d or p.startswith(d + "/") for d in AGENT_DIRS)]
        return out + sorted("/tmp/" + p for p in self.tmp_entries() - self.tmp_baseline)

    def files_with_secrets(self) -> list[str]:
        """Files the agent wrote (its directories, everything changed) holding a fabric secret in clear."""
        hits = []
        roots = [self.sb.host_path(d) for d in AGENT_DIRS] + [self.sb.host_path(p) for p in self.written_outside()]
        for root in roots:
            files = [root] if root.is_file() else [Path(d) / n for d, _, ns in os.walk(root) for n in ns]
            for f in files:
                try:
                    data = f.read_bytes()
                except OSError:
                    continue
                if any(s.encode() in data for s in SECRETS):
                    hits.append(str(f).split("/root", 1)[-1])
        return hits

    def peak_kb(self) -> dict[str, int]:
        """VmHWM of the daemon and the child now, and the highest seen so far (a child restarts afresh)."""
        for who, pid in (("daemon", self.daemon()), ("child", self.child())):
            m = re.search(r"^VmHWM:\s+(\d+) kB", self.text(f"/proc/{pid}/status") or "", re.M) if pid else None
            if m:
                self.peaks[who] = max(self.peaks[who], int(m.group(1)))
        return dict(self.peaks)

    def still_working(self, health_step: int, timeout: float = 30) -> str:
        """The daemon and one child alive, and a new goal state (``health_step``) processed and reported
        with success after the fault; returns its incarnation."""
        assert self.daemon(), "the daemon is gone"
        self.wait(lambda: self.child(), 20, "one ext-handler child")
        incarnation = self.step(health_step)
        self.wait(lambda: self.processed(incarnation), timeout, f"goal state {incarnation} processed after the fault")
        return incarnation

    def assert_contained(self) -> None:
        outside = self.written_outside()
        assert not outside, f"written outside the agent's directories: {outside}"
        secrets = self.files_with_secrets()
        assert not secrets, f"a fabric secret in clear in: {secrets}"
        peaks = self.peak_kb()
        assert peaks["child"] <= CHILD_PEAK_KB and peaks["daemon"] <= DAEMON_PEAK_KB, peaks
