"""Where the machine's files are: ``/`` in production, a temporary directory in tests.

Imports only ``os`` so the lean paths (``waagent -version``, the os-release reader, the supervisor)
map paths the same way as :mod:`guestagent.osutil.system` without loading it.
"""

from __future__ import annotations

import os

_root = os.environ.get("GUESTAGENT_ROOT") or "/"


def set_root(root: str) -> None:
    global _root
    _root = os.fspath(root)


def get_root() -> str:
    return _root


def mapped(p: str) -> str:
    """An absolute system path under the current root (relative and already-mapped paths unchanged)."""
    root = _root.rstrip("/")
    if not root or not os.path.isabs(p) or p.startswith(root + "/"):
        return p
    return root + "/" + p.lstrip("/")
