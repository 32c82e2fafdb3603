"""The benchmark's figures: what each one is, its target, upstream's reference, and the table."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    target: Optional[float] = None        # ours must be <= target
    reference: Optional[float] = None     # upstream WALinuxAgent 2.15 as given in the issues
    group: str = ""


FIGURES = [
    Figure("ready_bare", "start -> Ready, Provisioning.Agent=disabled", "s", 0.3, None, "ready"),
    Figure("ready_prov", "start -> Ready, provisioning (user, pw, key, host)", "s", None, None, "ready"),
    Figure("status_bare", "start -> first status upload (no extension)", "s", None, None, "status"),
    Figure("status_prov", "start -> first status upload (provisioning + ext)", "s", None, None, "status"),
    Figure("rss_daemon", "daemon VmRSS after Ready (lean supervisor)", "MB", None, 33.0, "memory"),
    Figure("hwm_daemon", "daemon VmHWM after Ready", "MB", None, None, "memory"),
    Figure("peak_daemon", "daemon peak VmHWM before the lean supervisor", "MB", None, 33.0, "memory"),
    Figure("rss_child_bare", "child VmRSS, no extension", "MB", None, None, "memory"),
    Figure("hwm_child_bare", "child VmHWM, no extension", "MB", None, None, "memory"),
    Figure("rss_child", "child VmRSS, one extension", "MB", None, 29.0, "memory"),
    Figure("hwm_child", "child VmHWM, one extension", "MB", None, None, "memory"),
    Figure("pss_child_bare", "child PSS, no extension", "MB", None, None, "memory"),
    Figure("uss_child_bare", "child USS, no extension", "MB", None, None, "memory"),
    Figure("pss_child", "child PSS, one extension", "MB", None, None, "memory"),
    Figure("uss_child", "child USS, one extension", "MB", None, None, "memory"),
    Figure("rss_total", "daemon + child VmRSS, one extension", "MB", 40.0, 62.0, "memory"),
    Figure("pss_total", "daemon + child PSS, one extension", "MB", None, None, "memory"),
    Figure("uss_total", "daemon + child USS, one extension", "MB", None, None, "memory"),
    Figure("cpu_bare", "idle CPU daemon+child, no extension", "s/min", 0.03, None, "idle"),
    Figure("cpu_ext", "idle CPU daemon+child, one extension", "s/min", 0.03, 0.055, "idle"),
    Figure("req_bare", "idle requests at the fabric, no extension", "1/min", 13.0, None, "idle"),
    Figure("req_ext", "idle requests at the fabric, one extension", "1/min", 13.0, 26.0, "idle"),
    Figure("cli_version", "waagent -version", "s", 0.05, 0.10, "cli"),
    Figure("cli_showconf", "waagent -show-configuration", "s", None, None, "cli"),
    Figure("inc_update", "new incarnation -> status: extension update", "s", 1.0, 10.0, "incarnation"),
    Figure("inc_disable", "new incarnation -> status: extension disable", "s", 0.3, 2.0, "incarnation"),
    Figure("parse_xml", "20 000 plugins parse: ExtensionsConfig (CPU)", "s", 1.0, None, "parse"),
    Figure("parse_json", "20 000 plugins parse: vmSettings (CPU)", "s", 1.0, None, "parse"),
]
GROUPS = ("ready", "status", "memory", "idle", "cli", "incarnation", "parse")


def summary(values: list[float]) -> Optional[tuple[float, float, float]]:
    return (statistics.median(values), min(values), max(values)) if values else None


def _fmt(v: Optional[float], unit: str) -> str:
    if v is None:
        return "-"
    if unit == "MB":
        return f"{v:.1f}"
    if unit == "1/min":
        return f"{v:.1f}"
    return f"{v:.3f}"


def table(results: dict[str, dict[str, list[float]]], agents: list[str], groups: set[str]) -> str:
    """One row per figure: ours median/min/max, target (ok/MISS), then upstream: measured median and
    ratio, or the issue's reference figure."""
    ours, others = agents[0], agents[1:]
    head = f"{'figure':<52} {'unit':<6} {'median':>8} {'min':>8} {'max':>8} {'n':>3}  {'target':<14}"
    for other in others:
        head += f" {other + ' median':>16} {'ratio':>6}"
    head += f" {'upstream 2.15 (issue)':>22}"
    lines = [head, "-" * len(head)]
    for fig in FIGURES:
        if fig.group not in groups:
            continue
        s = summary(results.get(ours, {}).get(fig.key, []))
        n = len(results.get(ours, {}).get(fig.key, []))
        row = f"{fig.label:<52} {fig.unit:<6} "
        row += " ".join(f"{_fmt(x, fig.unit):>8}" for x in (s or (None, None, None)))
        row += f" {n:>3}  "
        if fig.target is not None:
            verdict = "-" if s is None else ("ok" if s[0] <= fig.target else "MISS")
            row += f"{'<= ' + _fmt(fig.target, fig.unit) + ' ' + verdict:<14}"
        else:
            row += f"{'':<14}"
        for other in others:
            o = summary(results.get(other, {}).get(fig.key, []))
            ratio = f"{s[0] / o[0]:.2f}" if s and o and o[0] else "-"
            row += f" {_fmt(o[0] if o else None, fig.unit):>16} {ratio:>6}"
        row += f" {_fmt(fig.reference, fig.unit):>22}"
        lines.append(row)
    lines.append("ratio = ours / other (below 1 is better for every figure).")
    return "\n".join(lines)
