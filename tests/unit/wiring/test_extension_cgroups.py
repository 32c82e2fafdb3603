"""Extensions ↔ cgroups wiring (06 §10.3): handler commands start through the child's configurator.

Disabled (this host: no systemd) the command line is unchanged. Enabled, the boundary is systemd itself,
which cannot run here: ``systemctl`` and ``systemd-run`` are small recording stand-ins on PATH in a tmp dir
(systemd-run strips its options and execs the command, as the real one does inside a scope); everything
else — the runner, the configurator, the command runner, the handler's script — is real.
"""

from __future__ import annotations

import json
import os
import stat
from types import SimpleNamespace

import pytest

from guestagent.conf import Config
from guestagent.errors import ExtensionError
from guestagent.exthandler import cgroups
from guestagent.exthandler.extensions.handler import Context, Handler
from guestagent.osutil import cgroupfs

LIB = "/var/lib/waagent"
NAME, VERSION = "Test.Handler-X", "1.0.0"
SLICE = "azure-vmextensions-Test.Handler_X.slice"

SYSTEMCTL = """#!/bin/sh
echo "systemctl $*" >> {log}
if [ "$1" = show ]; then
  case "$4" in
    CPUQuotaPerSecUSec) echo "CPUQuotaPerSecUSec=infinity" ;;
    LoadState) echo "LoadState=loaded" ;;
    *) echo "$4=no" ;;
  esac
fi
"""
SYSTEMD_RUN = """#!/bin/sh
echo "systemd-run $*" >> {log}
unit=""
while [ $# -gt 0 ]; do
  case "$1" in --unit=*) unit="${{1#--unit=}}"; shift ;; --*) shift ;; *) break ;; esac
done
if [ -e {fail} ]; then echo "Failed to start transient scope unit: Unit $unit.scope not found." >&2; exit 1; fi
echo "Running scope as unit: $unit.scope" >&2
exec "$@"
"""
SCRIPT = """#!/bin/sh
echo "$1" >> {record}
[ -e {record}.fail-$1 ] && {{ echo "handler failed" >&2; exit 3; }}
exit 0
"""


@pytest.fixture
def stand_ins(tmp_path, monkeypatch):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "systemd.log"
    for name, text in (("systemctl", SYSTEMCTL), ("systemd-run", SYSTEMD_RUN)):
        path = bindir / name
        path.write_text(text.format(log=log, fail=tmp_path / "systemd-run.fail"))
        path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(cgroups.events, "add_event", lambda *a, **k: None)
    return SimpleNamespace(log=log, fail=tmp_path / "systemd-run.fail",
                           calls=lambda: log.read_text().splitlines() if log.exists() else [])


def _forced_enabled() -> cgroups.CGroupConfigurator:
    distro = SimpleNamespace(name="ubuntu", version="22.04", service_name="walinuxagent",
                             unit_dir="/lib/systemd/system")
    hierarchy = cgroupfs.Hierarchy("v2", v2_root="/sys/fs/cgroup", v2_root_controllers=("cpu", "memory"))
    c = cgroups.CGroupConfigurator(Config(), distro=distro, hierarchy=hierarchy)
    c.initialized = c.agent_enabled = c.extensions_enabled = True
    return c


def _handler(tmp_root, configurator: cgroups.CGroupConfigurator) -> tuple:
    base = tmp_root / LIB.lstrip("/") / f"{NAME}-{VERSION}"
    (base / "bin").mkdir(parents=True)
    (base / "config").mkdir()
    record = tmp_root / "record"
    script = base / "bin/handler.sh"
    script.write_text(SCRIPT.format(record=record))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    manifest = {"installCommand": "bin/handler.sh install", "enableCommand": "bin/handler.sh enable",
                "disableCommand": "bin/handler.sh disable", "uninstallCommand": "bin/handler.sh uninstall",
                "updateCommand": "bin/handler.sh update"}
    limits = {"cpuQuotaPercentage": 25, "services": [{"name": "test-ext.service", "cpuQuotaPercentage": 5}]}
    (base / "HandlerManifest.json").write_text(json.dumps([{"version": 1.0, "handlerManifest": manifest,
                                                            "resourceLimits": limits}]))
    ctx = Context(LIB, "127.0.0.1", "/var/log/azure", cgroups=configurator)
    return Handler(ctx, NAME, VERSION), record


def test_disabled_cgroups_run_the_command_directly(tmp_root, stand_ins):
    c = cgroups.CGroupConfigurator({"Debug.CgroupLogMetrics": False})
    handler, record = _handler(tmp_root, c)
    handler.install()
    handler.enable(None)
    assert record.read_text().split() == ["install", "enable"]
    assert stand_ins.calls() == []  # neither systemd-run nor systemctl was asked
    assert not c.extensions_enabled


def test_enabled_cgroups_start_commands_in_a_scope_of_the_extension_slice(tmp_root, stand_ins):
    handler, record = _handler(tmp_root, _forced_enabled())
    handler.install()
    calls = stand_ins.calls()
    # install: the slice gets accounting + the manifest's quota, the service its quota, then the scope
    assert f"systemctl set-property {SLICE} CPUAccounting=yes MemoryAccounting=yes CPUQuota=25% --runtime" in calls
    assert ("systemctl set-property test-ext.service CPUAccounting=yes MemoryAccounting=yes CPUQuota=5% --runtime"
            in calls)
    run = [c for c in calls if c.startswith("systemd-run")]
    assert len(run) == 1
    argv = run[0].split()
    assert argv[1:3] == ["--property=CPUAccounting=no", "--property=MemoryAccounting=no"]
    assert argv[3].startswith("--unit=install_") and argv[4:6] == ["--scope", f"--slice={SLICE}"]
    assert argv[6:8] == ["/bin/sh", "-c"] and argv[-1] == "install"
    assert record.read_text().split() == ["install"]
    # every enable sets the slice up again (only changed properties: the stand-in always reports "no")
    before = len(stand_ins.calls())
    handler.enable(None)
    new = stand_ins.calls()[before:]
    assert any(c.startswith(f"systemctl show {SLICE}") for c in new)
    assert any(c.startswith("systemd-run") and "--unit=enable_" in c for c in new)
    # uninstall resets the services' quota, removal the slice's
    handler.uninstall()
    handler.remove()
    calls = stand_ins.calls()
    assert "systemctl set-property test-ext.service CPUQuota= --runtime" in calls
    assert calls[-1] == f"systemctl set-property {SLICE} CPUQuota= --runtime"
    assert record.read_text().split() == ["install", "enable", "uninstall"]


def test_a_failing_extension_is_not_retried(tmp_root, stand_ins):
    c = _forced_enabled()
    handler, record = _handler(tmp_root, c)
    (tmp_root / "record.fail-enable").write_text("")
    with pytest.raises(ExtensionError) as info:
        handler.enable(None)
    assert info.value.code == 1009 and "handler failed" in str(info.value)
    assert record.read_text().split() == ["enable"]
    assert c.extensions_enabled


def test_systemd_run_failure_disables_cgroups_and_runs_directly(tmp_root, stand_ins):
    c = _forced_enabled()
    handler, record = _handler(tmp_root, c)
    stand_ins.fail.write_text("")
    handler.enable(None)  # succeeds: the second, direct run
    assert record.read_text().split() == ["enable"]
    assert not c.extensions_enabled and "systemd-run" in c.disabled_reason
    assert "systemctl set-property walinuxagent.service CPUQuota= --runtime" in stand_ins.calls()
    n = len([x for x in stand_ins.calls() if x.startswith("systemd-run")])
    handler.disable(None)  # from now on without systemd-run
    assert len([x for x in stand_ins.calls() if x.startswith("systemd-run")]) == n
    assert record.read_text().split() == ["enable", "disable"]
