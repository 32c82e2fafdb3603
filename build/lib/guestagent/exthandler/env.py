"""EnvHandler thread: the VM's housekeeping duties (spec 05 §10, 06 §6.2)."""

from __future__ import annotations

from guestagent.periodic import Operation


def operations(ctx) -> list[Operation]:
    return []
