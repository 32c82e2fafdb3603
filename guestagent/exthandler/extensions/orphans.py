"""Extension commands an earlier ext-handler left running (issue 13 W3).

When the ext-handler is killed mid-command (SIGKILL, OOM), the command it ran lives on, re-parented. The
next ext-handler finds such processes once at start (osutil.processes: the agent's environment marker and
a handler directory in the environment) and, before it runs any command of the same handler, waits for
them — up to the end of the longest command timeout counted from their start, the bound the killed
ext-handler would have enforced (upstream waits up to 15 min for an orphaned agent process, then kills
it) — and then kills what is left. One handler never runs two commands at once.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Optional

from guestagent import log
from guestagent.exthandler.extensions.runner import TIMEOUTS
from guestagent.osutil import processes
from guestagent.osutil.processes import LeftCommand

POLL = 1.0
WAIT_LIMIT = float(max(TIMEOUTS.values()))


def handler_of(extension_path: str) -> str:
    """``/var/lib/waagent/Publisher.Type-1.2.3`` -> ``Publisher.Type``."""
    return os.path.basename(extension_path.rstrip("/")).rpartition("-")[0]


class LeftCommands:
    """The left commands found at start, settled per handler before its first command."""

    def __init__(self, found: list[LeftCommand], *, wait_limit: float = WAIT_LIMIT, poll: float = POLL,
                 event: Optional[Callable[..., None]] = None):
        self.pending = list(found)
        self.wait_limit = wait_limit
        self.poll = poll
        self.event = event
        for cmd in found:
            log.info("Found an extension command left by a previous ext-handler: [PID: {0}] {1}", cmd.pid,
                     cmd.command)

    @classmethod
    def find(cls, event: Optional[Callable[..., None]] = None) -> LeftCommands:
        try:
            found = processes.extension_commands_left()
        except Exception as e:  # never stops the ext-handler from starting
            log.warn("Could not look for extension commands left by a previous ext-handler: {0}", e)
            found = []
        return cls(found, event=event)

    def settle(self, handler_name: str) -> None:
        """Wait for (then kill) the left commands of ``handler_name``; returns at once when there are none."""
        mine = [c for c in self.pending if handler_of(c.extension_path) == handler_name]
        if not mine:
            return
        self.pending = [c for c in self.pending if c not in mine]
        for cmd in mine:
            waited = time.monotonic()
            deadline = cmd.started + self.wait_limit
            if processes.pid_alive(cmd.pid):
                log.info("[{0}] Waiting for the extension command left by a previous ext-handler to finish: "
                         "[PID: {1}] {2}", handler_name, cmd.pid, cmd.command)
            while processes.pid_alive(cmd.pid) and time.time() < deadline:
                time.sleep(self.poll)
            if processes.pid_alive(cmd.pid):
                processes.kill_tree(cmd.pid)
                msg = (f"Forcibly terminated the extension command left by a previous ext-handler after "
                       f"{int(self.wait_limit)} s: [PID: {cmd.pid}] {cmd.command}")
                log.warn("[{0}] {1}", handler_name, msg)
            else:
                msg = (f"The extension command left by a previous ext-handler ended after a wait of "
                       f"{time.monotonic() - waited:.1f} s: [PID: {cmd.pid}] {cmd.command}")
                log.info("[{0}] {1}", handler_name, msg)
            if self.event is not None:
                version = os.path.basename(cmd.extension_path.rstrip("/")).rpartition("-")[2]
                self.event("ExtensionProcessing", name=handler_name, version=version, is_success=True,
                           message=msg)
