"""Hyper-V KVP reports: what the host can read from the guest even when the network is broken.

An extension (upstream waagent writes no KVP); the format is cloud-init's and azure-init's, so the
platform reads ours the same way. The pool file ``/var/lib/hyperv/.kvp_pool_1`` (kept by
``hv_kvp_daemon``) is a sequence of records: a 512-byte key and a 2048-byte value, UTF-8, NUL-padded.
Azure reads at most 1024 bytes of a value, so longer values are cut to 1023. Records are appended
under an exclusive ``flock``; a pool file older than the boot holds the previous boot's records and is
truncated once before the first write. The provisioning report is the key ``PROVISIONING_REPORT`` with
``key=value`` fields joined by ``|`` (csv quoting with ``'``): result, reason (failures), agent, vm_id,
timestamp, documentation_url (failures).

Everything here is best effort: a missing ``/var/lib/hyperv`` (no KVP daemon: nobody would read the
file) means no report, and no error ever reaches the caller.
"""

from __future__ import annotations

import csv
import fcntl
import io
import os
import time
from datetime import datetime, timezone
from typing import Optional

from guestagent import log
from guestagent.osutil import system

POOL_FILE = "/var/lib/hyperv/.kvp_pool_1"
KEY_SIZE = 512
VALUE_SIZE = 2048
RECORD_SIZE = KEY_SIZE + VALUE_SIZE
AZURE_MAX_VALUE = 1024
REPORT_KEY = "PROVISIONING_REPORT"
DOCUMENTATION_URL = "https://aka.ms/linuxprovisioningerror"


def encode_record(key: str, value: str) -> bytes:
    """One record; the value cut to what Azure reads (1023 bytes, whole characters), the key to its field."""
    k = key.encode("utf-8")[:KEY_SIZE].decode("utf-8", "ignore").encode("utf-8")
    v = value.encode("utf-8")[: AZURE_MAX_VALUE - 1].decode("utf-8", "ignore").encode("utf-8")
    return k.ljust(KEY_SIZE, b"\0") + v.ljust(VALUE_SIZE, b"\0")


def decode_records(data: bytes) -> list[tuple[str, str]]:
    """Every whole record of a pool file's bytes, as (key, value)."""
    out = []
    for i in range(0, len(data) - RECORD_SIZE + 1, RECORD_SIZE):
        rec = data[i: i + RECORD_SIZE]
        out.append((rec[:KEY_SIZE].rstrip(b"\0").decode("utf-8", "replace"),
                    rec[KEY_SIZE:].rstrip(b"\0").decode("utf-8", "replace")))
    return out


def read_pool(path: str = POOL_FILE) -> list[tuple[str, str]]:
    try:
        return decode_records(system.path(path).read_bytes())
    except OSError:
        return []


def encode_report(fields: list[str]) -> str:
    """``a=1|b=2``: cloud-init's encoding (csv, ``|`` delimiter, ``'`` quote where needed)."""
    buf = io.StringIO()
    csv.writer(buf, delimiter="|", quotechar="'", quoting=csv.QUOTE_MINIMAL).writerow(fields)
    return buf.getvalue().rstrip("\r\n")


def provisioning_report(agent: str, vm_id: str, reason: Optional[str] = None,
                        now: Optional[datetime] = None) -> str:
    """The PROVISIONING_REPORT value: success without ``reason``, error with it."""
    stamp = (now or datetime.now(timezone.utc)).isoformat()
    if reason is None:
        return encode_report(["result=success", f"agent={agent}", f"timestamp={stamp}", f"vm_id={vm_id}"])
    return encode_report(["result=error", f"reason={reason}", f"agent={agent}", f"vm_id={vm_id}",
                          f"timestamp={stamp}", f"documentation_url={DOCUMENTATION_URL}"])


def _boot_time() -> Optional[float]:
    """None when the uptime is unknown: then nothing is truncated (losing records is worse)."""
    try:
        return time.time() - float((system.read_text("/proc/uptime", default="") or "").split()[0])
    except (IndexError, ValueError):
        return None


class KvpPool:
    """Appends records to one pool file; truncates it first (once) when it predates the boot."""

    def __init__(self, path: str = POOL_FILE):
        self.path = path
        self._checked = False

    def _truncate_if_stale(self) -> None:
        if self._checked:
            return
        self._checked = True
        target = system.path(self.path)
        boot = _boot_time()
        try:
            if boot is not None and target.stat().st_mtime < boot:
                with open(target, "wb"):
                    pass
        except FileNotFoundError:
            pass

    def write(self, key: str, value: str) -> bool:
        """Append one record; False (logged) when the file cannot be written. Never raises."""
        target = system.path(self.path)
        try:
            if not target.parent.is_dir():
                log.info("KVP: {0} does not exist (no KVP daemon); {1} not written", target.parent, key)
                return False
            self._truncate_if_stale()
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            with os.fdopen(fd, "ab") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                f.write(encode_record(key, value))
                f.flush()
                fcntl.flock(f, fcntl.LOCK_UN)
            return True
        except (OSError, ValueError) as e:
            log.warn("KVP: could not write {0} to {1}: {2}", key, self.path, e)
            return False


def report_provisioning(agent: str, vm_id: str, reason: Optional[str] = None, path: str = POOL_FILE) -> bool:
    """Write the provisioning report (best effort: logs, never raises)."""
    try:
        report = provisioning_report(agent, vm_id, reason)
    except (ValueError, csv.Error) as e:
        log.warn("KVP: could not encode the provisioning report: {0}", e)
        return False
    return KvpPool(path).write(REPORT_KEY, report)
