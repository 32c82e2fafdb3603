"""The agent under fault: one sandbox with the fabric (scenario of the tier), the daemon and its child,
and the checks every case of the matrix makes after its fault — a clear error in the log, the agent
still processing goal states and reporting, nothing written outside the agent's directories, no
secret in what the agent wrote, and bounded peak memory.

The sandbox and the daemon are the sandbox tier's (tests/sandbox/agentlab.py); this adds the checks.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from tests.sandbox.agentlab import AGENT_LOG, LIB, Agent

#: Where the agent may write (the rest of the overlay must not change after start-up).
AGENT_DIRS = (LIB, "/var/log/azure", AGENT_LOG)
#: What the fabric hands over in confidence: a protected setting and the provisioning password.
SECRETS = ("fabric-protected-value", "Fabric-Passw0rd!")
#: Peak resident memory allowed (VmHWM, kB): the child's lxml + requests + psutil + cryptography and a
#: 20 000-plugin ExtensionsConfig (137 MB measured) stay under it; D4's 200 MB body read whole (620 MB) did not.
CHILD_PEAK_KB = 200 * 1024
DAEMON_PEAK_KB = 120 * 1024


class FaultAgent(Agent):
    """See the module docstring. ``lib_mb``: /var/lib/waagent is a tmpfs of that size (a disk that can
    fill up); ``conf``: waagent.conf settings on top of the lab's."""

    def __init__(self, workdir: Path, scenario: Path, *, conf: Optional[dict[str, str]] = None,
                 lib_mb: int = 0):
        super().__init__(workdir, conf, scenario, lib_mb=lib_mb)
        self.baseline: dict = {}
        self.tmp_baseline: set = set()
        self.peaks = {"daemon": 0, "child": 0}

    def start(self, timeout: float = 60) -> tuple[int, int]:
        """The daemon up, provisioned, its child reporting the first goal state; then the baselines."""
        self.start_daemon()
        child = self.wait(lambda: self.child(), timeout, "the ext-handler child")
        self.wait(lambda: self.processed(self.incarnation()), timeout, "the first goal state processed")
        self.baseline = self.sb.snapshot()
        self.tmp_baseline = self.tmp_entries()
        return self.daemon_pid(), child

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
        for who, pid in (("daemon", self.daemon_pid()), ("child", self.child())):
            m = re.search(r"^VmHWM:\s+(\d+) kB", self.text(f"/proc/{pid}/status") or "", re.M) if pid else None
            if m:
                self.peaks[who] = max(self.peaks[who], int(m.group(1)))
        return dict(self.peaks)

    def still_working(self, health_step: int, timeout: float = 30) -> str:
        """The daemon and one child alive, and a new goal state (``health_step``) processed and reported
        with success after the fault; returns its incarnation."""
        assert self.daemon_pid(), "the daemon is gone"
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
