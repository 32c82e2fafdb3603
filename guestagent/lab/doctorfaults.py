"""The faults `guestagent doctor` must name, as the lab injects them into a sandbox (never the host):
Guest Proxy Agent status files in each failing state of its troubleshooting guide, an unreachable
WireServer (a fabric fault), a missing firewall rule, a stale status (the ext-handler frozen).

Each fault has the doctor's check that must name it and a fragment of that line (docs/doctor.md has
the table; the sandbox tests assert it).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from guestagent.osutil import gpa

RUNNING = {"status": "RUNNING", "message": "running"}
#: The verifier dump the guide shows for an old kernel, shortened.
EBPF_LOAD_FAILURE = ("Failed to load program 'connect4' with error: the BPF_PROG_LOAD syscall failed. Verifier "
                     "output: ; int connect4(struct bpf_sock_addr *ctx)\n0: (bf) r6 = r1\n")
EBPF_ATTACH_FAILURE = "Failed to attach program 'connect4' with error: `bpf_link_create` failed"
KEY_LATCH_FAILURE = "Failed to acquire key: the platform rejected the key request (key not found)"
LISTENER_FAILURE = "Failed to start listener on 127.0.0.1:3080: address in use"


def gpa_status(key: Optional[dict] = None, ebpf: Optional[dict] = None, listener: Optional[dict] = None) -> str:
    """A status.json as the GPA writes it; any component not given is RUNNING."""
    comps = {"keyLatchStatus": key or RUNNING, "ebpfProgramStatus": ebpf or RUNNING,
             "proxyListenerStatus": listener or RUNNING}
    overall = "SUCCESS" if all(c["status"] == "RUNNING" for c in comps.values()) else "ERROR"
    doc = {"timestamp": "2026-01-01T00:00:00.000Z",
           "proxyAgentStatus": {"version": "1.0.30", "status": overall, "monitorStatus": RUNNING, **comps,
                                "telemetryLoggerStatus": RUNNING, "proxyConnectionsCount": 0},
           "proxyConnectionSummary": [], "failedAuthenticateSummary": []}
    return json.dumps(doc, indent=2)


@dataclass(frozen=True)
class GpaShape:
    name: str
    text: str
    #: The doctor's check that names it, and a fragment of its line.
    check: str
    expect: str


GPA_SHAPES = (
    GpaShape("gpa-healthy", gpa_status(), "gpa.status", "proxyAgentStatus SUCCESS"),
    GpaShape("gpa-ebpf-load", gpa_status(ebpf={"status": "STOPPED", "message": EBPF_LOAD_FAILURE}),
             "gpa.ebpfProgramStatus", "kernel rejected"),
    GpaShape("gpa-cgroup-attach", gpa_status(ebpf={"status": "STOPPED", "message": EBPF_ATTACH_FAILURE}),
             "gpa.ebpfProgramStatus", "cgroup v2 is not mounted"),
    GpaShape("gpa-key-latch", gpa_status(key={"status": "STOPPED", "message": KEY_LATCH_FAILURE}),
             "gpa.keyLatchStatus", "reset the key"),
    GpaShape("gpa-listener", gpa_status(listener={"status": "STOPPED", "message": LISTENER_FAILURE}),
             "gpa.proxyListenerStatus", "not proxied"),
    GpaShape("gpa-garbled", "{not json", "gpa.status", "not JSON"),
)


def shape(name: str) -> GpaShape:
    for s in GPA_SHAPES:
        if s.name == name:
            return s
    raise KeyError(f"unknown GPA shape {name!r}; known: {', '.join(s.name for s in GPA_SHAPES)}")


STATUS_FILE = gpa.STATUS_FILE
