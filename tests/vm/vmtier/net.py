"""The guest's view of the platform: fixed addresses that QEMU forwards to the fabric on host loopback.

slirp only forwards (guestfwd) to addresses inside its own subnet, and that subnet must be /4 to /32.
168.0.0.0/7 is the one subnet holding both 168.63.129.16 (WireServer :80, HostGAPlugin :32526) and
169.254.169.254 (IMDS), so the guest LAN is that (the guest gets 168.63.129.100 by DHCP, gateway .1).
"""

from __future__ import annotations

WIRESERVER = "168.63.129.16"
HGAP_PORT = 32526
IMDS = "169.254.169.254"
NET = "168.0.0.0/7"
GATEWAY = "168.63.129.1"
DHCP_START = "168.63.129.100"
DNS = "168.63.129.3"
GUEST_MAC = "00:0d:3a:12:34:56"
ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"   # the chassis asset tag every Azure VM has


def free_port() -> int:
    """An unused TCP port on host loopback (for hostfwd: ssh into the guest)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
