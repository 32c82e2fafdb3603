"""Fixtures of the integration tier: the fabric emulator on loopback."""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import pytest

import guestagent.protocol.wire
from guestagent.fabric.scenario import Scenario
from guestagent.fabric.server import Fabric


@pytest.fixture
def fabrics(tmp_path, monkeypatch):
    """Factory: ``fabrics(scenario=None)`` starts a fabric (the default scenario unless given; ephemeral
    loopback ports; its state in ``tmp_path/fabricN``); all are stopped after the test. The WireServer is
    the first channel again: which channel answered last is process-wide state a test before may have
    changed."""
    monkeypatch.setattr(guestagent.protocol.wire, "_direct_is_primary", True)
    with contextlib.ExitStack() as stack:
        started: list[Fabric] = []

        def start(scenario: Optional[Scenario] = None) -> Fabric:
            fab = stack.enter_context(Fabric(scenario, state_dir=tmp_path / f"fabric{len(started)}"))
            started.append(fab)
            return fab

        yield start


@pytest.fixture
def fab(fabrics: Callable[..., Fabric]) -> Fabric:
    """One fabric of the default scenario (see ``fabrics``)."""
    return fabrics()
