"""Control API on the WireServer port (``/fabric/...``) so a fabric in another process can be steered.

GET  /fabric/state            current step, incarnation, ports, pending faults
POST /fabric/advance          next goal-state step
POST /fabric/step?n=N         jump to step N
POST /fabric/claim            a customer claims the pooled VM (409 when claimed already)
POST /fabric/faults           JSON {"kind", "status", "delay", "reset", "body", "count"}
DELETE /fabric/faults         clear every fault
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from guestagent.fabric.httpd import Request, Response

if TYPE_CHECKING:
    from guestagent.fabric.server import Fabric


def state(fab: Fabric) -> dict:
    view = fab.view()
    return {"scenario": fab.scenario.name, "step": view.step_index, "steps": len(fab.scenario.steps),
            "incarnation": view.incarnation, "etag": view.etag, "fast_track": view.ft_step is not None,
            "wire_port": fab.wire_port, "hgap_port": fab.hgap_port, "storage_port": fab.storage_port,
            "imds_port": fab.imds_port, "claimed": fab.claimed_at is not None, "faults": [f.to_dict() for f in fab.faults.pending()]}


def handle(fab: Fabric, req: Request) -> Response:
    action = req.path[len("/fabric/"):].strip("/")
    try:
        if action == "state" and req.method == "GET":
            pass
        elif action == "advance" and req.method == "POST":
            fab.advance()
        elif action == "step" and req.method == "POST":
            fab.set_step(int(req.query.get("n", "")))
        elif action == "faults" and req.method == "POST":
            spec = json.loads(req.body.decode("utf-8") or "{}")
            if not isinstance(spec, dict):
                raise ValueError("fault must be a JSON object")
            allowed = {"kind", "status", "delay", "reset", "body", "count"}
            if set(spec) - allowed:
                raise ValueError(f"unknown fault keys {sorted(set(spec) - allowed)}")
            fab.faults.add(**spec)
        elif action == "faults" and req.method == "DELETE":
            fab.faults.clear()
        elif action == "claim" and req.method == "POST":
            try:
                fab.claim()
            except ValueError as exc:
                return Response.text(409, str(exc))
        else:
            return Response.text(404, f"unknown control call {req.method} /fabric/{action}")
    except (ValueError, IndexError, TypeError) as exc:
        return Response.text(400, str(exc))
    return Response.json(json.dumps(state(fab)))
