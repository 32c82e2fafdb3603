"""The differential tier: each scenario run by this agent and by upstream in the same sandbox set-up;
what the fabric recorded must be identical apart from the listed differences.

Upstream is Debian's ``waagent`` package (2.7.3, unpacked by bench/upstream.py, never installed) and,
when ``GUESTAGENT_UPSTREAM_TREE`` names a WALinuxAgent source tree (e.g. ``git archive v2.15.0.1``
unpacked somewhere the sandbox sees: not under /tmp), that release too. All sessions of a run start
at once (one sandbox each; the agents mostly wait), so the tier costs about one session: ~2 minutes.
Set ``GUESTAGENT_DIFF_REPORT=<file>`` to get every difference found, listed or not, as JSON lines;
``GUESTAGENT_DIFFERENTIAL=require`` (CI) fails instead of skipping when Debian's package is unavailable.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Union

import pytest
from facets import differences
from listing import DELIBERATE, KNOWN, classify, load
from observe import PLANS, Observation, observe

pytestmark = [pytest.mark.sandbox, pytest.mark.differential, pytest.mark.timeout(600)]

Outcome = Union[Observation, Exception]


def _agents() -> dict:
    """{label: Agent}: ours and every upstream available here."""
    from harness import our_agent
    from upstream import UpstreamUnavailable, tree_agent, upstream_agent

    from guestagent.lab.sandbox import interpreter

    python = interpreter()
    agents = {"ours": our_agent(python)}
    try:
        agents["debian"] = upstream_agent(python)
    except UpstreamUnavailable as e:
        if os.environ.get("GUESTAGENT_DIFFERENTIAL") == "require":
            pytest.fail(f"GUESTAGENT_DIFFERENTIAL=require and Debian's waagent is not available: {e}")
        if os.environ.get("GUESTAGENT_UPSTREAM_TREE") is None:
            pytest.skip(f"no upstream to compare with: {e}")
    tree = os.environ.get("GUESTAGENT_UPSTREAM_TREE")
    if tree:
        agents["tree"] = tree_agent(python, Path(tree))
    return agents


@pytest.fixture(scope="module")
def runs() -> dict:
    """{(agent label, plan name): Observation or the exception that ended it}, all run in parallel."""
    from guestagent.lab.sandbox import Sandbox, SandboxUnavailable

    try:
        Sandbox().close()
    except SandboxUnavailable as e:
        pytest.skip(str(e))
    agents = _agents()
    jobs = [(label, name) for label in agents for name in PLANS]

    def run(job: tuple[str, str]) -> Outcome:
        try:
            return observe(agents[job[0]], PLANS[job[1]])
        except Exception as e:  # reported by the test of that scenario
            return e

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        results = dict(zip(jobs, pool.map(run, jobs)))
    return {"agents": agents, "results": results}


def _version(agent_name: str) -> str:
    return agent_name.split(" ", 1)[1] if " " in agent_name else agent_name


def _report(entry: dict) -> None:
    path = os.environ.get("GUESTAGENT_DIFF_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_what_the_platform_sees(runs, plan):
    deliberate, known = load(DELIBERATE), load(KNOWN, known=True)
    ours = runs["results"][("ours", plan)]
    if isinstance(ours, Exception):
        pytest.fail(f"this agent did not complete the {plan} scenario: {ours}")
    failures = []
    for label, agent in runs["agents"].items():
        if label == "ours":
            continue
        theirs = runs["results"][(label, plan)]
        if isinstance(theirs, Exception):
            failures.append(f"{agent.name} did not complete the {plan} scenario: {theirs}")
            continue
        version = _version(agent.name)
        diffs = differences(ours, theirs)
        covered, unlisted = classify(diffs, version, plan, deliberate, known)
        _report({"upstream": version, "scenario": plan, "covered": covered, "unlisted": unlisted})
        known_ids = {e.id for e in known}
        for entry_id, found in covered.items():
            if entry_id in known_ids:
                print(f"KNOWN {entry_id} ({plan}, upstream {version}): {len(found)} item(s), e.g. {found[0]}")
        if unlisted:
            failures.append(f"{plan}, upstream {version}: {len(unlisted)} difference(s) not in deliberate.json "
                            "or known.json:\n  " + "\n  ".join(unlisted))
    assert not failures, "\n".join(failures)


def test_known_differences_are_still_there(runs):
    """A known difference that no scenario shows any more was fixed: its entry must go (the lead removes
    it with the fix's merge). Deliberate entries that matched nothing are only printed."""
    deliberate, known = load(DELIBERATE), load(KNOWN, known=True)
    stale = []
    for label, agent in runs["agents"].items():
        if label == "ours":
            continue
        version, used = _version(agent.name), set()
        for plan in PLANS:
            ours, theirs = runs["results"][("ours", plan)], runs["results"][(label, plan)]
            if isinstance(ours, Exception) or isinstance(theirs, Exception):
                pytest.skip(f"the {plan} scenario did not complete (its own test says why)")
            used |= set(classify(differences(ours, theirs), version, plan, deliberate, known)[0])
        for e in deliberate:
            if e.id not in used and (e.upstream is None or version in e.upstream):
                print(f"deliberate entry {e.id} matched nothing against upstream {version}")
        stale += [f"{e.id} ({e.bullet})" for e in known
                  if e.id not in used and (e.upstream is None or version in e.upstream)]
    assert not stale, f"fixed, remove from known.json: {sorted(set(stale))}"
