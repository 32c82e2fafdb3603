"""Behaviour of the benchmark's own pieces (not timings): python3 -m pytest bench -q"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from figures import FIGURES, table  # noqa: E402
from harness import Events, cpu_seconds, memory_kb  # noqa: E402

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the bench runs in a namespace sandbox")


def test_not_root_exits_2_with_a_sentence(tmp_path):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop to an unprivileged user")
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python,
                          str(BENCH / "run.py"), "--no-upstream"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60, env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)})
    assert res.returncode == 2, res.stderr
    assert "needs root" in res.stderr and res.stdout == ""


def test_unknown_group_is_a_usage_error():
    res = subprocess.run([sys.executable, str(BENCH / "run.py"), "--only", "speed"], capture_output=True, text=True)
    assert res.returncode == 2 and "unknown group(s) speed" in res.stderr


def test_table_shows_verdicts_and_ratios():
    results = {"ours": {"ready_bare": [0.2, 0.25, 0.4], "cli_version": [0.06]},
               "upstream": {"ready_bare": [0.5], "cli_version": [0.12]}}
    text = table(results, ["ours", "upstream"], {"ready", "cli"})
    ready = next(line for line in text.splitlines() if line.startswith("start -> Ready, Provisioning"))
    assert "0.250" in ready and "0.200" in ready and "0.400" in ready and "ok" in ready and "0.50" in ready
    version = next(line for line in text.splitlines() if line.startswith("waagent -version"))
    assert "MISS" in version and "0.100" in version          # the upstream figure is shown
    assert "memory" not in text.lower() or "VmRSS" not in text  # groups not asked are not printed


def test_every_figure_has_a_group_and_unit():
    keys = [f.key for f in FIGURES]
    assert len(keys) == len(set(keys))
    assert all(f.group and f.unit for f in FIGURES)


def test_events_are_read_incrementally_across_partial_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    ev = Events(lambda: path)
    assert ev.poll() == []                                   # not there yet
    one = json.dumps({"type": "request", "t": 1.0, "kind": "goalstate"})
    two = json.dumps({"type": "request", "t": 2.0, "kind": "vmsettings"})
    path.write_text(one + "\n" + two[:10])
    assert [e["kind"] for e in ev.poll()] == ["goalstate"]
    with open(path, "a") as fh:
        fh.write(two[10:] + "\n")
    assert [e["kind"] for e in ev.poll()] == ["vmsettings"]
    assert ev.find(lambda e: e["kind"] == "goalstate", after=1.5) is None
    assert ev.find(lambda e: True, after=1.5)["kind"] == "vmsettings"


def test_proc_probes_read_this_process():
    assert cpu_seconds(os.getpid()) >= 0
    mem = memory_kb(os.getpid())
    assert mem["VmHWM"] >= mem["VmRSS"] > 0
    assert mem["VmRSS"] >= mem["Pss"] >= mem["Uss"] > 0


def test_bench_scenarios_have_the_steps_the_bench_times():
    from guestagent.fabric.scenario import load_scenario

    bare = load_scenario(str(BENCH / "scenarios" / "bare.json"))
    assert not bare.ovf.provision_guest_agent and len(bare.steps) == 1
    ext = load_scenario(str(BENCH / "scenarios" / "extension.json"))
    versions = [[(e.name, e.version, e.state) for e in s.extensions] for s in ext.steps]
    assert versions == [[("GuestAgent.Fabric.Sample", "1.0.0", "enabled")],
                        [("GuestAgent.Fabric.Sample", "1.1.0", "enabled")],
                        [("GuestAgent.Fabric.Sample", "1.1.0", "disabled")]]
    assert not any(s.fast_track for s in ext.steps)          # each step is a new incarnation


def test_upstream_mount_shim_only_rewrites_the_type_list(tmp_path):
    from upstream import MOUNT_SHIM

    shim = tmp_path / "mount"
    shim.write_text(MOUNT_SHIM.replace("exec /usr/bin/mount", "printf '%s\\n'"))
    out = subprocess.run(["sh", str(shim), "-o", "ro", "-t", "udf,iso9660,vfat", "/dev/sr0", "/mnt/cd rom"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["-o", "ro", "-t", "auto", "/dev/sr0", "/mnt/cd rom"]


@root_only
def test_a_session_reaches_ready_and_reads_the_processes():
    """End to end in a sandbox: Ready, a status, the daemon and its child found, their figures read."""
    from harness import Session, our_agent

    with Session(our_agent(sys.executable), str(BENCH / "scenarios" / "bare.json"), provision=False) as s:
        s.prepare()
        s.start_fabric()
        s.start_daemon()
        ready = s.first_ready(60)
        status = s.first_status(60)
        assert s.t0 < ready["t"] <= status["t"]
        assert status["blob"]["aggregateStatus"]["guestAgentStatus"]["status"] == "Ready"
        assert "-run-exthandlers" in " ".join(open(f"/proc/{s.child_pid()}/cmdline").read().split("\0"))
        assert s.cpu() > 0 and memory_kb(s.daemon_pid())["VmRSS"] > 0
        kinds = s.requests_between(0, status["t"] + 1)
        assert kinds["goalstate"] >= 1 and kinds["health"] >= 1


def test_extensions_goal_state_parsing_is_linear_in_the_number_of_plugins():
    """Issue 13 D5: 4x the plugins must cost well under the 16x of a quadratic parse (8x allowed for
    noise); CPU time, best of 3."""
    import parse

    for measure in (parse.extensions_config_seconds, parse.vm_settings_seconds):
        small, large = measure(1000, repeat=3), measure(4000, repeat=3)
        assert large < 8 * small, f"{measure.__name__}: 1000 plugins {small:.3f} s, 4000 plugins {large:.3f} s"


def test_the_parse_documents_are_what_they_claim():
    import parse

    from guestagent.protocol.extconfig import parse_extensions_config, parse_vm_settings

    for egs in (parse_extensions_config(parse.extensions_config(30), "1"), parse_vm_settings(parse.vm_settings(30), "e")):
        assert len(egs.extensions) == 30
        assert all(e.invalid_setting_reason is None and len(e.settings) == 1 for e in egs.extensions)
        assert egs.extensions[12].settings[0].sequence_number == 2
