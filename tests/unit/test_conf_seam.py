"""The agent reads its configuration only through Config's typed attributes (issue 12 item 5): a
configured ``0`` is the value acted on (``config.get("Key") or default`` turned it into the default),
and no module restates a default or reads an option by its key."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from types import SimpleNamespace

from guestagent import conf
from guestagent.exthandler import cgroups, logcollector, monitor, telemetry
from guestagent.exthandler.context import ThreadContext
from guestagent.exthandler.main import ExtHandler

PACKAGE = Path(__file__).resolve().parents[2] / "guestagent"


def _operation(ops, name):
    [op] = [o for o in ops if o.name == name]
    return op


def test_configured_zero_goal_state_and_memory_check_periods_are_honoured():
    config = conf.parse("Extensions.GoalStatePeriod=0\nDebug.CgroupCheckPeriod=0\n")
    assert ExtHandler(None, config).period == 0
    assert monitor.AgentMemoryCheck(config, cgroups.CGroupConfigurator(config), "/var/lib/waagent").period == 0


def test_configured_zero_etp_collection_period_is_honoured(tmp_root):
    config = conf.parse("Debug.EtpCollectionPeriod=0\n")
    ctx = ThreadContext(config, None, "/var/lib/waagent", threading.Event(), cgroups.CGroupConfigurator(config))
    assert _operation(telemetry.collect_operations(ctx), "ProcessExtensionEvents").period == 0


def _log_ctx(config: conf.Config) -> ThreadContext:
    enabled = SimpleNamespace(enabled=True, using_v2=True, initialize=lambda: None)
    return ThreadContext(config, None, "/var/lib/waagent", threading.Event(), enabled)  # type: ignore[arg-type]


def test_configured_zero_log_collector_delay_and_period_are_honoured(tmp_root):
    ctx = _log_ctx(conf.parse("Logs.CollectPeriod=0\nDebug.LogCollectorInitialDelay=0\n"))
    op = _operation(logcollector.operations(ctx), "CollectLogs")
    assert (op.period, op.initial_delay) == (0, 0)
    defaults = _operation(logcollector.operations(_log_ctx(conf.Config())), "CollectLogs")
    assert (defaults.period, defaults.initial_delay) == (3600, 300)  # the option table's defaults


def _sources():
    """The agent's modules but conf.py (the lab writes waagent.conf text for its VMs: not a reader)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != PACKAGE / "conf.py" and PACKAGE / "lab" not in path.parents:
            yield path, path.read_text(encoding="utf-8")


def test_no_module_reads_an_option_by_its_key():
    keys = "|".join(re.escape(k) for k in sorted(set(conf.BY_KEY) | conf.LEGACY_KEYS, key=len, reverse=True))
    by_key = re.compile(r"""\.(get|switch|integer)\(\s*["'](""" + keys + r""")["']""")
    found = []
    for path, text in _sources():
        for n, line in enumerate(text.splitlines(), 1):
            if by_key.search(line) or re.search(r"def _conf\(|\.values\.get\(|\.values\[", line):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{n}: {line.strip()}")
    assert found == []
    assert not hasattr(conf.Config, "get") and not hasattr(conf.Config, "switch")
