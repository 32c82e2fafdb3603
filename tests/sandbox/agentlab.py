"""The real ``waagent -daemon`` and its ext-handler child in a namespace sandbox, against the fabric
emulator running inside it (the lab's set-up: conf, DHCP lease, OVF DVD, fabric driver), and what a
test reads back: the log, processes, pid files, events, what the fabric received.

One module for the sandbox tier's daemon tests and the fault tier, so that both wait, mark and read the
same way.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Optional, Union

from guestagent.lab import main as lab
from guestagent.lab.sandbox import Sandbox, interpreter

PERIOD = 1
LIB = "/var/lib/waagent"
#: /var/run is an absolute symlink to /run: read through the latter (host_path does not follow links inside)
RUN = "/run"
AGENT_LOG = "/var/log/waagent.log"
FABRIC_STATE = f"{lab.LAB_RUN}/fabric"
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


class Agent:
    """One sandbox with the fabric running and the image prepared; the daemon started on demand.
    ``scenario``: a scenario name or file; ``conf``: waagent.conf settings on top of the lab's;
    ``lib_mb``: /var/lib/waagent is a tmpfs of that size (a disk that can fill up)."""

    def __init__(self, workdir: Path, conf: Optional[dict[str, str]] = None,
                 scenario: Union[str, Path] = "default", *, lib_mb: int = 0):
        self.workdir = workdir
        self.lab = lab.Lab(str(scenario), out=io.StringIO(), resource_disk_mb=0)  # no resource disk: not our subject
        self.sb = self.lab.sb = Sandbox(hostname=lab.IMAGE_HOSTNAME, loopback_addrs=(lab.WIRE_HOST, lab.IMDS_HOST))
        try:
            sc = self.lab._load_scenario()
            path = self.lab._make_visible(self.sb, sc)
            self.lab._prepare(self.sb, sc, workdir)
            if lib_mb:
                self.sb.run(["sh", "-c", f"mkdir -p {LIB} && mount -t tmpfs -o size={lib_mb}m,mode=0700 lib {LIB}"])
            self.set_conf({"Extensions.GoalStatePeriod": str(PERIOD), "Logs.Verbose": "y", **(conf or {})})
            self.conf_text = self.sb.read_text("/etc/waagent.conf")
            self.lab._start_fabric(self.sb, path, with_ovf=True)
            self.lab._attach_dvd(self.sb, workdir)
        except BaseException:
            self.sb.close()
            raise
        self.daemon: Any = None

    def close(self) -> None:
        self.sb.close()

    # -- control ------------------------------------------------------------------------------------
    def set_conf(self, settings: dict[str, str]) -> None:
        self.sb.write_file("/etc/waagent.conf", lab.adapt_conf(self.sb.read_text("/etc/waagent.conf"), settings))

    def start_daemon(self) -> None:
        """``waagent -daemon`` as the lab (and systemd) starts it; output in daemon.out."""
        self.lab._start_daemon(self.sb)
        self.daemon = self.lab.daemon

    def start(self) -> tuple[int, int]:
        """Start the daemon and wait for steady state: (daemon pid, child pid) inside the sandbox."""
        self.start_daemon()
        child = self.wait_child()
        self.wait_log(r"Goal State Period: 1 sec")
        self.wait(lambda: self.uploads(), 20, "a first status upload")
        return self.daemon_pid(), child

    def kill(self, pid: int, sig: str) -> None:
        self.sb.run(["kill", f"-{sig}", str(pid)])

    # -- the fabric ---------------------------------------------------------------------------------
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

    # -- observation --------------------------------------------------------------------------------
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
        """``predicate``'s first true value; on timeout the log's tail and the processes in the error, the
        whole log in $TMPDIR/guestagent-sandbox-log.txt."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                log = self.log()
                Path(os.environ.get("TMPDIR", "/tmp"), "guestagent-sandbox-log.txt").write_text(log)
                tail = "\n".join(log.splitlines()[-40:])
                raise AssertionError(f"timed out after {timeout} s waiting for {what}\n--- waagent.log tail:\n{tail}"
                                     f"\n--- processes: {self.sb.processes()}")
            time.sleep(0.2)

    def wait_log(self, pattern: str, since: int = 0, timeout: float = 20) -> re.Match:
        rx = re.compile(pattern)
        return self.wait(lambda: rx.search(self.log(), since), timeout, f"log line /{pattern}/")

    def alive(self, pid: int) -> bool:
        stat = self.text(f"/proc/{pid}/stat")
        return stat is not None and ") Z " not in stat

    def daemon_pid(self) -> Optional[int]:
        """The pid the daemon's pid file names, if that process is alive."""
        text = (self.text(f"{RUN}/waagent.pid") or "").strip()
        return int(text) if text.isdigit() and self.alive(int(text)) else None

    def children(self) -> list[int]:
        return [pid for pid, cmd in self.sb.processes() if "-run-exthandlers" in cmd and self.alive(pid)]

    def child(self) -> Optional[int]:
        """The ext-handler child, when there is exactly one."""
        kids = self.children()
        return kids[0] if len(kids) == 1 else None

    def wait_child(self, old: tuple[int, ...] = (), timeout: float = 20) -> int:
        """The one live ext-handler (not in ``old``) once it has written its pid file."""

        def ready() -> Optional[int]:
            kids = [p for p in self.children() if p not in old]
            if len(kids) == 1 and str(kids[0]) in self.child_pid_files().values():
                return kids[0]
            return None

        return self.wait(ready, timeout, f"a new ext-handler (old: {old})")

    def child_pid_files(self) -> dict[str, str]:
        run = self.sb.host_path(RUN)
        return {p.name: p.read_text().strip() for p in run.glob("*_waagent.pid")}

    def rss_kb(self, pid: int) -> int:
        m = re.search(r"^VmRSS:\s+(\d+) kB", self.text(f"/proc/{pid}/status") or "", re.M)
        assert m, f"no VmRSS for {pid}"
        return int(m.group(1))

    def requests(self, *kinds: str) -> list[dict]:
        """What the fabric received (of ``kinds``, or all)."""
        text = self.text(f"{FABRIC_STATE}/requests.jsonl") or ""
        reqs = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [r for r in reqs if not kinds or r["kind"] in kinds]

    def uploads(self) -> list[dict]:
        """Status uploads the fabric accepted (through HostGAPlugin or straight to the blob)."""
        return [r for r in self.requests("hgap_status", "status_blob")
                if r["method"] == "PUT" and r["status"] in (200, 201)]

    def status(self) -> dict:
        """The last status document the fabric accepted ({} before the first, or while it is written)."""
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
        """The last uploaded goal-state status is ``incarnation``'s, with ``status``."""
        gs = find_key(self.status(), "goalStateAggregateStatus")
        return bool(gs) and str(gs[-1].get("inSvdSeqNo")) == incarnation and gs[-1].get("status") == status

    def events(self) -> list[dict]:
        """Agent events still on disk plus those already sent to the fabric, as {param: value}."""
        out = []
        folder = self.sb.host_path(f"{LIB}/events")
        for f in sorted(folder.glob("*.tld")) if folder.is_dir() else []:
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError):
                continue  # collected (deleted) while we looked
            out.append({p["name"]: p["value"] for p in doc.get("parameters", [])})
        text = self.text(f"{FABRIC_STATE}/telemetry.jsonl") or ""
        out += [json.loads(line).get("params", {}) for line in text.splitlines() if line.strip()]
        return out

    def event(self, op: str, text: str, success: Optional[bool] = None) -> Optional[dict]:
        for ev in self.events():
            ok = ev.get("OperationSuccess")
            if ev.get("Operation") == op and text in str(ev.get("Message")) and (
                    success is None or str(ok).lower() == str(success).lower()):
                return ev
        return None
