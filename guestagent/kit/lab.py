"""A throwaway VM for one handler: the fabric emulator on 127.0.0.1 and the agent's real pieces against it.

The fabric serves the goal states (ExtensionsConfig or FastTrack vmSettings), the handler packages and the
tenant certificate the protected settings are encrypted to; the agent side is what the ext-handler runs: a
``Config`` from waagent.conf text, a ``WireProtocol`` fetching the goal state (certificates included) and
the ``ExtensionsManager``. The kit and the extension tests drive handlers through it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

from guestagent import conf
from guestagent.exthandler.extensions.manager import ExtensionsManager
from guestagent.exthandler.extensions.runner import CommandResult
from guestagent.fabric.scenario import ExtensionSpec, HandlerPackage, Scenario, Step
from guestagent.fabric.server import Fabric
from guestagent.protocol.certificates import ensure_transport_cert
from guestagent.protocol.goalstate import GoalState
from guestagent.protocol.status import build_vm_status
from guestagent.protocol.wire import WireProtocol


class ExtensionLab:
    """A lib dir + a running fabric + the agent's protocol and ExtensionsManager over it.

    ``config`` is waagent.conf text added after ``Lib.Dir``; ``lib_dir``/``log_root`` default to folders in
    ``workdir`` (the sandbox test uses the real paths)."""

    def __init__(self, workdir: str, *, timeouts: Optional[dict] = None,
                 sink: Optional[Callable[[CommandResult], None]] = None, config: str = "",
                 lib_dir: Optional[str] = None, log_root: Optional[str] = None):
        self.workdir = workdir
        self.lib_dir = lib_dir or os.path.join(workdir, "lib")
        self.log_root = log_root or os.path.join(workdir, "log")
        os.makedirs(self.lib_dir, exist_ok=True)
        self.timeouts = timeouts
        self.sink = sink
        self.config = conf.parse(f"Lib.Dir={self.lib_dir}\n{config}")
        # The first goal state has no extensions yet (what a VM sees before anything is deployed).
        self.fabric = Fabric(Scenario(name="ext-test", steps=[Step(incarnation="1")])).start()
        ensure_transport_cert(self.lib_dir)  # what protocol detection leaves for the ext-handler
        self.protocol = WireProtocol(self.fabric.host, self.lib_dir, self.config, wire_port=self.fabric.wire_port,
                                     hgap_port=self.fabric.hgap_port, sleep=lambda s: None, save_history=False)
        self.goal_state: Optional[GoalState] = None
        self.incarnation = 1
        #: How long the last apply() took to fetch the goal state, and to process it.
        self.fetch_seconds = self.process_seconds = 0.0
        self.manager = self.new_manager()

    def new_manager(self) -> ExtensionsManager:
        """A fresh manager over the same disk: what a restarted ext-handler sees."""
        self.manager = ExtensionsManager(self.config, self.protocol, log_root=self.log_root, timeouts=self.timeouts,
                                         sink=self.sink, dependency_poll=0.2, event=lambda *a, **k: None)
        return self.manager

    def prepare(self, folder: str, version: str, **manifest: object) -> str:
        """Copy a handler folder, overriding ``handlerManifest`` fields; return the copy."""
        dest = os.path.join(self.workdir, "src", f"{os.path.basename(folder.rstrip('/'))}-{version}")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(folder, dest)
        if manifest:
            path = os.path.join(dest, "HandlerManifest.json")
            with open(path, encoding="utf-8-sig") as f:
                doc = json.load(f)
            doc[0]["handlerManifest"].update(manifest)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(doc, f)
        return dest

    def publish(self, name: str, versions: dict[str, Union[str, Path]]) -> None:
        """Put packages ``{version: handler folder or .zip file}`` in the fabric's storage (and its manifest)."""
        handlers = self.fabric.scenario.handlers
        handlers[:] = [h for h in handlers if not (h.name == name and h.version in versions)]
        handlers.extend(HandlerPackage(name, version, Path(source)) for version, source in versions.items())

    def deliver(self, extensions: Iterable[ExtensionSpec], *, fast_track: bool = False,
                required_features: Optional[list[str]] = None, on_hold: bool = False) -> None:
        """Make the fabric's next goal state hold ``extensions``: a new incarnation, or a FastTrack vmSettings."""
        if not fast_track:
            self.incarnation += 1
        step = Step(incarnation=str(self.incarnation), fast_track=fast_track, on_hold=on_hold,
                    extensions=list(extensions))
        if required_features is not None:
            step.required_features = list(required_features)
        self.fabric.scenario.steps.append(step)
        self.fabric.set_step(len(self.fabric.scenario.steps) - 1)

    def apply(self, extensions: Iterable[ExtensionSpec], *, fast_track: bool = False,
              required_features: Optional[list[str]] = None, on_hold: bool = False) -> GoalState:
        """deliver() the next goal state, fetch it as the ext-handler does and process it."""
        self.deliver(extensions, fast_track=fast_track, required_features=required_features, on_hold=on_hold)
        start = time.monotonic()
        self.goal_state = self.protocol.update_goal_state()
        fetched = time.monotonic()
        self.manager.process(self.goal_state)
        self.fetch_seconds, self.process_seconds = fetched - start, time.monotonic() - fetched
        return self.goal_state

    def vm_status(self) -> dict:
        """The status document the ext-handler would upload now."""
        return build_vm_status(self.config, self.goal_state, self.manager.handler_statuses(),
                               goal_state_status=self.manager.goal_state_status(), computer_name="kit",
                               os_name="linux", os_version="0")

    def close(self) -> None:
        self.fabric.stop()
