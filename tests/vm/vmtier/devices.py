"""Azure-like devices made on the host without loop devices or mounts: the provisioning DVD, the NTFS
resource disk, and the agent configuration handed to the guest through fw_cfg."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping

SBIN = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def _run(argv: list, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, PATH=SBIN), **kw)
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def make_dvd(out: Path, files: Mapping[str, bytes | str]) -> Path:
    """The provisioning DVD (/dev/sr0 in the guest): UDF + ISO9660 + Joliet, as Azure attaches it."""
    with tempfile.TemporaryDirectory(prefix="vm-dvd-") as src:
        for name, data in files.items():
            Path(src, name).write_bytes(data.encode() if isinstance(data, str) else data)
        _run(["genisoimage", "-quiet", "-o", str(out), "-V", "OVF_ENV", "-J", "-R", "-udf", src])
    return out


def make_resource_disk(out: Path, size_mb: int = 1024) -> Path:
    """A fresh Azure resource disk: MBR, one type-7 partition from sector 2048, NTFS labelled
    "Temporary Storage" holding DATALOSS_WARNING_README.txt. Sparse; built without a loop device."""
    out = Path(out)
    out.unlink(missing_ok=True)
    with open(out, "wb") as f:
        f.truncate(size_mb << 20)
    _run(["sfdisk", "-q", str(out)], input="label: dos\nstart=2048, type=7\n")
    dump = _run(["sfdisk", "-d", str(out)]).stdout
    m = re.search(r"start=\s*(\d+),\s*size=\s*(\d+)", dump)
    start, sectors = int(m.group(1)), int(m.group(2))
    with tempfile.TemporaryDirectory(prefix="vm-res-") as tmp:
        part = Path(tmp, "part.img")
        with open(part, "wb") as f:
            f.truncate(sectors * 512)
        _run(["mkfs.ntfs", "-q", "-F", "-Q", "-s", "512", "-p", str(start), "-H", "255", "-S", "63",
              "-L", "Temporary Storage", str(part)])
        warn = Path(tmp, "warning.txt")
        warn.write_text("WARNING: THIS IS A TEMPORARY DISK.\n\nAny data stored on this drive is SUBJECT TO LOSS "
                        "and THERE IS NO WAY TO RECOVER IT.\n")
        _run(["ntfscp", "-q", str(part), str(warn), "DATALOSS_WARNING_README.txt"])
        _run(["dd", f"if={part}", f"of={out}", "bs=1M", f"seek={start * 512}", "oflag=seek_bytes",
              "conv=notrunc,sparse", "status=none"])
    return out


def waagent_conf(base_text: str, overrides: Mapping[str, str]) -> str:
    """The project's waagent.conf with some keys set (replaced in place, appended when absent)."""
    lines = base_text.splitlines()
    todo = dict(overrides)
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in todo:
            lines[i] = f"{key}={todo.pop(key)}"
    lines += [f"{k}={v}" for k, v in todo.items()]
    return "\n".join(lines) + "\n"
