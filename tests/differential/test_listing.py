"""The differential tier's own pieces, without a sandbox: the lists are well-formed, every deliberate
difference names a real row of docs/compatibility.md, the generated section is in sync, and the
facets turn a changed value into a difference no entry covers (the tier can fail)."""

from __future__ import annotations

import pytest
from facets import differences, flatten, items, norm, shape
from listing import DELIBERATE, DOC, KNOWN, Entry, classify, load, render, rows
from observe import PLANS, Observation

pytestmark = pytest.mark.differential


def test_lists_are_well_formed_and_rows_exist():
    deliberate, known = load(DELIBERATE), load(KNOWN, known=True)
    assert deliberate, "deliberate.json lists the documented differences"
    doc_rows = rows(DOC.read_text(encoding="utf-8"))
    missing = [f"{e.id}: {e.row!r}" for e in deliberate if e.row not in doc_rows]
    assert not missing, f"rows not in docs/compatibility.md: {missing}"
    assert not {e.id for e in deliberate} & {e.id for e in known}


def test_doc_section_is_generated_from_the_list():
    doc = DOC.read_text(encoding="utf-8")
    assert render(doc, load(DELIBERATE)) == doc, "run: python3 tests/differential/listing.py"


def test_section_changes_with_the_list():
    doc = DOC.read_text(encoding="utf-8")
    extra = Entry("x", "ours", ["poll *"], "a new deliberate difference", row="`-start`")
    new = render(doc, [*load(DELIBERATE), extra])
    assert new != doc and "a new deliberate difference" in new
    assert render(new, load(DELIBERATE)) == doc


def test_entries_match_side_version_and_scenario():
    e = Entry("e", "upstream", ["telemetry WALinuxAgent GoalState *"], "why", row="r", upstream=["2.7.3.0"],
              scenarios=["lifecycle"])
    item = 'telemetry WALinuxAgent GoalState success=True message="x"'
    assert e.applies("upstream", item, "2.7.3.0", "lifecycle")
    assert not e.applies("ours", item, "2.7.3.0", "lifecycle")
    assert not e.applies("upstream", item, "2.15.0.1", "lifecycle")
    assert not e.applies("upstream", item, "2.7.3.0", "failure")


def test_normalisation_keeps_what_matters():
    assert norm("WALinuxAgent/2.15.0.1") == "WALinuxAgent/<version>"
    assert norm("127.63.129.16:80") == "<wireserver>:80"
    assert norm("127.63.129.16:41234") == "<wireserver>:<port>"
    assert shape("Provisioning succeeded (7.49s)") == '"Provisioning succeeded (#s)"'
    assert shape("Command: /var/lib/waagent/x/bin/ext.sh enable") == '"Command: <path> enable"'
    leaves = flatten({"a": [{"name": "n", "code": 0, "timestampUTC": "2026-01-01T00:00:00Z"}]})
    assert leaves == {'a[n].name="n"', "a[n].code=0", "a[n].timestampUTC=<str>"}


def _obs(code: object) -> Observation:
    obs = Observation("x", PLANS["failure"])
    obs.reached = {"failure": True}
    obs.blobs = {"failure": {"aggregateStatus": {"handlerAggregateStatus": [
        {"handlerName": "H", "runtimeSettingsStatus": {"settingsStatus": {"status": {"code": code}}}}]}}}
    return obs


def test_a_changed_value_is_an_unlisted_difference():
    """A string code uploaded as an integer (issue 14) is caught: both spellings are items, neither listed."""
    assert items(_obs(0)) != items(_obs("0"))
    diffs = differences(_obs(0), _obs("0"))
    covered, unlisted = classify(diffs, "2.15.0.1", "failure", load(DELIBERATE), [])
    assert not covered
    assert unlisted == [
        'upstream-only: status failure aggregateStatus.handlerAggregateStatus[H].runtimeSettingsStatus'
        '.settingsStatus.status.code="0"',
        "ours-only: status failure aggregateStatus.handlerAggregateStatus[H].runtimeSettingsStatus"
        ".settingsStatus.status.code=0"]
