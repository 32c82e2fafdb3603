"""The one boundary to the operating system: paths, atomic files and external commands.

Every path the agent touches goes through :func:`path`, which maps an absolute path under the
current root (``/`` in production; a temporary directory in integration tests). Every external
command goes through :func:`run`: argv list, no shell, timeout, size-capped captured output and
redaction of secrets before anything reaches a log or an exception.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from guestagent import log as agent_log
from guestagent.errors import CommandError
from guestagent.osutil import atomic
from guestagent.osutil import root as _rootdir
from guestagent.version import AGENT_ENV_MARKER

PathLike = Union[str, "os.PathLike[str]"]

#: Output kept per stream of a command (bytes); the rest is dropped with a marker.
OUTPUT_CAP = 64 * 1024
DEFAULT_TIMEOUT = 300.0

def set_root(root: PathLike) -> None:
    """Point every later path lookup at ``root`` (tests use a temporary directory)."""
    _rootdir.set_root(os.fspath(root))


def get_root() -> Path:
    return Path(_rootdir.get_root())


def path(p: PathLike) -> Path:
    """Map an absolute system path under the current root."""
    return Path(_rootdir.mapped(os.fspath(p)))


def read_text(p: PathLike, default: Optional[str] = None, errors: str = "strict") -> Optional[str]:
    try:
        return path(p).read_text(encoding="utf-8", errors=errors)
    except FileNotFoundError:
        if default is not None:
            return default
        raise


def read_bytes(p: PathLike) -> bytes:
    return path(p).read_bytes()


def exists(p: PathLike) -> bool:
    return path(p).exists()


def mkdir(p: PathLike, mode: int = 0o755, owner: Optional[str] = None) -> Path:
    target = path(p)
    if not target.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, mode)
        if owner is not None:
            shutil.chown(target, user=owner)
    return target


def write_file(p: PathLike, data: Union[str, bytes], mode: int = 0o644, fsync: bool = True) -> Path:
    """Write a file atomically (:mod:`guestagent.osutil.atomic`) under the root, making its directory;
    with ``fsync`` the content and the rename are durable before this returns."""
    target = path(p)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic.write(str(target), data.encode("utf-8") if isinstance(data, str) else data, mode, fsync=fsync)
    return target


def append_file(p: PathLike, data: str) -> None:
    with open(path(p), "a", encoding="utf-8") as f:
        f.write(data)


def remove(p: PathLike) -> bool:
    """Remove a file or a tree; True if something was removed."""
    target = path(p)
    try:
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
        return True
    except FileNotFoundError:
        return False


def which(name: str) -> Optional[str]:
    return shutil.which(name)


@dataclass
class CommandResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def redact(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "*" * 8)
    return text


def _cap(raw: bytes, cap: int) -> str:
    text = raw.decode("utf-8", errors="replace")
    if len(raw) > cap:
        text = text[:cap] + f"\n[... {len(raw) - cap} bytes truncated]"
    return text


def run(argv: Sequence[str], *, timeout: Optional[float] = DEFAULT_TIMEOUT, input: Union[str, bytes, None] = None,
        check: bool = True, secrets: Iterable[str] = (), env: Optional[Mapping[str, str]] = None,
        cwd: Optional[PathLike] = None, output_cap: int = OUTPUT_CAP, log: bool = True) -> CommandResult:
    """Run a command without a shell. ``secrets`` (e.g. a password passed on stdin or argv) are
    replaced in every captured/logged text. On timeout the whole process tree is killed."""
    argv = [os.fspath(a) for a in argv]
    secrets = [s for s in secrets if s]
    shown = redact(" ".join(argv), secrets)
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault(*AGENT_ENV_MARKER)
    data = input.encode("utf-8") if isinstance(input, str) else input
    start = time.monotonic()
    if log:
        agent_log.verbose("Run command: {0}", shown)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env,
                                cwd=os.fspath(cwd) if cwd else None, start_new_session=True)
    except OSError as e:
        raise CommandError(argv[:1], None, reason=redact(str(e), secrets))
    timed_out = False
    try:
        out, err = proc.communicate(data, timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_tree(proc)
        out, err = proc.communicate()
    result = CommandResult(argv=argv, returncode=proc.returncode, stdout=redact(_cap(out, output_cap), secrets),
                           stderr=redact(_cap(err, output_cap), secrets), duration=time.monotonic() - start,
                           timed_out=timed_out)
    if check and not result.ok:
        reason = f"timed out after {timeout} s" if timed_out else ""
        raise CommandError([redact(a, secrets) for a in argv], result.returncode, result.stdout,
                           result.stderr, reason=reason)
    return result


def _kill_tree(proc: subprocess.Popen) -> None:
    """A timed-out command: its whole process tree goes, also what left its process group."""
    from guestagent.osutil import processes  # psutil only when a command times out

    processes.kill_tree(proc.pid)


def wait_exit(proc: subprocess.Popen, timeout: Optional[float]) -> bool:
    """Wait for ``proc`` to exit; False when ``timeout`` passed first.

    A pidfd wakes us the moment the process exits, without polling: ``Popen.wait(timeout)`` sleeps in
    steps of up to 50 ms, which delays every extension command's result and costs wake-ups."""
    if timeout is None:
        proc.wait()
        return True
    pidfd_open = getattr(os, "pidfd_open", None)
    fd = None
    if pidfd_open is not None and proc.returncode is None:
        try:
            fd = pidfd_open(proc.pid)
        except OSError:
            fd = None
    if fd is None:
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([fd], [], [], max(timeout, 0))
    finally:
        os.close(fd)
    if not ready:
        return False
    proc.wait()
    return True


def spawn(argv: Sequence[str], *, new_session: bool = True, env: Optional[Mapping[str, str]] = None) -> int:
    """Start a background process that outlives the caller (``waagent -start``): no shell, stdin,
    stdout and stderr on /dev/null, its own session; returns its pid without waiting."""
    argv = [os.fspath(a) for a in argv]
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=None if env is None else dict(env),
                                start_new_session=new_session, close_fds=True)
    except OSError as e:
        raise CommandError(argv[:1], None, reason=str(e))
    return proc.pid


def run_to_files(argv: Sequence[str], stdout: Any, stderr: Any, *, timeout: Optional[float] = DEFAULT_TIMEOUT,
                 env: Optional[Mapping[str, str]] = None, cwd: Optional[PathLike] = None) -> CommandResult:
    """Run a command whose stdout/stderr go to the given open files (not pipes), stdin /dev/null, in its own
    session. Its exit is noticed as it happens; a background child it leaves behind keeps running and cannot
    block us (extension handlers rely on that). On timeout the whole process tree is killed.
    The returned CommandResult has empty stdout/stderr: the caller reads its files. It carries the agent's
    process marker, as every command the agent runs (a later ext-handler finds what a killed one left)."""
    argv = [os.fspath(a) for a in argv]
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault(*AGENT_ENV_MARKER)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                env=child_env, cwd=os.fspath(cwd) if cwd else None,
                                start_new_session=True, close_fds=True)
    except OSError as e:
        raise CommandError(argv[:1], None, reason=str(e))
    timed_out = not wait_exit(proc, timeout)
    if timed_out:
        _kill_tree(proc)
        proc.wait()
    return CommandResult(argv=argv, returncode=proc.returncode, stdout="", stderr="",
                         duration=time.monotonic() - start, timed_out=timed_out)
