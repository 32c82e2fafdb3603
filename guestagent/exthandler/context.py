"""What the ext-handler child's worker threads share with its main thread: one typed, slotted object made
by the child (guestagent.exthandler.main), so a thread can neither read nor add a field nobody declared."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Optional

from guestagent.conf import Config
from guestagent.exthandler.cgroups import CGroupConfigurator
from guestagent.exthandler.monitor import HealthSignals, ImdsCommonFields
from guestagent.exthandler.telemetry import TelemetryPipeline
from guestagent.protocol.wire import WireProtocol
from guestagent.slotted import slotted


@slotted
@dataclass
class ThreadContext:
    config: Config
    #: None only where the operations run without a fabric (tests, tools): no health signals then.
    protocol: Optional[WireProtocol]
    lib_dir: str
    stop_event: threading.Event
    #: The child's cgroup configurator (the monitor thread initialises it).
    cgroups: CGroupConfigurator
    #: Shared by the telemetry collector and sender threads (made by the first of them).
    telemetry: Optional[TelemetryPipeline] = None
    #: Set by the monitor thread's operations (read by tests and the health report).
    imds_common_fields: Optional[ImdsCommonFields] = None
    health_signals: Optional[HealthSignals] = None
