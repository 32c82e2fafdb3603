"""The VM tier's host-side library: image cache, devices, QEMU machines, the control channel.

Used by tests/vm (pytest, marker ``vm``) and scripts/vm/*. Nothing here runs inside the guest except
scripts/vm/guest/vmctl-guest, the other end of the control channel.
"""
