"""The fabric inside the lab's sandbox: ``python -m guestagent.lab.fabricdriver '<json config>'``.

Runs :class:`~guestagent.fabric.server.Fabric` and reports what the VM sent as JSON lines in
``<run>/fabric-events.jsonl`` (the lab follows that file from the host): ``started``, ``request``,
``health``, ``status`` (when the uploaded status changes), ``telemetry`` (one compact record per
event), ``healthservice``, ``vmagentlog``, ``advanced`` and ``claimed``. The lab moves the goal state
on by writing a step number into ``<run>/step``, and claims a pooled VM by writing the number of
claims into ``<run>/claim`` (each one moves the network as the PPS type asks, then claims).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

POLL = 0.2


def _strip_times(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _strip_times(v) for k, v in o.items() if k != "timestampUTC"}
    return [_strip_times(v) for v in o] if isinstance(o, list) else o


def telemetry_record(event: dict) -> dict:
    """The part of a telemetry event the lab shows (the fabric keeps the whole event)."""
    p = event.get("params") or {}
    return {"event_id": event.get("event_id"), "op": p.get("Operation"), "ok": p.get("OperationSuccess"),
            "message": str(p.get("Message") or "")[:300], "time": p.get("OpcodeName"), "task": p.get("TaskName"),
            "name": p.get("Name"), "version": p.get("Version")}


def claim(fab: Any, number: int) -> dict:
    """Claim number ``number``: the network move of the placeholder's PPS type, then the claim itself
    (a second claim is refused by the fabric and moves nothing)."""
    from guestagent.lab.errors import SandboxError
    from guestagent.lab.pool import MOVES, move_network

    kind = fab.scenario.ovf.preprovisioned_vm_type or ("Running" if fab.scenario.ovf.preprovisioned_vm else "None")
    start = time.time()
    if fab.claimed_at is not None:
        return {"number": number, "error": "the VM was claimed already", "at": start}
    try:
        move_network(kind)
        fab.claim()
    except (SandboxError, ValueError) as e:
        return {"number": number, "error": str(e), "at": start}
    return {"number": number, "type": kind, "move": MOVES.get(kind, "none"), "at": start,
            "claimed_at": fab.claimed_at}


def main(argv: list[str]) -> None:
    cfg = json.loads(argv[0])
    run = Path(cfg["run"])
    out = open(run / "fabric-events.jsonl", "a", buffering=1, encoding="utf-8")  # open while we live

    def emit(kind: str, data: Any) -> None:
        out.write(json.dumps({"type": kind, "data": data}, default=str) + "\n")

    from guestagent.fabric.server import Fabric
    from guestagent.lab.image import load_lab_scenario

    sc, _options = load_lab_scenario(cfg["scenario"])
    sc.tenant_certs(run / "tenant")
    if cfg["ovf"]:
        from guestagent.fabric.ovf import build_ovf_env

        (run / "ovf-env.xml").write_text(build_ovf_env(sc))
    fab = Fabric(scenario=sc, host=cfg["host"], wire_port=80, hgap_port=32526, imds_port=80,
                 imds_host=cfg["imds_host"], storage_port=0, state_dir=str(run / "fabric"))
    fab.start()
    emit("started", {"wire": fab.wire_port, "hgap": fab.hgap_port, "imds": fab.imds_port,
                     "storage": getattr(fab, "storage_port", None)})
    seen = {"request": 0, "health": 0, "telemetry": 0, "healthservice": 0, "vmagentlog": 0}
    last_status = None
    step = 0
    claims = 0

    def new(kind: str, items: list) -> list:
        fresh = items[seen[kind]:]
        seen[kind] = len(items)
        return fresh

    while True:
        for r in new("request", list(fab.requests)):
            emit("request", {k: r.get(k) for k in ("kind", "method", "path", "status")})
        for h in new("health", list(fab.health_reports)):
            emit("health", h)
        for e in new("telemetry", list(fab.telemetry)):
            emit("telemetry", telemetry_record(e))
        for doc in new("healthservice", list(fab.records.get("healthservice", []))):
            emit("healthservice", doc)
        for log in new("vmagentlog", list(fab.vm_agent_logs)):
            emit("vmagentlog", {k: v for k, v in log.items() if k != "data"})
        blob = fab.status_blob
        if blob is not None:
            key = json.dumps(_strip_times(blob), sort_keys=True, default=str)
            if key != last_status:
                last_status = key
                emit("status", blob)
        try:
            wanted = int((run / "step").read_text())
        except (OSError, ValueError):
            wanted = step
        while step < wanted:
            fab.advance()
            step += 1
            emit("advanced", {"step": step})
        try:
            wanted = int((run / "claim").read_text())
        except (OSError, ValueError):
            wanted = claims
        while claims < wanted:
            claims += 1
            emit("claimed", claim(fab, claims))
        time.sleep(POLL)


if __name__ == "__main__":
    main(sys.argv[1:])
