"""The ``parse`` group: how long the agent takes to parse a huge extensions goal state (issue 13 D5).

A hostile or broken fabric may send as many plugins as fit under the 10 MB document cap (about 20 000);
parsing must stay linear in their number. No sandbox: the parse runs in this process.
"""

from __future__ import annotations

import json
import time
from typing import Callable

from guestagent.protocol.extconfig import parse_extensions_config, parse_vm_settings

SETTINGS = json.dumps({"runtimeSettings": [{"handlerSettings": {"publicSettings": {"n": 1}}}]})


def extensions_config(n: int) -> str:
    """An ExtensionsConfig with ``n`` single-config plugins, each with its PluginSettings."""
    plugins = "".join(f'<Plugin name="Pub.T{i}" version="1.0.{i % 7}" location="http://h/m{i}" state="enabled" '
                      f'autoUpgrade="false" />' for i in range(n))
    settings = "".join(f'<Plugin name="Pub.T{i}" version="1.0.{i % 7}"><RuntimeSettings seqNo="{i % 5}">{SETTINGS}'
                       f'</RuntimeSettings></Plugin>' for i in range(n))
    return (f'<?xml version="1.0" encoding="utf-8"?><Extensions version="1.0.0.0" goalStateIncarnation="1">'
            f'<Plugins>{plugins}</Plugins><PluginSettings>{settings}</PluginSettings></Extensions>')


def vm_settings(n: int) -> str:
    """A vmSettings document with ``n`` single-config extensions."""
    return json.dumps({"hostGAPluginVersion": "1.0.8.159", "extensionGoalStatesSource": "Fabric",
                       "extensionGoalStates": [
                           {"name": f"Pub.T{i}", "version": f"1.0.{i % 7}", "location": f"http://h/m{i}",
                            "state": "enabled", "isMultiConfig": False, "settingsSeqNo": i % 5,
                            "settings": [{"publicSettings": '{"n":1}'}]} for i in range(n)]})


def seconds(parse: Callable[[], object], repeat: int = 1) -> float:
    """The best of ``repeat`` CPU-time measurements of ``parse()`` (CPU time: other work on the box
    does not count)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        parse()
        best = min(best, time.process_time() - start)
    return best


def extensions_config_seconds(n: int, repeat: int = 1) -> float:
    doc = extensions_config(n)
    return seconds(lambda: parse_extensions_config(doc, "1"), repeat)


def vm_settings_seconds(n: int, repeat: int = 1) -> float:
    doc = vm_settings(n)
    return seconds(lambda: parse_vm_settings(doc, "1"), repeat)
