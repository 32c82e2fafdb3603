"""Why a sandbox could not be had: not possible here at all, or it broke while starting or running."""

from __future__ import annotations


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be built here (not root, no namespaces/overlay, no nsenter, missing tools)."""


class SandboxError(RuntimeError):
    """The sandbox failed while starting or running."""
