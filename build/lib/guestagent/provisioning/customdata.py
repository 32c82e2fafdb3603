"""Custom data from ovf-env.xml: saved 0600, optionally decoded and executed (spec 05 §7).

Custom data can hold secrets, so the file is private to root (upstream leaves it world-readable).
"""

from __future__ import annotations

import base64
import binascii
import os
import shlex
import time
from typing import Optional

from guestagent import events, log
from guestagent.errors import CommandError, OSUtilError
from guestagent.osutil import system

CUSTOM_DATA_FILE = "CustomData"


def decode_customdata(data: str) -> str:
    try:
        return base64.b64decode(data, validate=False).decode("utf-8")
    except (binascii.Error, ValueError) as e:
        raise OSUtilError(f"Custom data is not valid base64-encoded UTF-8: {e}")


def save_customdata(customdata: Optional[str], lib_dir: str, decode: bool, execute: bool,
                    timeout: float = 3600) -> Optional[str]:
    """Write ``<lib>/CustomData`` (decoded if asked); run it when Provisioning.ExecuteCustomData=y."""
    if customdata is None:
        return None
    if decode or execute:
        log.info("Decode custom data")
        customdata = decode_customdata(customdata)
    log.info("Save custom data")
    path = os.path.join(lib_dir, CUSTOM_DATA_FILE)
    system.write_file(path, customdata, mode=0o600)
    if execute:
        start = time.time()
        log.info("Execute custom data")
        os.chmod(system.path(path), 0o700)
        try:
            # Through the shell as upstream: a script without a shebang still runs (as sh).
            result = system.run(["/bin/sh", "-c", shlex.quote(str(system.path(path)))], timeout=timeout,
                                check=False)
            if not result.ok:
                log.warn("Custom data exited with {0}", result.returncode)
        except CommandError as e:
            log.warn("Custom data could not be executed: {0}", e)
        events.add_event("CustomData", is_success=True, duration=int(time.time() - start), lib_dir=lib_dir)
    return path
