"""What the platform sees, as comparable items: one observation → a set of short normalised strings.

Every facet turns part of what the fabric recorded into items such as
``header install GET extensionsconfig: x-ms-version=2012-11-30`` or
``telemetry GuestAgent.Fabric.Sample Enable success=True message="Command: <path> ..."``; two agents differ where their sets
differ. Values that differ on every run (times, dates, durations, ids, lengths, agent versions) are
normalised; everything else is kept as sent, so a changed value is a difference.

Facets: ``phase`` (reached or not), ``request-kind`` and ``request-order`` (which kind was first
asked before which) per phase, ``poll`` (fast
or slow in the idle window), ``header`` per phase and request kind, ``health``, ``status`` (the last
blob of each phase, flattened), ``hgap-envelope``, ``healthservice``, ``telemetry`` and
``telemetry-params``.
"""

from __future__ import annotations

import json
import re
from typing import Union

from observe import Observation

Json = Union[dict, list, str, int, float, bool, None]

_RULES = [
    (re.compile(r"127\.63\.129\.16"), "<wireserver>"),
    (re.compile(r"169\.254\.169\.254"), "<imds>"),
    (re.compile(r":(?!80\b|32526\b)\d{2,5}\b"), ":<port>"),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?Z?"), "<time>"),
    (re.compile(r"\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT"), "<date>"),
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"), "<uuid>"),
    (re.compile(r"(?<![\d.])\d+\.\d+\.\d+\.\d+(?![\d.])"), "<version>"),
]
_SHAPE = [
    (re.compile(r"\b[0-9A-Fa-f]{32,}\b"), "<hex>"),
    (re.compile(r"/[\w./@+-]+"), "<path>"),
    (re.compile(r"\d+(\.\d+)?"), "#"),
    (re.compile(r"\s+"), " "),
]
#: Header values that differ on every request.
_VOLATILE_HEADERS = {"content-length", "x-ms-date", "x-ms-client-correlationid", "if-none-match",
                     "x-ms-guest-agent-public-x509-cert"}
#: Status-blob keys whose values are times or durations.
_VOLATILE_KEYS = re.compile(r"(?i)time|duration|lastmodified|timestamp")
_SHAPE_LEN = 90


def norm(text: str) -> str:
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text


def shape(text: str) -> str:
    """A message's shape: normalised, paths and numbers blanked, cut short."""
    text = norm(text)
    for pattern, repl in _SHAPE:
        text = pattern.sub(repl, text)
    text = text.strip()
    return json.dumps(text[:_SHAPE_LEN] + ("…" if len(text) > _SHAPE_LEN else ""), ensure_ascii=False)


#: Requests sent on their own timers (reports, probes) or once by another thread (the HostGAPlugin's
#: /versions): in a phase, or before or after another kind, depending on the clock, so they are compared
#: run-wide and by their rate in the idle window, not per phase.
PERIODIC = {"POST telemetrydata", "POST healthservice", "GET imds", "GET hgap_health", "PUT hgap_status",
            "PUT status_blob", "POST health", "GET hgap_versions"}
#: Sent when there are events, not on a timer: no rate to compare.
NOT_POLLED = {"POST telemetrydata"}


def _what(r: dict) -> str:
    """``METHOD kind``; the agent family's manifest (self-update) is told from an extension's."""
    agent = r["kind"] == "manifest" and "OSTCLinuxAgent" in (r.get("path") or "")
    return f"{r['method']} {'agent_manifest' if agent else r['kind']}"


def _request_kinds(obs: Observation) -> set[str]:
    out: set[str] = set()
    order: dict[str, list[str]] = {}
    for r in obs.requests:
        what = _what(r)
        out.add(f"request-kind run: {what}")
        if what in PERIODIC or r["phase"] == "idle":
            continue
        out.add(f"request-kind {r['phase']}: {what}")
        seen = order.setdefault(r["phase"], [])
        if what not in seen:
            seen.append(what)
    for phase, seq in order.items():  # pairwise, so a swap is one difference and a new kind adds its own
        out |= {f"request-order {phase}: {a} < {b}" for i, a in enumerate(seq) for b in seq[i + 1:]}
    idle = [r for r in obs.requests if r["phase"] == "idle"]
    for what in sorted({_what(r) for r in idle} - NOT_POLLED):
        per_min = 60.0 * sum(1 for r in idle if _what(r) == what) / max(obs.idle_seconds, 1.0)
        out.add(f"poll {what}: {'fast (< 12 s)' if per_min >= 5 else 'slow'}")
    return out


def _headers(obs: Observation) -> set[str]:
    out: set[str] = set()
    for r in obs.requests:
        for name, value in (r.get("headers") or {}).items():
            value = "<volatile>" if name in _VOLATILE_HEADERS else norm(value)
            out.add(f"header {_what(r)}: {name}={value}")
    return out


def _health(obs: Observation) -> set[str]:
    return {f"health {h.get('state')} substatus={h.get('substatus')} description={shape(h.get('description') or '')}"
            for h in obs.recorded.get("health", [])}


def _key(item: Json, index: int) -> str:
    if isinstance(item, dict):
        for k in ("handlerName", "name", "Key", "extensionName"):
            if isinstance(item.get(k), str):
                extra = item.get("extensionName") if k != "extensionName" else None
                return f"{item[k]}{'/' + extra if isinstance(extra, str) else ''}"
    return str(index)


def flatten(doc: Json, path: str = "") -> set[str]:
    """Leaves of a JSON document as ``path=value``; list elements keyed by their name where they have one."""
    if isinstance(doc, dict):
        if not doc:
            return {f"{path}={{}}"}
        out: set[str] = set()
        for k, v in doc.items():
            sub = f"{path}.{k}" if path else k
            if _VOLATILE_KEYS.search(k) and not isinstance(v, (dict, list)):
                out.add(f"{sub}=<{type(v).__name__}>")
            else:
                out |= flatten(v, sub)
        return out
    if isinstance(doc, list):
        if not doc:
            return {f"{path}=[]"}
        out = set()
        for i, v in enumerate(doc):
            out |= flatten(v, f"{path}[{_key(v, i)}]")
        return out
    if isinstance(doc, str):
        # JSON inside a string (e.g. a message holding a dictionary) is compared by its shape only.
        return {f"{path}={json.dumps(norm(doc))}"}
    return {f"{path}={json.dumps(doc)}"}


def _status(obs: Observation) -> set[str]:
    return {f"status {phase} {leaf}" for phase, blob in obs.blobs.items() for leaf in flatten(blob)}


def _envelopes(obs: Observation) -> set[str]:
    out: set[str] = set()
    for env in obs.recorded.get("records", {}).get("hgap_envelope", []):
        out.add(f"hgap-envelope keys: {', '.join(env.get('keys', []))}")
        out.add(f"hgap-envelope header names: {', '.join(h[0] for h in env.get('headers', []))}")
        for name, value in env.get("headers", []):
            value = "<volatile>" if name.lower() in _VOLATILE_HEADERS else norm(value)
            out.add(f"hgap-envelope header {name}={value}")
    return out


def _healthservice(obs: Observation) -> set[str]:
    out: set[str] = set()
    for doc in obs.recorded.get("records", {}).get("healthservice", []):
        for k, v in doc.items():
            if k != "Observations":
                out.add(f"healthservice {k}={json.dumps(v)}")
        for o in doc.get("Observations", []):
            out.add(f"healthservice observation {o.get('ObservationName')} keys={','.join(o)} "
                    f"healthy={o.get('IsHealthy')} description={shape(str(o.get('Description', '')))} "
                    f"value={shape(str(o.get('Value', '')))}")
    return out


def _telemetry(obs: Observation) -> set[str]:
    out: set[str] = set()
    for ev in obs.recorded.get("telemetry", []):
        params = ev.get("params", {})
        out.add(f"telemetry-params {ev.get('event_id')}: {', '.join(params)}")
        if "Operation" in params:
            out.add(f"telemetry {params.get('Name')} {params['Operation']} success={params.get('OperationSuccess')} "
                    f"message={shape(str(params.get('Message', '')))}")
    return out


def items(obs: Observation) -> set[str]:
    out = {f"phase {name}: {'reached' if ok else 'NOT reached'}" for name, ok in obs.reached.items()}
    for facet in (_request_kinds, _headers, _health, _status, _envelopes, _healthservice, _telemetry):
        out |= facet(obs)
    return out


def differences(ours: Observation, theirs: Observation) -> list[tuple[str, str]]:
    """(side, item): ``ours`` for what only this agent sent, ``upstream`` for what only upstream sent."""
    a, b = items(ours), items(theirs)
    return sorted([("ours", x) for x in a - b] + [("upstream", x) for x in b - a], key=lambda d: (d[1], d[0]))
