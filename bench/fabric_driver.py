"""The fabric as the benchmark runs it inside the sandbox (started by bench/harness.py, not by hand).

Usage: python3 bench/fabric_driver.py '<json config>'

Every request is appended to ``<run>/events.jsonl`` as it is answered, stamped with the wall clock
(the same clock the daemon's start stamp uses), with the health state for health reports and the
whole decoded blob for status uploads, so the bench can time "first status" or "status that
carries incarnation N" precisely. ``advance`` lines written to the ``<run>/control`` FIFO move the
fabric to its next goal-state step; the driver answers with an ``advanced`` event. ``dump`` writes
everything else the fabric recorded (health reports, telemetry, HealthService observations, HGAP
status envelopes) to ``<run>/recorded.json`` and answers ``dumped``: the differential tier compares it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

STATUS_KINDS = ("status_blob", "hgap_status")


def main() -> int:
    cfg = json.loads(sys.argv[1])
    run = Path(cfg["run"])
    out = open(run / "events.jsonl", "a", buffering=1, encoding="utf-8")
    lock = threading.Lock()

    def emit(doc: dict) -> None:
        line = json.dumps(doc, default=str) + "\n"
        with lock:
            out.write(line)

    from guestagent.fabric.scenario import load_scenario
    from guestagent.fabric.server import Fabric

    scenario = load_scenario(cfg["scenario"])
    fab = Fabric(scenario=scenario, host=cfg["host"], wire_port=80, hgap_port=32526, imds_port=80,
                 imds_host=cfg["imds_host"], storage_port=0)
    if cfg.get("ovf"):
        from guestagent.fabric.ovf import build_ovf_env

        (run / "ovf-env.xml").write_text(build_ovf_env(scenario))

    def on_request(entry: dict) -> None:
        doc = {"type": "request", "t": time.time(), "kind": entry.get("kind"), "method": entry.get("method"),
               "status": entry.get("status"), "role": entry.get("role"), "step": fab.step,
               "path": entry.get("path"), "headers": entry.get("headers")}
        if entry.get("kind") == "health" and fab.health_reports:
            doc["health"] = fab.health_reports[-1].get("state")
        if entry.get("kind") in STATUS_KINDS and entry.get("status") in (200, 201):
            doc["blob"] = fab.status_blob
        emit(doc)

    fab.on_request = on_request
    fab.start()
    emit({"type": "started", "t": time.time(), "wire": fab.wire_port, "storage": fab.storage_port})
    control = run / "control"
    if not control.exists():
        os.mkfifo(control, 0o600)
    while True:
        with open(control, encoding="utf-8") as fifo:  # blocks until the bench opens it for writing
            for line in fifo:
                if line.strip() == "advance":
                    step = fab.advance()
                    emit({"type": "advanced", "t": time.time(), "step": step, "incarnation": fab.view().incarnation})
                elif line.strip() == "dump":
                    recorded = {"health": list(fab.health_reports), "telemetry": list(fab.telemetry),
                                "records": {k: list(v) for k, v in list(fab.records.items())}}
                    tmp = run / "recorded.json.tmp"
                    tmp.write_text(json.dumps(recorded, default=str), encoding="utf-8")
                    tmp.rename(run / "recorded.json")
                    emit({"type": "dumped", "t": time.time()})


if __name__ == "__main__":
    sys.exit(main())
