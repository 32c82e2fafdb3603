"""``guestagent fabric``: run the emulator, and show what the VM told it.

    guestagent fabric serve [--scenario F] [--host H] [--wire-port N] [--hgap-port N] [--storage-port N]
                            [--imds-host H] [--imds-port N] [--state-dir D] [--step N] [--quiet]
    guestagent fabric status   [--state-dir D] [--json]
    guestagent fabric requests [--state-dir D] [--kind K] [--tail N] [--json]
    guestagent fabric ovf      [--scenario F] [--state-dir D] [--iso PATH]
    guestagent fabric check    SCENARIO
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

DEFAULT_STATE = os.environ.get("GUESTAGENT_FABRIC_STATE") or f"/tmp/guestagent-fabric-{os.getuid()}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="guestagent fabric", description="Azure fabric emulator for the guest agent")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run WireServer, HostGAPlugin, storage and IMDS emulators")
    s.add_argument("--scenario", default="default", help="scenario file or built-in name (default: default)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--wire-port", type=int, default=0)
    s.add_argument("--hgap-port", type=int, default=0)
    s.add_argument("--storage-port", type=int, default=0)
    s.add_argument("--imds-host", default=None)
    s.add_argument("--imds-port", type=int, default=0)
    s.add_argument("--state-dir", default=DEFAULT_STATE)
    s.add_argument("--step", type=int, default=0, help="start at this scenario step")
    s.add_argument("--quiet", action="store_true", help="do not print the request timeline")
    st = sub.add_parser("status", help="the VM's last reported status as a table")
    st.add_argument("--state-dir", default=DEFAULT_STATE)
    st.add_argument("--json", action="store_true")
    r = sub.add_parser("requests", help="the request log")
    r.add_argument("--state-dir", default=DEFAULT_STATE)
    r.add_argument("--kind", action="append")
    r.add_argument("--tail", type=int, default=0)
    r.add_argument("--json", action="store_true")
    o = sub.add_parser("ovf", help="print the scenario's ovf-env.xml, or write it as a DVD image")
    o.add_argument("--scenario", default="default")
    o.add_argument("--state-dir", default=DEFAULT_STATE, help="certificate cache shared with 'serve'")
    o.add_argument("--iso", default=None)
    c = sub.add_parser("check", help="validate a scenario file")
    c.add_argument("scenario")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from guestagent.fabric.scenario import ScenarioError

    try:
        return {"serve": _serve, "status": _status, "requests": _requests, "ovf": _ovf, "check": _check}[
            args.command](args)
    except ScenarioError as exc:
        print(f"guestagent fabric: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"guestagent fabric: {exc}", file=sys.stderr)
        return 1


def timeline_line(entry: Dict[str, Any]) -> str:
    t = entry.get("time", "")[11:23]
    fault = " [fault]" if entry.get("fault") else ""
    dur = entry.get("duration") or 0
    return f"{t}  {entry.get('kind', '?'):<18} {entry.get('status')!s:>5}  {dur * 1000:7.1f} ms  " \
           f"{entry.get('method', '')} {entry.get('path', '')}{fault}"


def _serve(args) -> int:
    from guestagent.fabric.scenario import load_scenario
    from guestagent.fabric.server import Fabric

    scenario = load_scenario(args.scenario)
    fab = Fabric(scenario, host=args.host, wire_port=args.wire_port, hgap_port=args.hgap_port,
                 storage_port=args.storage_port, imds_port=args.imds_port, imds_host=args.imds_host,
                 state_dir=args.state_dir)
    if args.step:
        fab.set_step(args.step)
    if not args.quiet:
        fab.on_request = lambda e: print(timeline_line(e), flush=True)
    fab.start()
    print(f"fabric: scenario {scenario.name!r} ({len(scenario.steps)} steps), state in {args.state_dir}\n"
          f"  WireServer   {fab.base_url}\n  HostGAPlugin http://{args.host}:{fab.hgap_port}\n"
          f"  storage      {fab.storage_base()}\n  IMDS         http://{fab.imds_host}:{fab.imds_port}\n"
          f"  control      POST {fab.base_url}/fabric/advance  (Ctrl-C stops)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    fab.stop()
    return 0


def _read_jsonl(path: Path) -> List[Dict[str, Any]]:
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line cut by a crash is skipped, not fatal
    except FileNotFoundError:
        pass
    return out


def _msg(obj: Any) -> str:
    if isinstance(obj, dict):
        fm = obj.get("formattedMessage")
        if isinstance(fm, dict):
            return str(fm.get("message", ""))
    return ""


def status_rows(status: Dict[str, Any], telemetry: List[Dict[str, Any]]) -> List[List[str]]:
    """Table rows: one per handler, one indented row per extension status."""
    rows = []
    agg = status.get("aggregateStatus") or {}
    for h in agg.get("handlerAggregateStatus") or []:
        name = str(h.get("handlerName", "?"))
        events = sum(1 for e in telemetry if (e.get("params") or {}).get("Name") == name)
        rows.append([name, str(h.get("handlerVersion", "")), str(h.get("status", "")), str(h.get("code", "")),
                     _msg(h), str(events)])
        rss = h.get("runtimeSettingsStatus") or {}
        st = ((rss.get("settingsStatus") or {}).get("status")) or {}
        if st:
            label = rss.get("extensionName") or st.get("name") or name
            rows.append([f"  └ {label} (seq {rss.get('sequenceNumber', '?')})", "", str(st.get("status", "")),
                         str(st.get("code", "")), _msg(st), ""])
    return rows


def event_operation(event: Dict[str, Any]) -> str:
    """What an event is about: the agent's Operation, else perf counters / log lines / the extension's name."""
    params = event.get("params") or {}
    if params.get("Operation"):
        return str(params["Operation"])
    if event.get("event_id") == 4:
        return "PerfCounter"
    if event.get("event_id") == 7:
        return "Log"
    return str(params.get("EventName") or params.get("Name") or "?")


def _failed(event: Dict[str, Any]) -> bool:
    value = (event.get("params") or {}).get("OperationSuccess", True)
    return value is False or str(value).strip().lower() == "false"


def telemetry_summary(telemetry: List[Dict[str, Any]], errors: int = 5) -> Dict[str, Any]:
    """Count by operation (most frequent first), the last ``errors`` failed events and the last HeartBeat."""
    counts: Dict[str, int] = {}
    for event in telemetry:
        op = event_operation(event)
        counts[op] = counts.get(op, 0) + 1
    failed = [e for e in telemetry if _failed(e)][-errors:] if errors else []
    beats = [e for e in telemetry if (e.get("params") or {}).get("Operation") == "HeartBeat"]

    def brief(e: Dict[str, Any]) -> Dict[str, Any]:
        p = e.get("params") or {}
        return {"time": str(p.get("OpcodeName", "")), "operation": event_operation(e),
                "name": str(p.get("Name") or p.get("EventName") or ""), "message": str(p.get("Message", ""))}

    return {"total": len(telemetry), "by_operation": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
            "recent_errors": [brief(e) for e in failed], "heartbeat": brief(beats[-1]) if beats else None}


def _observations(record: Dict[str, Any]) -> str:
    obs = record.get("Observations") or []
    return ", ".join(f"{o.get('ObservationName', '?')} {'healthy' if o.get('IsHealthy') else 'UNHEALTHY'}"
                     for o in obs if isinstance(o, dict)) or "no observations"


def _table(rows: List[List[str]], header: List[str]) -> str:
    widths = [max(len(r[i][:60]) for r in [*rows, header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*[c[:60] for c in r]).rstrip() for r in [header, *rows])


def _status(args) -> int:
    state = Path(args.state_dir)
    try:
        status = json.loads((state / "status.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"no status uploaded yet (looked in {state / 'status.json'})")
        return 1
    except ValueError as exc:
        print(f"status.json is not valid JSON: {exc}", file=sys.stderr)
        return 1
    health = _read_jsonl(state / "health.jsonl")
    telemetry = _read_jsonl(state / "telemetry.jsonl")
    signals = _read_jsonl(state / "healthservice.jsonl")
    uploads = _read_jsonl(state / "vmagentlog.jsonl")
    summary = telemetry_summary(telemetry)
    if args.json:
        print(json.dumps({"status": status, "last_health": health[-1] if health else None,
                          "events": len(telemetry), "telemetry": summary,
                          "last_health_signals": signals[-1] if signals else None,
                          "log_uploads": uploads}, indent=2))
        return 0
    agg = status.get("aggregateStatus") or {}
    ga = agg.get("guestAgentStatus") or {}
    gs = ((agg.get("vmArtifactsAggregateStatus") or {}).get("goalStateAggregateStatus")) or {}
    os_info = status.get("guestOSInfo") or {}
    print(f"VM          {os_info.get('computerName', '?')}  ({os_info.get('osName', '?')} "
          f"{os_info.get('osVersion', '')}), status uploaded {status.get('timestampUTC', '?')}")
    print(f"Agent       {ga.get('version', '?')}  {ga.get('status', '?')}  {_msg(ga)}")
    if gs:
        print(f"Goal state  inSvdSeqNo {gs.get('inSvdSeqNo', '?')}  {gs.get('status', '?')} "
              f"(code {gs.get('code', '?')})  {_msg(gs)}")
    if health:
        h = health[-1]
        detail = f" {h.get('substatus')}: {h.get('description')}" if h.get("substatus") else ""
        print(f"Health      {h.get('state')} (incarnation {h.get('incarnation')}){detail}  at {h.get('time', '')}")
    else:
        print("Health      no health report received")
    beat = summary["heartbeat"]
    if beat:
        print(f"Heartbeat   {beat['time']}  {beat['message'][:110]}")
    elif health:
        print(f"Heartbeat   no HeartBeat event yet; last health report at {health[-1].get('time', '?')}")
    else:
        print("Heartbeat   none received")
    if signals:
        print(f"Signals     {signals[-1].get('time', '')}  {_observations(signals[-1])}")
    ops = ", ".join(f"{op} {n}" for op, n in list(summary["by_operation"].items())[:12])
    print(f"Events      {len(telemetry)} telemetry events received" + (f": {ops}" if ops else ""))
    for err in summary["recent_errors"]:
        name = f" [{err['name']}]" if err["name"] else ""
        print(f"  error     {err['time']}  {err['operation']}{name}: {err['message'][:100]}")
    if uploads:
        last = uploads[-1]
        total = sum(int(u.get("size") or 0) for u in uploads)
        print(f"Log upload  {len(uploads)} archive(s), {total} bytes; last {last.get('time', '')} "
              f"({last.get('size', '?')} bytes, {last.get('file', '')})")
    else:
        print("Log upload  none received")
    rows = status_rows(status, telemetry)
    print()
    print(_table(rows, ["HANDLER / EXTENSION", "VERSION", "STATUS", "CODE", "MESSAGE", "EVENTS"])
          if rows else "no handlers reported")
    return 0


def _requests(args) -> int:
    entries = _read_jsonl(Path(args.state_dir) / "requests.jsonl")
    if args.kind:
        entries = [e for e in entries if e.get("kind") in args.kind]
    if args.tail:
        entries = entries[-args.tail:]
    for e in entries:
        print(json.dumps(e) if args.json else timeline_line(e))
    return 0


def _ovf(args) -> int:
    from guestagent.fabric.ovf import build_ovf_env, write_ovf_iso
    from guestagent.fabric.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    cache = Path(args.state_dir) / "certs"
    if args.iso:
        print(write_ovf_iso(scenario, args.iso, cache))
    else:
        sys.stdout.write(build_ovf_env(scenario, cache))
    return 0


def _check(args) -> int:
    from guestagent.fabric.scenario import load_scenario

    sc = load_scenario(args.scenario)
    print(f"{sc.name}: {len(sc.steps)} steps, {len(sc.handlers)} handler packages — OK")
    return 0
