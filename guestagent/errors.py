"""The agent's error classes, named as upstream so log lines read the same.

Every message starts with ``[<ClassName>] `` and an inner error is appended as
``\\nInner error: <inner>`` (spec 01 §14).
"""

from __future__ import annotations

import errno
from typing import Optional

#: errno values of a full file system (or an exhausted quota): reported as "disk full" and retried.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class AgentError(Exception):
    def __init__(self, msg: str = "", inner: Optional[BaseException] = None):
        self.msg = msg
        self.inner = inner
        text = f"[{type(self).__name__}] {msg}"
        if inner is not None:
            text += f"\nInner error: {inner}"
        super().__init__(text)


class ConfigError(AgentError):
    pass


class ProtocolError(AgentError):
    pass


class ProtocolNotFoundError(ProtocolError):
    pass


class HttpError(AgentError):
    def __init__(self, msg: str = "", inner: Optional[BaseException] = None, status: Optional[int] = None):
        self.status = status
        super().__init__(msg, inner)


class ResourceGoneError(HttpError):
    def __init__(self, msg: str = "Resource is gone", inner: Optional[BaseException] = None):
        super().__init__(msg, inner, status=410)


class InvalidContainerError(HttpError):
    pass


class DhcpError(AgentError):
    pass


class CryptError(AgentError):
    pass


class OSUtilError(AgentError):
    pass


class NetworkError(OSUtilError):
    """A netlink request the kernel refused (no such interface, route exists, not permitted...)."""


class CommandError(OSUtilError):
    """An external command failed; carries the exit code and (redacted) output."""

    def __init__(self, argv: list[str], returncode: Optional[int], stdout: str = "", stderr: str = "",
                 reason: str = ""):
        self.argv = argv
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        what = reason or f"exit code {returncode}"
        super().__init__(f"Command {argv[0] if argv else '?'} failed: {what}; stderr: {stderr.strip()[:512]}")


class PathEscapeError(OSUtilError):
    """A path built from fabric data does not resolve inside the folder it belongs to."""


class ProvisionError(AgentError):
    pass


class ResourceDiskError(AgentError):
    pass


class XmlError(AgentError):
    """A document was malformed, hostile (DTD/entities) or too large."""


class ExtensionError(AgentError):
    def __init__(self, msg: str = "", inner: Optional[BaseException] = None, code: int = -1):
        self.code = code
        super().__init__(msg, inner)


class ExtensionsGoalStateError(ExtensionError):
    pass


class ExtensionsConfigError(ExtensionsGoalStateError):
    pass


class VmSettingsParseError(AgentError):
    pass


class VmSettingsNotSupported(TypeError):
    pass


class VmSettingsSupportStopped(VmSettingsNotSupported):
    def __init__(self, timestamp: str = ""):
        self.timestamp = timestamp
        super().__init__(timestamp)


def disk_full(error: Optional[BaseException]) -> bool:
    """Was ``error``, or anything it was raised from or while handling, a full file system? Wrapping
    errors (a PackageError, an ExtensionError raised ``from None``) keep the OSError in their context."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False
