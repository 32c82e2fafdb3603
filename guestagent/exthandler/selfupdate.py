"""Agent updates, told truthfully: this agent never updates itself.

Upstream 2.15 downloads and runs the platform's agent packages (self-update, or the version the goal state
requests under RSM). This agent is updated through the distribution's package manager, so it does not
advertise ``VersioningGovernance`` (protocol/status.py), says at start and in every heartbeat that it does
not self-update, and answers a version the goal state requests as upstream answers an update it could not
do: a warning, an ``AgentUpgrade`` event and ``updateStatus`` Error (code 1) in the status.
"""

from __future__ import annotations

from typing import Optional

from guestagent import events, log
from guestagent.conf import Config
from guestagent.protocol.goalstate import GoalState
from guestagent.protocol.status import formatted
from guestagent.version import AGENT_VERSION

#: The heartbeat's UpdateMode (upstream: SelfUpdate or RSM).
UPDATE_MODE = "NoSelfUpdate"
START_NOTE = ("AutoUpdate is on in the configuration, but this agent does not update itself: it is updated "
              "through the distribution's package manager. Agent versions requested by the goal state are "
              "reported as not applied.")


class AgentUpdateReporter:
    def __init__(self, config: Config, lib_dir: str):
        self.auto_update = config.auto_update_update_to_latest_version
        self.family = config.auto_update_ga_family
        self.lib_dir = lib_dir
        self._status: Optional[dict] = None

    def log_start(self) -> None:
        """The one-time line at start (only when AutoUpdate.* asks for updates)."""
        if self.auto_update:
            log.info("{0}", START_NOTE)

    def on_goal_state(self, goal_state: GoalState, new_goal_state: bool) -> None:
        """A new extensions goal state: is an agent version requested for our family (RSM)? Upstream reports
        ``updateStatus`` only when the VM is enabled for RSM updates and auto-update is on."""
        if not new_goal_state:
            return
        self._status = None
        if not self.auto_update:
            return
        family = next((f for f in goal_state.extensions_goal_state.agent_families if f.name == self.family), None)
        if family is None or not family.is_vm_enabled_for_rsm_upgrades:
            return
        requested = family.version
        if not family.is_version_from_rsm or not requested or requested == AGENT_VERSION:
            self._status = {"expectedVersion": AGENT_VERSION, "status": "Success", "code": 0,
                            "formattedMessage": formatted("")}
            return
        msg = (f"[RSM]Agent version {requested} requested by the goal state is not applied: this agent "
               f"(version {AGENT_VERSION}) does not update itself; it is updated through the distribution's "
               "package manager")
        log.warn("{0}", msg)
        events.add_event(events.WALAEventOperation.AgentUpgrade, is_success=False, message=msg, log_event=False,
                         lib_dir=self.lib_dir)
        self._status = {"expectedVersion": AGENT_VERSION, "status": "Error", "code": 1,
                        "formattedMessage": formatted(msg)}

    def update_status(self) -> Optional[dict]:
        """``guestAgentStatus.updateStatus`` (None: not reported)."""
        return self._status

    def heartbeat_fields(self) -> str:
        return f"AutoUpdate: {1 if self.auto_update else 0};UpdateMode: {UPDATE_MODE};"
