"""A doctor's findings and how they are shown: text a person reads, JSON for tools, the exit code."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

OK, INFO, SKIP, WARN, FAIL = "ok", "info", "skip", "warn", "fail"
#: Levels that make the exit code 1 ("problems found").
PROBLEMS = (WARN, FAIL)
TAGS = {OK: "  ok", INFO: "info", SKIP: "skip", WARN: "WARN", FAIL: "FAIL"}
EXIT_HEALTHY, EXIT_PROBLEMS, EXIT_COULD_NOT_RUN = 0, 1, 2


class CouldNotRun(Exception):
    """The doctor cannot examine this machine at all (no configuration, no permission)."""


@dataclass(frozen=True)
class Finding:
    #: Short, stable name of the check (``endpoint``, ``gpa.status``…): tools key on it.
    check: str
    level: str
    #: What the check found, in one line.
    found: str
    #: Why it matters and what to do: given for problems (and for notes worth acting on).
    why: str = ""
    todo: str = ""

    @property
    def problem(self) -> bool:
        return self.level in PROBLEMS


def render_text(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"[{TAGS[f.level]}] {f.check}: {f.found}")
        if f.why:
            lines.append(f"       why: {f.why}")
        if f.todo:
            lines.append(f"       do:  {f.todo}")
    problems = sum(f.problem for f in findings)
    lines.append(f"{len(findings)} checks, " + (f"{problems} problem(s) found" if problems else "no problems found"))
    return "\n".join(lines)


def render_json(findings: list[Finding]) -> str:
    return json.dumps({"healthy": not any(f.problem for f in findings), "findings": [asdict(f) for f in findings]},
                      indent=2)


def exit_code(findings: list[Finding]) -> int:
    return EXIT_PROBLEMS if any(f.problem for f in findings) else EXIT_HEALTHY
