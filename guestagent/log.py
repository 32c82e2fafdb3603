"""The agent log: upstream's line format, appenders and one redaction filter.

Line format (spec 06 §8.1)::

    2025-06-11T21:32:34.123456Z INFO ExtHandler ExtHandler Fetched a new incarnation ...

``<timestamp> <LEVEL> <thread name> [<prefix> ]<message>``. Every message passes :func:`redact`
before it reaches any appender, so no appender can leak a password, a protected setting, a private
key or a SAS signature.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from typing import Any, Optional

from guestagent.timestamps import utc_precise

VERBOSE, INFO, WARNING, ERROR = 0, 1, 2, 3
LEVEL_NAMES = {VERBOSE: "VERBOSE", INFO: "INFO", WARNING: "WARNING", ERROR: "ERROR"}

LOG_FILE = "/var/log/waagent.log"
CONSOLE = "/dev/console"

_SAS_URL = re.compile(r"(https?://[^\s?\"'<>]+\?)[^\s\"'<>]*\bsig=[^\s\"'<>]*", re.IGNORECASE)
_SAS_SV = re.compile(r"(https?://[^\s?\"'<>]+\?)sv=[^\s\"'<>]*", re.IGNORECASE)
_SIG = re.compile(r"\b(sig=)[^&\s\"'<>]+", re.IGNORECASE)
_PEM_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|$)", re.DOTALL)
_XML_PASSWORD = re.compile(r"(<(?:[\w]+:)?(?:UserPassword|Password)>)(.*?)(</(?:[\w]+:)?(?:UserPassword|Password)>)",
                           re.DOTALL | re.IGNORECASE)
# The value (a string or a nested object) is found by _protected_value_end: a regex cannot balance braces.
_JSON_PROTECTED = re.compile(r'(\\?"protectedSettings\\?"\s*:\s*)(\\?"|\{)')
_JSON_PASSWORD = re.compile(r"(\"(?:password|adminPassword|userPassword|commandToExecute_protected)\"\s*:\s*)"
                            r"\"(?:[^\"\\]|\\.)*\"", re.IGNORECASE)

_secrets: set[str] = set()
_lock = threading.RLock()


def register_secret(value: Optional[str]) -> None:
    """Add a literal value (a password, a decrypted protected setting) that must never be logged."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def _protected_value_end(text: str, opener: str, i: int, escaped: bool) -> int:
    """Index just past the JSON value that starts at ``i`` (after ``opener``); the end of the text if
    the value is unterminated, so a truncated secret is redacted to the end rather than leaked."""
    if opener == '\\"':
        end = text.find('\\"', i)
        return len(text) if end < 0 else end + 2
    depth, in_str, esc = (1, False, False) if opener == "{" else (0, True, False)
    while i < len(text):
        c = text[i]
        i += 1
        if in_str and not escaped:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
                if depth == 0:
                    return i
        elif c == '"' and not escaped:
            in_str = True
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
    return len(text)


def _redact_protected(text: str) -> str:
    """``"protectedSettings": <string or object>`` → ``"protectedSettings": "*<redacted>*"``, also when
    the JSON is itself escaped inside a string (``\\"protectedSettings\\": ...``)."""
    out, pos = [], 0
    while True:
        m = _JSON_PROTECTED.search(text, pos)
        if m is None:
            break
        escaped = m.group(1).startswith("\\")
        end = _protected_value_end(text, m.group(2), m.end(2), escaped)
        quote = '\\"' if escaped else '"'
        out.append(text[pos:m.end(1)] + quote + "*<redacted>*" + quote)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def clear_secrets() -> None:
    """Forget registered secrets (tests: one test's secrets must not change another's output)."""
    with _lock:
        _secrets.clear()


def redact(text: str) -> str:
    text = _SAS_URL.sub(r"\1<redacted>", text)
    text = _SAS_SV.sub(r"\1<redacted>", text)
    text = _SIG.sub(r"\1<redacted>", text)
    text = _PEM_KEY.sub("<redacted private key>", text)
    text = _XML_PASSWORD.sub(r"\1*<redacted>*\3", text)
    text = _redact_protected(text)
    text = _JSON_PASSWORD.sub(r'\1"*<redacted>*"', text)
    if _secrets:
        with _lock:
            for s in sorted(_secrets, key=len, reverse=True):
                if s in text:
                    text = text.replace(s, "*<redacted>*")
    return text


class Appender:
    def __init__(self, level: int):
        self.level = level

    def write(self, line: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class StreamAppender(Appender):
    def __init__(self, level: int, stream: Any = None):
        super().__init__(level)
        self.stream = stream

    def write(self, line: str) -> None:
        stream = self.stream or sys.stdout
        try:
            stream.write(line)
            stream.flush()
        except (OSError, ValueError):
            pass


class FileAppender(Appender):
    """Opens the file in append mode for every line (rotation friendly, as upstream)."""

    def __init__(self, level: int, path: str):
        super().__init__(level)
        self.path = path

    def write(self, line: str) -> None:
        try:
            with open(self.path, "a", encoding="ascii", errors="backslashreplace") as f:
                f.write(line)
        except OSError:
            pass


_appenders: dict[str, Appender] = {}
_prefix: Optional[str] = None
_periodic: dict[str, float] = {}


def add_appender(name: str, appender: Appender) -> None:
    with _lock:
        _appenders[name] = appender


def file_appender() -> Optional[FileAppender]:
    """The agent log file appender, if any (a helper process writes its lines to the same file)."""
    with _lock:
        a = _appenders.get("file")
    return a if isinstance(a, FileAppender) else None


def remove_appender(name: str) -> None:
    with _lock:
        _appenders.pop(name, None)


def reset() -> None:
    """Drop every appender and prefix (tests, and a re-exec'd process)."""
    global _prefix
    with _lock:
        _appenders.clear()
        _periodic.clear()
        _prefix = None


def reset_periodic() -> None:
    with _lock:
        _periodic.clear()


def set_prefix(prefix: Optional[str]) -> None:
    global _prefix
    _prefix = prefix


def get_prefix() -> Optional[str]:
    return _prefix


def format_line(level: int, message: str, prefix: Optional[str] = None, thread: Optional[str] = None,
                now: Optional[float] = None) -> str:
    thread = thread or threading.current_thread().name
    if thread == "MainThread":
        thread = _prefix or "MainThread"
    prefix = prefix if prefix is not None else _prefix
    head = f"{utc_precise(now)} {LEVEL_NAMES[level]} {thread} "
    if prefix:
        head += f"{prefix} "
    text = redact(message).encode("ascii", errors="backslashreplace").decode("ascii")
    return f"{head}{text}\n"


def log(level: int, fmt: str, *args: Any, prefix: Optional[str] = None) -> None:
    with _lock:
        targets = [a for a in _appenders.values() if level >= a.level]
    if not targets:
        return
    try:
        message = fmt.format(*args) if args else fmt
    except (IndexError, KeyError, ValueError):
        message = f"{fmt} {args!r}"
    line = format_line(level, message, prefix=prefix)
    for a in targets:
        a.write(line)


def verbose(fmt: str, *args: Any) -> None:
    log(VERBOSE, fmt, *args)


def info(fmt: str, *args: Any) -> None:
    log(INFO, fmt, *args)


def warn(fmt: str, *args: Any) -> None:
    log(WARNING, fmt, *args)


warning = warn


def error(fmt: str, *args: Any) -> None:
    log(ERROR, fmt, *args)


def periodic(period: float, level: int, fmt: str, *args: Any) -> None:
    """Log ``fmt`` at most once per ``period`` seconds (keyed by the format string, as upstream)."""
    now = time.monotonic()
    with _lock:
        last = _periodic.get(fmt)
        if last is not None and now - last < period:
            return
        _periodic[fmt] = now
    log(level, fmt, *args)


class PrefixLogger:
    """A logger whose prefix replaces the process prefix, e.g. ``[Handler-1.0]``."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def verbose(self, fmt: str, *args: Any) -> None:
        log(VERBOSE, fmt, *args, prefix=self.prefix)

    def info(self, fmt: str, *args: Any) -> None:
        log(INFO, fmt, *args, prefix=self.prefix)

    def warn(self, fmt: str, *args: Any) -> None:
        log(WARNING, fmt, *args, prefix=self.prefix)

    def error(self, fmt: str, *args: Any) -> None:
        log(ERROR, fmt, *args, prefix=self.prefix)


def setup(verbose_stdout: bool = False, log_file: Optional[str] = LOG_FILE, file_verbose: bool = False,
          console: bool = False) -> None:
    """The common appenders of every command (spec 06 §2)."""
    add_appender("stdout", StreamAppender(VERBOSE if verbose_stdout else INFO))
    if log_file:
        add_appender("file", FileAppender(VERBOSE if (verbose_stdout or file_verbose) else INFO, log_file))
    if console:
        add_appender("console", FileAppender(INFO, CONSOLE))
