"""The platform's side of a pre-provisioned VM's claim, inside the lab's sandbox network namespace.

Azure moves a claimed pool VM's network: a media disconnect/connect of its NIC (Running) or a NIC
hot-unplug and hot-attach (Savable). In the sandbox the VM's NIC is the veth ``eth0``; the move is
``eth0`` down and up, or ``eth0`` deleted and created again with the same address, as
:func:`guestagent.lab.namespaces._network` first made it. Runs in the fabric driver (root, inside).
"""

from __future__ import annotations

import shutil
import subprocess
import time

from guestagent.lab.errors import SandboxError

#: The carrier stays off this long, so the agent sees DOWN before UP as on a real vnet switch.
MEDIA_GAP = 0.3
MOVES = {"Running": "link down/up of eth0 (media disconnect/connect)",
         "Savable": "eth0 deleted and added again (NIC hot-unplug/attach)",
         "PreprovisionedOSDisk": "none (the host shuts the VM down)", "Unknown": "none"}


def _ip(lines: list[str]) -> None:
    ip = shutil.which("ip") or "/sbin/ip"
    res = subprocess.run([ip, "-batch", "-"], input="\n".join(lines) + "\n", text=True, capture_output=True,
                         check=False)
    if res.returncode != 0:
        raise SandboxError(f"network move failed: {res.stderr.strip()}")


def move_network(kind: str, mac: str = "00:0d:3a:4e:a1:01") -> None:
    """Do what the platform does to a claimed VM of PPS type ``kind`` (nothing for other types)."""
    if kind == "Running":
        _ip(["link set eth0 down"])
        time.sleep(MEDIA_GAP)
        _ip(["link set eth0 up"])
    elif kind == "Savable":
        _ip(["link del eth0"])
        time.sleep(MEDIA_GAP)
        _ip(["link add eth0 type veth peer name fabric0", f"link set eth0 address {mac}", "link set fabric0 up",
             "link set eth0 up", "addr add 10.0.0.4/24 dev eth0", "route add default via 10.0.0.1 dev eth0"])
