"""What every check of one doctor run shares: the configuration, the fabric's ports and the clock."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from guestagent.conf import Config
from guestagent.slotted import slotted

WIRE_PORT = 80
HGAP_PORT = 32526
#: The child uploads its status at least once a minute: five minutes without one is stale.
STALE_AFTER = 300.0
REQUEST_TIMEOUT = 5.0


@slotted
@dataclass
class DoctorContext:
    config: Config
    wire_port: int = WIRE_PORT
    hgap_port: int = HGAP_PORT
    timeout: float = REQUEST_TIMEOUT
    stale_after: float = STALE_AFTER
    now: float = field(default_factory=time.time)
    #: Set by the endpoint check for the checks after it: the endpoint the agent recorded, and the
    #: fabric's clock from its Date header.
    endpoint: Optional[str] = None
    fabric_time: Optional[float] = None
