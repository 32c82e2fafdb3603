"""One agent through one fabric scenario, in a fresh sandbox, with the bench's machinery (bench/harness.py).

A plan names each goal-state step a *phase* and says how the status blob shows it is reached. The
run starts the fabric and the daemon, waits for each phase, settles, advances to the next, and after
the last one keeps an idle window open until a telemetry POST from a collection after it arrived
(both agents collect events once a minute), so the telemetry of every phase is in. What the fabric recorded comes back
as an :class:`Observation`; a phase not reached in time is noted, not fatal: it is a difference.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.append(str(BENCH))

from harness import Agent, BenchFailure, Session, is_status  # noqa: E402

from guestagent.lab.summary import VmStatus  # noqa: E402

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
IDLE_MIN = 40.0       # long enough to tell a 6-s poll from a 30-s one
IDLE_MAX = 75.0       # both agents collect events every 60 s and send them within 5 s
FLUSH = 6.0
SETTLE = 3.0          # after a phase is reached: its follow-up requests and events
PHASE_TIMEOUT = 60.0


@dataclass
class Phase:
    name: str
    reached: Callable[[VmStatus], bool]


@dataclass
class Plan:
    name: str
    scenario: Path
    provision: bool
    phases: list[Phase]


@dataclass
class Observation:
    agent: str
    plan: Plan
    requests: list[dict] = field(default_factory=list)   # the driver's request events, each with "phase"
    blobs: dict[str, dict] = field(default_factory=dict)  # phase → the last status blob uploaded in it
    reached: dict[str, bool] = field(default_factory=dict)
    recorded: dict = field(default_factory=dict)          # health, telemetry, records (healthservice, ...)
    idle_seconds: float = 0.0
    diagnostics: str = ""


def _phase_of(t: float, starts: list[tuple[str, float]], idle_from: Optional[float]) -> str:
    if idle_from is not None and t >= idle_from:
        return "idle"
    name = starts[0][0]
    for phase, start in starts:
        if t >= start:
            name = phase
    return name


def observe(agent: Agent, plan: Plan) -> Observation:
    """Run ``plan`` with ``agent``; raises BenchFailure when the agent dies or never reports Ready."""
    obs = Observation(agent.name, plan)
    with Session(agent, str(plan.scenario), provision=plan.provision, hostname="diff-image") as s:
        try:
            s.prepare()
            s.start_fabric()
            s.start_daemon()
            s.first_ready(timeout=120)
            starts: list[tuple[str, float]] = []
            for index, phase in enumerate(plan.phases):
                start = s.advance()["t"] if index else 0.0
                starts.append((phase.name, start))
                try:
                    s.status_where(phase.reached, start, PHASE_TIMEOUT, f"phase {phase.name}")
                    obs.reached[phase.name] = True
                except BenchFailure:
                    if s.daemon_proc.poll() is not None:
                        raise
                    obs.reached[phase.name] = False
                time.sleep(SETTLE)
            idle_from = time.time()
            deadline = idle_from + IDLE_MAX
            while time.time() < deadline:
                s.events.poll()
                # Events are collected every 60 s and sent within 5 s: a POST 6 s into the window comes
                # from a collection that started after the last phase. HealthService and the IMDS probe
                # are once a minute: the window also waits for one of each.
                sent = s.events.find(lambda e: e.get("kind") == "telemetrydata", idle_from + FLUSH)
                periodic = all(s.events.find(lambda e, k=k: e.get("kind") == k) for k in ("healthservice", "imds"))
                if sent and periodic and time.time() - idle_from >= IDLE_MIN:
                    break
                time.sleep(0.5)
            obs.idle_seconds = time.time() - idle_from
            obs.recorded = s.recorded()
            s.events.poll()
            for ev in s.events.all:
                if ev.get("type") != "request" or ev.get("kind") == "control":
                    continue
                phase = _phase_of(ev["t"], starts, idle_from)
                obs.requests.append({**ev, "phase": phase})
                if is_status(ev) and phase != "idle":
                    obs.blobs[phase] = ev["blob"]
            obs.diagnostics = s.diagnostics()
        except BenchFailure as e:
            raise BenchFailure(f"{agent.name}, {plan.name}: {e}\n{s.diagnostics()}")
    return obs


# ------------------------------------------------------------------------------------------ plans
SAMPLE, FAILING = "GuestAgent.Fabric.Sample", "GuestAgent.Fabric.Failing"


def _ext(handler: str, version: str, **want: object) -> Callable[[VmStatus], bool]:
    def reached(st: VmStatus) -> bool:
        return any(e.handler == handler and e.version == version
                   and all(str(asdict(e)[k]) == str(v) for k, v in want.items()) for e in st.extensions)
    return reached


def _agent_ready(st: VmStatus) -> bool:
    return st.agent_status == "Ready"


def _no_extension(st: VmStatus) -> bool:
    return st.agent_status == "Ready" and not st.extensions


def _both(*preds: Callable[[VmStatus], bool]) -> Callable[[VmStatus], bool]:
    return lambda st: all(p(st) for p in preds)


PLANS = {
    "lifecycle": Plan("lifecycle", SCENARIOS / "lifecycle.json", True, [
        Phase("provisioning", _agent_ready),
        Phase("install", _ext(SAMPLE, "1.0.0", status="success")),
        Phase("update", _ext(SAMPLE, "1.1.0", status="success", sequence_number=1)),
        Phase("disable", _ext(SAMPLE, "1.1.0", handler_status="NotReady")),
        Phase("uninstall", _no_extension),
    ]),
    "multiconfig": Plan("multiconfig", SCENARIOS / "multiconfig.json", False, [
        Phase("mc-enable", _both(_ext(SAMPLE, "1.0.0", name="first", status="success"),
                                 _ext(SAMPLE, "1.0.0", name="second", status="success"))),
        Phase("mc-change", _ext(SAMPLE, "1.0.0", name="first", status="success", sequence_number=1)),
    ]),
    "failure": Plan("failure", SCENARIOS / "failure.json", False, [
        Phase("failure", _ext(FAILING, "1.0.0", status="error")),
    ]),
}
