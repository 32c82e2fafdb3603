"""The fabric as the agent sees it: the endpoint it recorded, the versions call, HostGAPlugin, the clock
against the fabric's Date header, and the WireServer firewall rules (read with the tools' check and
list commands). Requests go only to the endpoint the agent recorded in its lib dir; with none recorded
no request is sent at all.
"""

from __future__ import annotations

import os
from email.utils import parsedate_to_datetime
from typing import Optional

from guestagent.doctor.context import DoctorContext
from guestagent.doctor.report import FAIL, OK, SKIP, WARN, Finding
from guestagent.errors import HttpError
from guestagent.osutil import firewall, system
from guestagent.protocol import http
from guestagent.protocol.endpoint import ENDPOINT_FILE

#: Beyond this the agent's signed requests and certificates can fail (and logs are hard to correlate).
MAX_SKEW = 60.0


def _get(url: str, timeout: float) -> http.Response:
    """One attempt through the agent's own HTTP policy, any status returned: the doctor reports what
    the fabric answers now, it does not retry its way past a problem."""
    return http.default_client().get(url, max_retry=1, retry_codes=(), timeout=timeout)


def recorded_endpoint(lib_dir: str) -> Optional[str]:
    text = (system.read_text(os.path.join(lib_dir, ENDPOINT_FILE), default="") or "").strip()
    return text or None


def check_endpoint(ctx: DoctorContext) -> list[Finding]:
    endpoint = recorded_endpoint(ctx.config.lib_dir)
    if endpoint is None:
        return [Finding("endpoint", FAIL, f"no {ENDPOINT_FILE} in {ctx.config.lib_dir}: the WireServer was never found",
                        "without it the agent cannot fetch goal states or report Ready",
                        "check the DHCP lease (option 245) and /var/log/waagent.log; no request was sent")]
    ctx.endpoint = endpoint
    url = f"http://{endpoint}:{ctx.wire_port}/?comp=versions"
    try:
        resp = _get(url, ctx.timeout)
    except (OSError, HttpError) as e:
        return [Finding("endpoint", FAIL, f"WireServer {endpoint} unreachable: {type(e).__name__}: {e}",
                        "no goal state, no status, no Ready while the WireServer cannot be reached",
                        "check routes and firewall to it (ip route get; the firewall check below)")]
    date = resp.header("Date")
    if date:
        try:
            ctx.fabric_time = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            ctx.fabric_time = None
    if resp.status != 200 or "<Versions" not in resp.text():
        return [Finding("endpoint", FAIL, f"WireServer {endpoint} answered the versions call with HTTP {resp.status}",
                        "the agent needs the versions document before anything else", "retry; if it persists, "
                        "report it with 'waagent -collect-logs'")]
    return [Finding("endpoint", OK, f"WireServer {endpoint} answers the versions call")]


def check_hostplugin(ctx: DoctorContext) -> list[Finding]:
    if ctx.endpoint is None:
        return [Finding("hostgaplugin", SKIP, "no endpoint")]
    url = f"http://{ctx.endpoint}:{ctx.hgap_port}/health"
    try:
        resp = _get(url, ctx.timeout)
    except (OSError, HttpError) as e:
        return [Finding("hostgaplugin", WARN, f"HostGAPlugin {ctx.endpoint}:{ctx.hgap_port} unreachable: {e}",
                        "status uploads and extension downloads fall back to the direct channel; vmSettings "
                        "(Fast Track) stop", "check the firewall and routes to the endpoint")]
    if resp.status != 200:
        return [Finding("hostgaplugin", WARN, f"HostGAPlugin health answered HTTP {resp.status}",
                        "the agent falls back to the direct channel", "retry later; report it if it persists")]
    return [Finding("hostgaplugin", OK, f"HostGAPlugin {ctx.endpoint}:{ctx.hgap_port} healthy")]


def check_clock(ctx: DoctorContext) -> list[Finding]:
    if ctx.fabric_time is None:
        return [Finding("clock", SKIP, "no Date header from the WireServer")]
    skew = ctx.now - ctx.fabric_time
    if abs(skew) > MAX_SKEW:
        return [Finding("clock", WARN, f"clock is {skew:+.0f} s off the WireServer's",
                        "certificates and signed requests can be rejected; logs do not line up with the host's",
                        "enable time sync (chrony/systemd-timesyncd with the Hyper-V PTP clock)")]
    return [Finding("clock", OK, f"clock within {abs(skew):.0f} s of the WireServer's")]


def check_firewall(ctx: DoctorContext) -> list[Finding]:
    if not ctx.config.os_enable_firewall:
        return [Finding("firewall", OK, "OS.EnableFirewall=n: no WireServer rules expected")]
    if ctx.endpoint is None:
        return [Finding("firewall", SKIP, "no endpoint: cannot tell which rules should exist")]
    todo = "restart the agent (it re-creates the rules), or 'waagent -setup-firewall'"
    try:
        manager = firewall.create(ctx.endpoint, 0)
        present = manager.check()
    except firewall.FirewallManagerNotAvailableError as e:
        return [Finding("firewall", WARN, f"OS.EnableFirewall=y but {e}",
                        "any user of the VM can talk to the WireServer", "install iptables or nftables")]
    except firewall.FirewallStateError as e:
        return [Finding("firewall", FAIL, f"WireServer rules incomplete: {e}",
                        "non-root users may reach the WireServer", todo)]
    except Exception as e:  # a tool's failure here is a finding, not a crash of the doctor
        return [Finding("firewall", WARN, f"could not list the rules: {e}")]
    if not present:
        return [Finding("firewall", FAIL, f"OS.EnableFirewall=y but no {manager.tool} rules for {ctx.endpoint}",
                        "any user of the VM can talk to the WireServer", todo)]
    return [Finding("firewall", OK, f"{manager.tool} rules for {ctx.endpoint} present")]

