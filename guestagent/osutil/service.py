"""``waagent -register-service``: make the agent's unit start at boot, then restart it.

Upstream prints three lines and runs its OS-util's register, stop and start; what each runs depends on the
distribution (:class:`guestagent.osutil.distros.Distro`): ``systemctl enable waagent`` on the RHEL family,
``systemctl unmask walinuxagent`` on Ubuntu ≥ 16.04, nothing on Debian (its package enables the unit).
Failures are not errors (upstream runs them with ``chk_err=False``): the command exits 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from guestagent import log
from guestagent.errors import CommandError
from guestagent.osutil import distros, system
from guestagent.version import AGENT_NAME

if TYPE_CHECKING:
    from guestagent.cli import CliArgs
    from guestagent.conf import Config


def _run(argv: tuple[str, ...]) -> None:
    if not argv:
        return
    try:
        res = system.run(list(argv), timeout=120, check=False)
    except CommandError as e:
        log.warn("{0} failed: {1}", " ".join(argv), e)
        return
    if res.returncode != 0:
        log.warn("{0} exited with {1}", " ".join(argv), res.returncode)


def register_service(args: CliArgs, config: Config) -> int:
    distro = distros.detect()
    print(f"Register {AGENT_NAME} service")
    _run(distro.register_service)
    print(f"Stop {AGENT_NAME} service")
    _run(distro.stop_service)
    print(f"Start {AGENT_NAME} service")
    _run(distro.start_service)
    return 0
