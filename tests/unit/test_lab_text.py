"""What the lab prints: the timeline's handler commands, the summary's failures, the scenario names."""

from __future__ import annotations

import pytest

from guestagent.fabric.scenario import ScenarioError, builtin_scenarios, load_scenario
from guestagent.lab import main as lab
from guestagent.lab import summary
from guestagent.lab.timeline import classify_log_line

ENV = 'with environment variables: {"AZURE_GUEST_AGENT_EXTENSION_VERSION": "1.5.5"}'


@pytest.mark.parametrize("command, shown", [
    ("/var/lib/waagent/Microsoft.OSTCExtensions.CustomScriptForLinux-1.5.5/shim.sh -enable", "shim.sh -enable"),
    ("/var/lib/waagent/Microsoft.OSTCExtensions.CustomScriptForLinux-1.5.5/bin/enable.sh", "bin/enable.sh"),
    ("/var/lib/waagent/Microsoft.OSTCExtensions.CustomScriptForLinux-1.5.5/python3 main/handle.py --enable",
     "python3 main/handle.py --enable"),
    ("/var/lib/waagent/Microsoft.OSTCExtensions.CustomScriptForLinux-1.5.5/bin/handler.sh install",
     "bin/handler.sh install"),
])
def test_timeline_shows_every_handler_command(command, shown):
    line = ("2026-01-01T00:00:00.000000Z INFO ExtHandler [Microsoft.OSTCExtensions.CustomScriptForLinux-1.5.5] "
            f"Executing command: {command} {ENV}")
    assert classify_log_line(line) == f"Microsoft.OSTCExtensions.CustomScriptForLinux-1.5.5: {shown}"


LOG_COLLECTION = ("Checking if log collection is allowed at this time [False]. All three conditions must be met: "
                  "1. configuration enabled [True], 2. cgroups v1 enabled [False] OR cgroups v2 is in use and v2 "
                  "resource limiting configuration enabled [False], 3. python supported: [True]")


def test_green_run_counts_no_failure():
    """A green lab run's events: the log collector's check, unsigned extensions, cgroup warnings."""
    events = [
        {"event_id": 1, "op": "LogCollection", "ok": False, "message": LOG_COLLECTION, "time": "t1"},
        {"event_id": 1, "op": "ExtensionSigned", "ok": False, "message": "", "time": "t2", "name": "X"},
        {"event_id": 1, "op": "CGroupsInfo", "ok": False, "message": "[CGW] no systemd", "time": "t3"},
        {"event_id": 1, "op": "Enable", "ok": True, "message": "ok", "time": "t4"}]
    lines = summary.telemetry_lines(events, [], [])
    assert "  failed operations: 0" in lines
    assert "  reported as unsuccessful but not failures: 3 (CGroupsInfo 1, ExtensionSigned 1, LogCollection 1)" \
        in lines


def test_a_real_failure_is_named_in_plain_words_and_not_cut_mid_sentence():
    failed = [
        {"event_id": 1, "op": "Enable", "ok": False, "time": "t1", "name": "Microsoft.Azure.Extensions.CustomScript",
         "version": "2.1.10", "message": "Non-zero exit code: 1. " + "The script said: no such file. " * 12},
        {"event_id": 1, "op": "LogCollection", "ok": False, "time": "t2", "message": "Log collection failed: timeout"},
    ]
    lines = summary.telemetry_lines(failed, [], [])
    i = lines.index("  failed operations: 2 (last 2):")
    first = lines[i + 1]
    assert first.startswith("    t1 enabling the extension failed (Enable, Microsoft.Azure.Extensions.CustomScript "
                            "2.1.10): Non-zero exit code: 1. The script said: no such file.")
    assert first.endswith("no such file.") and len(first.split("): ", 1)[1]) <= 240
    assert lines[i + 2] == "    t2 collecting the logs failed (LogCollection): Log collection failed: timeout"
    assert summary.first_sentences("word " * 100, 50).endswith("word...")


def test_scenario_names_in_help_and_in_the_unknown_scenario_error(capsys):
    names = builtin_scenarios()
    assert "default" in names and len(names) >= 2
    with pytest.raises(SystemExit):
        lab.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "built-in scenarios: " + ", ".join(names) in out
    with pytest.raises(ScenarioError) as err:
        load_scenario("defualt")
    assert str(err.value).endswith(f"(built-in: {', '.join(names)})")
