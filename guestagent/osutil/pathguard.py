"""The second line of defence for paths built from fabric data (issue 13).

Names and versions are validated where the goal state is parsed; every path the extension, status and
provisioning code then builds from them is still checked here, before the write, unpack or exec, to resolve
inside its root (``/var/lib/waagent``, ``/var/log/azure``, a user's home): ``..``, an absolute part, a
symlink anywhere on the way (the root's own symlinks excepted) and prefix tricks (``/var/lib/waagentX``)
are all refused. Resolution is by the osutil root (:func:`system.path`) so tests check the same way.
"""

from __future__ import annotations

import os

from guestagent.errors import PathEscapeError
from guestagent.osutil import system


def _resolved(p: str) -> str:
    return os.path.realpath(system.path(p))


def within(root: str, path: str) -> str:
    """``path`` unchanged when it resolves inside ``root`` (or is ``root``); PathEscapeError otherwise."""
    real_root = _resolved(root)
    real = _resolved(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise PathEscapeError(f"Refusing the path {path!r}: it resolves outside {root}")
    return path


def join(root: str, *parts: str) -> str:
    """``root`` joined with ``parts`` (names from fabric data), checked to stay inside ``root``."""
    return within(root, os.path.join(root, *parts))
