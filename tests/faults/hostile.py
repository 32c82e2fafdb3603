"""Hostile extension packages for the fault matrix, built by hand (no zip tool decides what they hold)."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

MANIFEST = json.dumps([{"name": "Hostile", "version": 1.0, "handlerManifest": {
    "installCommand": "bin/ext.sh install", "uninstallCommand": "bin/ext.sh uninstall",
    "updateCommand": "bin/ext.sh update", "enableCommand": "bin/ext.sh enable", "disableCommand": "bin/ext.sh disable",
    "rebootAfterInstall": False, "reportHeartbeat": False}}]).encode()
SCRIPT = b"#!/bin/sh\ntouch /fault-matrix-executed\nexit 0\n"
S_IFLNK, S_IFREG = 0o120000, 0o100000


class ZipWriter:
    """Members as given: any name, any mode, declared sizes that are true (a bomb is honest)."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.central: list[bytes] = []

    def add(self, name: str, data: bytes, mode: int = S_IFREG | 0o755, *, size: int = -1, crc: int = -1,
            deflated: bool = False) -> None:
        raw = name.encode()
        size = len(data) if size < 0 else size
        crc = zlib.crc32(data) if crc < 0 else crc
        method = 8 if deflated else 0
        offset = self.out.tell()
        self.out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(data), size,
                                   len(raw), 0) + raw + data)
        self.central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 0x031E, 20, 0, method, 0, 0x21, crc,
                                        len(data), size, len(raw), 0, 0, 0, 0, mode << 16, offset) + raw)

    def bytes(self) -> bytes:
        start = self.out.tell()
        for entry in self.central:
            self.out.write(entry)
        self.out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(self.central), len(self.central),
                                   self.out.tell() - start, start, 0))
        return self.out.getvalue()


def _handler() -> ZipWriter:
    z = ZipWriter()
    z.add("HandlerManifest.json", MANIFEST, S_IFREG | 0o644)
    z.add("bin/ext.sh", SCRIPT)
    return z


def zip_slip() -> bytes:
    z = _handler()
    z.add("../../../../tmp/fault-zipslip", SCRIPT)
    z.add("/fault-zipslip-absolute", SCRIPT)
    return z.bytes()


def symlinks() -> bytes:
    z = _handler()
    z.add("bin/passwd", b"/etc/passwd", S_IFLNK | 0o777)
    return z.bytes()


def zip_bomb(members: int = 1100, member_size: int = 1 << 20) -> bytes:
    """~1 MB that declares (truthfully) 1.1 GiB: 1100 members of 1 MiB of zeros."""
    zeros = bytes(member_size)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = comp.compress(zeros) + comp.flush()
    crc = zlib.crc32(zeros)
    z = _handler()
    for i in range(members):
        z.add(f"zeros/{i:04d}", data, S_IFREG | 0o644, size=member_size, crc=crc, deflated=True)
    return z.bytes()


def corrupt() -> bytes:
    good = _handler().bytes()
    return good[:40] + os.urandom(200) + good[240:]


def write_all(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, build in (("zipslip", zip_slip), ("symlink", symlinks), ("bomb", zip_bomb), ("corrupt", corrupt)):
        out[name] = folder / f"{name}.zip"
        out[name].write_bytes(build())
    return out
