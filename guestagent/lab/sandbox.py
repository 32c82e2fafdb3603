"""A throwaway namespace sandbox that can never change the host: the :class:`Sandbox` API.

How it is built (namespaces, overlay, init) is :mod:`guestagent.lab.namespaces`; its disks and DVDs
(loop devices, file system images) are :mod:`guestagent.lab.loop`. Commands enter with ``nsenter``
into init's namespaces and root, with a clean environment.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from guestagent.lab import loop
from guestagent.lab.errors import SandboxError, SandboxUnavailable
from guestagent.lab.loop import build_image
from guestagent.lab.namespaces import (
    START_TIMEOUT,
    interpreter,
    needed_binds,
    project_root,
    python_paths,
    sweep_stale,
)

__all__ = ["DEFAULT_PATH", "Sandbox", "SandboxError", "SandboxUnavailable", "build_image", "interpreter",
           "needed_binds", "project_root", "sweep_stale"]

PathLike = Union[str, "os.PathLike[str]"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_ENV_MARKER = "AZURE_GUEST_AGENT_PARENT_PROCESS_NAME"


class _SandboxProcess(subprocess.Popen):
    """A process started in the sandbox: signals go to its whole process group (nsenter + command)."""

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass


class Sandbox:
    """See the module docstring; use as a context manager so :meth:`close` always runs."""

    def __init__(self, hostname: str = "sandbox", loopback_addrs: Sequence[str] = ("127.63.129.16", "169.254.169.254"),
                 workdir: Optional[PathLike] = None, *, eth0: bool = True, mac: str = "00:0d:3a:4e:a1:01",
                 size: str = "2g") -> None:
        if os.geteuid() != 0:
            raise SandboxUnavailable("The namespace sandbox needs root (mount, PID and network namespaces, "
                                     "loop devices); run as root or use the unit/integration tiers.")
        if not shutil.which("nsenter"):
            raise SandboxUnavailable("The namespace sandbox needs nsenter (util-linux), which is not installed.")
        self.hostname = hostname
        self.started = time.monotonic()
        self._closed = False
        self._loops: list[tuple[int, int, str]] = []
        base = Path(workdir) if workdir else Path("/tmp")
        base.mkdir(parents=True, exist_ok=True)
        sweep_stale(base)
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cfg = {"parent": os.getpid(), "base": str(base), "hostname": hostname, "addrs": list(loopback_addrs),
               "eth0": eth0, "mac": mac, "size": size, "paths": python_paths()}
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(project_root())] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        self._keeper = subprocess.Popen(
            [interpreter(), "-c", "from guestagent.lab.namespaces import keeper_main; keeper_main()",
             json.dumps(cfg)], stdin=child_sock, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
            close_fds=True)
        child_sock.close()
        self._ctl = parent_sock
        reply = self._recv(START_TIMEOUT)
        if "error" in reply:
            self._keeper.wait(5)
            msg = reply["error"]
            if "Operation not permitted" in msg or "EPERM" in msg:
                raise SandboxUnavailable(f"Namespaces are not permitted here ({msg}).")
            raise SandboxError(f"sandbox could not start: {msg}")
        self.workdir = Path(reply["work"])
        self.init_pid = int(reply["init"])
        self.timens = bool(reply.get("timens"))
        self.keeper_pid = self._keeper.pid
        self.startup_seconds = time.monotonic() - self.started
        self._baseline = self._upper_entries()  # the sandbox's own set-up is not a change

    def _recv(self, timeout: float) -> dict:
        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._ctl], [], [], left)[0]:
                self._kill_keeper()
                raise SandboxError("sandbox did not start in time")
            chunk = self._ctl.recv(4096)
            if not chunk:
                err = self._keeper.stderr.read().decode(errors="replace") if self._keeper.stderr else ""
                self._keeper.wait(5)
                return {"error": err.strip().splitlines()[-1] if err.strip() else "keeper exited"}
            buf += chunk
        return json.loads(buf.decode())

    def _kill_keeper(self) -> None:
        try:
            self._keeper.kill()
            self._keeper.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass

    # -- context manager
    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- entering
    def enter_argv(self, cwd: Optional[PathLike] = None) -> list[str]:
        """The ``nsenter`` prefix that puts a command into the sandbox (namespaces + root)."""
        argv = ["nsenter", f"--target={self.init_pid}", "--mount", "--uts", "--ipc", "--net", "--pid",
                *(["--time"] if self.timens else []), "--root", "--wd"]
        return argv + (["env", f"--chdir={os.fspath(cwd)}"] if cwd else [])

    def env(self, extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
        """The clean environment commands get inside: the project importable, our interpreter first."""
        env = {"PATH": os.path.dirname(interpreter()) + ":" + DEFAULT_PATH, "HOME": "/root", "LANG": "C.UTF-8",
               "TERM": "dumb", "PYTHONPATH": str(project_root()), "PYTHONDONTWRITEBYTECODE": "1"}
        env.update(extra or {})
        return env

    def _argv(self, argv: Sequence[PathLike], env: Optional[Mapping[str, str]], cwd: Optional[PathLike]) -> list[str]:
        # Drop what the command runner adds on the way in (the agent's own process marker) unless the
        # caller asked for it.
        inner = ["env", "-u", AGENT_ENV_MARKER] if not env or AGENT_ENV_MARKER not in env else []
        return self.enter_argv(cwd) + inner + [os.fspath(a) for a in argv]

    def run(self, argv: Sequence[PathLike], *, input: Union[str, bytes, None] = None,
            env: Optional[Mapping[str, str]] = None, timeout: Optional[float] = 60, check: bool = True,
            cwd: Optional[PathLike] = None) -> Any:
        """Run a command inside; returns :class:`guestagent.osutil.system.CommandResult`."""
        from guestagent.osutil import system

        full_env = self.env(env)
        res = system.run(self._argv(argv, env, cwd), input=input, env=full_env, timeout=timeout, check=check,
                         log=False)
        res.argv = [os.fspath(a) for a in argv]
        return res

    def spawn(self, argv: Sequence[PathLike], *, env: Optional[Mapping[str, str]] = None, stdout: Any = None,
              stderr: Any = None, cwd: Optional[PathLike] = None) -> subprocess.Popen:
        """Start a long-running command inside; ``terminate()``/``kill()`` reach the command itself."""
        return _SandboxProcess(self._argv(argv, env, cwd), env=self.env(env), stdin=subprocess.DEVNULL,
                               stdout=stdout, stderr=stderr, start_new_session=True, close_fds=True)

    def python(self, code: str, **kw: Any) -> Any:
        """``python3 -c code`` inside, with the running interpreter and the project importable."""
        return self.run([interpreter(), "-c", code], **kw)

    # -- files
    def host_path(self, p: PathLike) -> Path:
        """Host-side path of ``p`` in the sandbox's view (absolute symlinks inside are not followed)."""
        return Path(f"/proc/{self.init_pid}/root") / os.fspath(p).lstrip("/")

    def read_text(self, p: PathLike) -> str:
        return self.host_path(p).read_text(encoding="utf-8", errors="replace")

    def write_file(self, p: PathLike, data: Union[str, bytes], mode: int = 0o644) -> None:
        target = self.host_path(p)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.sandbox-tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data.encode() if isinstance(data, str) else data)
        finally:
            os.close(fd)
        os.replace(tmp, target)

    def processes(self) -> list[tuple[int, str]]:
        """(pid inside, command line) of every process in the sandbox."""
        out = []
        proc = self.host_path("/proc")
        for d in proc.iterdir():
            if d.name.isdigit():
                try:
                    cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                except OSError:
                    continue
                out.append((int(d.name), cmd))
        return sorted(out)

    # -- devices
    def attach_image(self, image_file: PathLike, *, device: str = "/dev/sr0", readonly: bool = True,
                     offset: int = 0, size: int = 0) -> str:
        """Attach an image file (or bytes [offset, offset+size) of it) to a loop device on the host
        kernel and expose it inside as block device ``device``. Returns the host loop device path."""
        n, fd = loop.attach(Path(image_file).resolve(), readonly=readonly, offset=offset, size=size)
        self._loops.append((n, fd, device))
        try:
            os.set_inheritable(fd, False)
            socket.send_fds(self._ctl, [b"fd"], [fd])  # the keeper holds it too: gone when the sandbox is
            node = self.host_path(device)
            node.parent.mkdir(parents=True, exist_ok=True)
            os.mknod(node, stat.S_IFBLK | 0o660, os.makedev(*loop.device_numbers(n)))
        except BaseException:
            self._detach_loops()
            raise
        return f"/dev/loop{n}"

    def _detach_loops(self) -> None:
        loops, self._loops = self._loops, []
        for _n, fd, _ in loops:
            loop.release(fd)
        deadline = time.monotonic() + 3
        while any(loop.is_bound(n) for n, _, _ in loops) and time.monotonic() < deadline:
            time.sleep(0.02)

    # -- what changed
    def _upper_entries(self) -> dict[str, tuple[str, os.stat_result]]:
        upper = Path(f"/proc/{self.keeper_pid}/root{self.workdir}/upper")
        out = {}
        for dirpath, dirnames, filenames in os.walk(upper):
            rel = "/" + os.path.relpath(dirpath, upper).lstrip(".").lstrip("/")
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                out[os.path.join(rel, name)] = (p, os.lstat(p))
        return out

    def change_set(self) -> dict[str, str]:
        """``{path: "added" | "modified" | "deleted"}`` for the overlay (not /tmp, /run, /dev)."""
        out: dict[str, str] = {}
        for inside, (_p, st) in self._upper_entries().items():
            base = self._baseline.get(inside)
            if base is not None and (base[1].st_mtime_ns, base[1].st_ino) == (st.st_mtime_ns, st.st_ino):
                continue
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                out[inside] = "deleted"
            elif not os.path.lexists(inside):
                out[inside] = "added"
            elif not stat.S_ISDIR(st.st_mode):
                out[inside] = "modified"
        return dict(sorted(out.items()))

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """``{path inside: (mtime_ns, inode)}`` of every entry of the overlay's upper layer (what the sandbox
        wrote so far); :meth:`changed_since` compares a later state with it."""
        return {inside: (st.st_mtime_ns, st.st_ino) for inside, (_p, st) in self._upper_entries().items()}

    def changed_since(self, before: Mapping[str, tuple[int, int]]) -> list[str]:
        """Paths written (created, modified, deleted) since ``before``; a directory only when it is new."""
        out = []
        for inside, (_p, st) in self._upper_entries().items():
            old = before.get(inside)
            if old == (st.st_mtime_ns, st.st_ino) or (old is not None and stat.S_ISDIR(st.st_mode)):
                continue
            out.append(inside)
        return sorted(out)

    def changes(self) -> list[str]:
        """Paths created, modified or deleted in the sandbox compared with the host."""
        return list(self.change_set())

    # -- lifetime
    def alive(self) -> bool:
        return not self._closed and self._keeper.poll() is None

    def keep(self) -> None:
        """Let the sandbox outlive this process (``guestagent lab --keep``); stop it with
        ``kill <keeper_pid>``."""
        self._ctl.sendall(b"keep")
        self._recv(5)
        self._closed = True

    def close(self) -> None:
        """Kill every process inside, drop the mounts, detach the loops, delete the work directory."""
        if self._closed:
            return
        self._closed = True
        try:
            os.kill(self.init_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self._keeper.wait(10)
        except subprocess.TimeoutExpired:
            self._kill_keeper()
        self._ctl.close()
        if self._keeper.stderr:
            self._keeper.stderr.close()
        self._detach_loops()
        if self.workdir.exists():  # keeper was killed before it could clean up
            try:
                self.workdir.rmdir()
            except OSError:
                pass
