"""Daemon step "provisioning" (spec 06 §3 body step 4, spec 05 §3).

First version: the ``Provisioning.Agent=disabled`` path (detect the protocol, write the provisioned
marker, report Ready). The provisioning work extends this module behind the same signature.
"""

from __future__ import annotations

import os

from guestagent import log
from guestagent.osutil import system


def provision(conf):  # -> guestagent.protocol.WireProtocol
    from guestagent.protocol import detect

    lib_dir = conf.get("Lib.Dir")
    protocol = detect(conf, lib_dir)
    marker = os.path.join(lib_dir, "provisioned")
    if not system.exists(marker):
        log.info("Provisioning is disabled (Provisioning.Agent={0}); writing {1}",
                 conf.get("Provisioning.Agent"), marker)
        system.write_file(marker, "", mode=0o644)
    protocol.report_ready()
    log.info("Provisioning complete")
    return protocol
