"""Handler version numbers (03 §5): parsing, ordering and the prefix match of a requested version.

Below both the manifests and the on-disk state, which each order versions."""

from __future__ import annotations

import re

_COMPONENT = re.compile(r"^(\d+)(?:[-.]?(alpha|beta|rc)\d*)?$", re.IGNORECASE)


def version_parts(text: str) -> tuple:
    """``"1.2.3"`` → ``(1, 2, 3)``; a pre-release suffix (``1.0rc1``) is dropped from the number."""
    parts = []
    for piece in str(text).strip().split("."):
        m = _COMPONENT.match(piece)
        if not m:
            raise ValueError(f"Invalid version: {text!r}")
        parts.append(int(m.group(1)))
    return tuple(parts)


def version_key(text: str) -> tuple:
    """Sort/compare key: trailing zeros removed so ``1.2 == 1.2.0.0``."""
    parts = list(version_parts(text))
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def compare_versions(a: str, b: str) -> int:
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)


def version_matches(requested: str, candidate: str) -> bool:
    """Prefix match: ``1.0`` matches ``1.0.0`` and ``1.0.5.3``; ``2.1.6`` does not match ``2.1.7``."""
    try:
        r, c = version_parts(requested), version_parts(candidate)
    except ValueError:
        return False
    return len(r) <= len(c) and c[:len(r)] == r


def is_version(text: str) -> bool:
    try:
        version_parts(text)
        return True
    except ValueError:
        return False
