"""The one atomic file writer: a temporary file beside the target, renamed over it when complete.

A reader (or a crash at any instant) sees the old content or the new, never a part. Imports only
``os`` (and ``io``, which every interpreter has loaded at start): the lean supervisor uses it too
(tests/unit/test_daemon_lean_supervisor.py).
"""

from __future__ import annotations

import io
import os


class Replacing:
    """``with Replacing(path, mode) as f:`` — ``f`` is a binary file in ``path``'s directory with the
    final mode from the start (owner ``uid``/``gid`` when given); on a clean exit it is flushed
    (fsynced with ``fsync``) and renamed over ``path``, on an exception removed. The temporary name
    starts with a dot and ends in ``.tmp``, so directory scanners skip it."""

    def __init__(self, path: str, mode: int = 0o644, *, fsync: bool = False, uid: int = -1, gid: int = -1):
        self.path = os.fspath(path)
        self.mode = mode
        self.fsync = fsync
        self.uid, self.gid = uid, gid
        directory, name = os.path.split(self.path)
        self.directory = directory or "."
        self.tmp = os.path.join(self.directory, f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
        self.file: io.BufferedWriter | None = None

    def __enter__(self) -> io.BufferedWriter:
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, self.mode)
        try:
            os.fchmod(fd, self.mode)  # the umask does not apply to the final file either
            if self.uid != -1 or self.gid != -1:
                os.fchown(fd, self.uid, self.gid)
            self.file = open(fd, "wb")
        except BaseException:
            os.close(fd)
            _unlink(self.tmp)
            raise
        return self.file

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, traceback: object) -> None:
        assert self.file is not None
        try:
            if kind is None:
                self.file.flush()
                if self.fsync:
                    os.fsync(self.file.fileno())
            self.file.close()
            if kind is None:
                os.replace(self.tmp, self.path)
                if self.fsync:
                    fsync_dir(self.directory)
                return
        except BaseException:
            _unlink(self.tmp)
            raise
        _unlink(self.tmp)


def write(path: str, data: bytes, mode: int = 0o644, *, fsync: bool = False, uid: int = -1, gid: int = -1) -> None:
    """Replace ``path`` with ``data`` atomically (see :class:`Replacing`)."""
    with Replacing(path, mode, fsync=fsync, uid=uid, gid=gid) as f:
        f.write(data)


def fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (best effort)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
