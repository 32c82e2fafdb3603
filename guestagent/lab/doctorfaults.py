"""The faults `guestagent doctor` must name, as the lab injects them into a sandbox (never the host):
Guest Proxy Agent status files in each failing state of its troubleshooting guide, an unreachable
WireServer (a fabric fault), a missing firewall rule, a stale status (the ext-handler frozen).

Each fault has the doctor's check that must name it and a fragment of that line (docs/doctor.md has
the table; the sandbox tests assert it).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from guestagent.osutil import gpa

if TYPE_CHECKING:  # the sandbox is only ever passed in
    from guestagent.lab.sandbox import Sandbox

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


#: Faults beyond the GPA shapes, with the doctor's check and line fragment.
OTHER_FAULTS = {
    "firewall-rule": ("firewall", "WireServer rules"),
    "stale-status": ("status", "stale after"),
    "unreachable": ("endpoint", "unreachable"),
}
FAULTS = tuple(s.name for s in GPA_SHAPES) + tuple(OTHER_FAULTS)
#: The stale-status fault freezes the ext-handler this long and runs the doctor with a shorter threshold.
STALE_SECONDS = 3
FABRIC_FAULT = ("import sys, urllib.request as u\n"
                "r = u.Request('http://' + sys.argv[1] + '/fabric/faults', data=sys.argv[2].encode(), method='POST')\n"
                "u.urlopen(r, timeout=10).read()\n")


def child_pid(sb: Sandbox) -> Optional[int]:
    pids = [p for p, cmd in sb.processes() if "-run-exthandlers" in cmd]
    return pids[-1] if pids else None


def expected(name: str) -> tuple[str, str]:
    """(check, line fragment) the doctor must report for fault ``name``."""
    if name in OTHER_FAULTS:
        return OTHER_FAULTS[name]
    s = shape(name)
    return s.check, s.expect


def run_doctor(sb: Sandbox, interpreter: str, fault: Optional[str], wire_host: str, firewall_tool: Optional[str],
               json_output: bool = False) -> tuple[int, str]:
    """Inject ``fault`` (None: none) into the sandbox, run ``guestagent doctor`` inside, undo what must be
    undone (a frozen ext-handler is thawed); returns (exit code, output)."""
    argv = [interpreter, "-m", "guestagent.tools", "doctor", *(["--json"] if json_output else [])]
    frozen = None
    if fault is None:
        pass
    elif fault in {s.name for s in GPA_SHAPES}:
        sb.write_file(gpa.STATUS_FILE, shape(fault).text)
    elif fault == "firewall-rule":
        if firewall_tool == "iptables":
            sb.run(["iptables", "-w", "-t", "security", "-D", "OUTPUT", "-d", f"{wire_host}/32", "-p", "tcp", "-m",
                    "conntrack", "--ctstate", "INVALID,NEW", "-j", "DROP"])
        elif firewall_tool == "nft":
            sb.run(["nft", "delete", "table", "ip", "walinuxagent"])
        else:
            raise ValueError("no firewall tool on this host: no rule to remove")
    elif fault == "stale-status":
        frozen = child_pid(sb)
        if frozen is None:
            raise ValueError("no ext-handler to freeze")
        sb.run(["kill", "-STOP", str(frozen)])
        time.sleep(STALE_SECONDS)
        argv += ["--stale-after", str(STALE_SECONDS - 1)]
    elif fault == "unreachable":
        sb.run([interpreter, "-c", FABRIC_FAULT, wire_host, json.dumps({"kind": "versions", "reset": True, "count": 0})])
    else:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    try:
        res = sb.run(argv, check=False, timeout=120)
    finally:
        if frozen is not None:
            sb.run(["kill", "-CONT", str(frozen)], check=False)
    return res.returncode, res.stdout + res.stderr
