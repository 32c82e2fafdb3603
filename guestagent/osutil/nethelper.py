"""Network actions for processes that must stay lean, and the seam shared with in-process netlink.

The ext-handler child lives for days and acts on the network rarely (a hostname publish, restoring
routes after a DHCP client restart): pyroute2 (~24 MB RSS) would stay resident for those few calls. So
the child runs each action in a short-lived interpreter (``python -m guestagent.osutil.network``) through
the one command runner, which exits when the action is done. The daemon before Ready, which already
holds pyroute2, uses :class:`guestagent.osutil.network.Direct` instead: same :class:`NetOps` seam.
"""

from __future__ import annotations

import json
import sys
from typing import Optional, Protocol, Sequence

from guestagent.errors import NetworkError
from guestagent.osutil import system

RouteSpec = tuple[str, int, str]  # (network, prefix, gateway)
HELPER_TIMEOUT = 60.0


class NetOps(Protocol):
    """The network actions code shared by the daemon and the child needs."""

    def interface_name(self) -> str:
        """The interface the hostname is published on (upstream's ``get_if_name``)."""
        ...

    def bounce(self, ifname: str) -> None:
        """Link down, then up; raises NetworkError."""
        ...

    def configure_routes(self, gateway: Optional[str], routes: Sequence[RouteSpec]) -> list[str]:
        """Default route (when missing) and option-249 routes; returns the failures."""
        ...


def run_helper(verb: str, *args: str) -> object:
    """Run one verb of guestagent.osutil.network in a fresh interpreter; its JSON answer."""
    argv = [sys.executable, "-m", "guestagent.osutil.network", verb, *args]
    result = system.run(argv, check=False, timeout=HELPER_TIMEOUT, log=False)
    if not result.ok:
        detail = result.stderr.strip()[-500:] or f"exit code {result.returncode}"
        raise NetworkError(f"network helper ({verb}) failed: {detail}")
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise NetworkError(f"network helper ({verb}) gave no answer") from None


class Helper:
    """:class:`NetOps` in a short-lived interpreter per call."""

    def interface_name(self) -> str:
        return str(run_helper("interface-name"))

    def bounce(self, ifname: str) -> None:
        run_helper("bounce", ifname)

    def configure_routes(self, gateway: Optional[str], routes: Sequence[RouteSpec]) -> list[str]:
        answer = run_helper("configure-routes", json.dumps({"gateway": gateway, "routes": [list(r) for r in routes]}))
        return [str(x) for x in answer] if isinstance(answer, list) else []
