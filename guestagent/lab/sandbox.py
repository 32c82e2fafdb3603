"""A throwaway namespace sandbox that can never change the host.

Layout: a small helper process ("keeper", outside the sandbox's PID namespace) unshares mount, UTS,
IPC, network and PID namespaces, mounts a tmpfs over its private work directory, builds an overlay
whose lower layer is the host's root file system (read-only view, writes land in the tmpfs upper
layer) plus private /dev, /proc, /sys, /run and /tmp, and forks the sandbox's PID 1 ("init"), which
chroots into the overlay and only reaps orphans. Commands enter with ``nsenter`` into init's
namespaces and root.

Why it cannot leak: every mount lives in the private mount namespace only (propagation is made
private first), so it disappears with the last process in it; keeper and init die with their parent
(``PR_SET_PDEATHSIG``), and when init dies the kernel kills every process in the PID namespace; loop
devices are configured with auto-clear, so they detach when the last file descriptor closes. A work
directory left behind by a killed keeper is removed by the next sandbox (its name carries the keeper's
PID).

Only the root file system is seen through the overlay, so the running interpreter and the project
(wherever they live) are bind-mounted read-only when they sit on another mount or under a directory
the sandbox shadows (/tmp, /run, /dev...).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1
# Loop device ioctls (linux/loop.h).
LOOP_SET_FD, LOOP_CLR_FD, LOOP_SET_STATUS64, LOOP_CONFIGURE = 0x4C00, 0x4C01, 0x4C04, 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR = 1, 4

WORKDIR_PREFIX = "guestagent-sandbox-"
#: Directories the sandbox replaces with its own mounts (host content there is not visible).
SHADOWED = ("/dev", "/proc", "/sys", "/run", "/tmp")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
AGENT_ENV_MARKER = "AZURE_GUEST_AGENT_PARENT_PROCESS_NAME"
START_TIMEOUT = 20.0


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot be built here (not root, no namespaces/overlay, no nsenter)."""


class SandboxError(RuntimeError):
    """The sandbox failed while starting or running."""


def project_root() -> Path:
    """The directory that holds the running ``guestagent`` package (checkout or site-packages)."""
    return Path(__file__).resolve().parents[2]


def interpreter() -> str:
    return os.path.realpath(sys.executable)


# --------------------------------------------------------------------------------------------- libc
_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s: Optional[PathLike]) -> Optional[bytes]:
    return None if s is None else os.fsencode(s)


def _mount(src: Optional[str], target: PathLike, fstype: Optional[str], flags: int = 0,
           data: Optional[str] = None) -> None:
    _check(_c().mount(_b(src), _b(target), _b(fstype), flags, _b(data)), f"mount {fstype or src} on {target}")


def _bind_ro(src: str, target: Path) -> None:
    _mount(src, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _pdeathsig() -> None:
    _check(_c().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def _host_mounts() -> list[str]:
    """Mount points of the current mount namespace (from /proc/self/mountinfo)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            raw = line.split(" ")[4]
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def _mount_of(p: str, points: Sequence[str]) -> str:
    best = "/"
    for mp in points:
        if (p == mp or p.startswith(mp.rstrip("/") + "/")) and len(mp) > len(best):
            best = mp
    return best


def needed_binds() -> list[str]:
    """Host directories the sandbox must see (project, interpreter, its libraries) that an overlay of
    the root file system would not show: on another mount, or under a directory the sandbox shadows."""
    wanted = {str(project_root()), os.path.dirname(interpreter()), sys.prefix, sys.base_prefix,
              sys.exec_prefix}
    wanted.update(p for p in sys.path if p and os.path.isdir(p))
    points = _host_mounts()
    out: set[str] = set()
    for p in sorted(wanted):
        p = os.path.realpath(p)
        if not os.path.isdir(p):
            continue
        shadowed = any(p == s or p.startswith(s + "/") for s in SHADOWED)
        if shadowed or _mount_of(p, points) != "/":
            out.add(p)
    # Drop entries already covered by a parent bind.
    return sorted(p for p in out if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in out))


# -------------------------------------------------------------------------------- keeper (stage 1)
def _keeper_main() -> None:
    """Entry point of the keeper process (``python -c`` from :class:`Sandbox`); never returns."""
    cfg = json.loads(sys.argv[1])
    ctl = socket.socket(fileno=0)
    try:
        _pdeathsig()
        if os.getppid() != cfg["parent"]:
            os._exit(1)
        work = Path(cfg["base"]) / f"{WORKDIR_PREFIX}{os.getpid()}"
        work.mkdir(mode=0o700)
    except Exception as e:
        _reply(ctl, {"error": f"{type(e).__name__}: {e}"})
        os._exit(1)
    try:
        init_pid = _build(cfg, work)
    except Exception as e:
        _reply(ctl, {"error": f"{type(e).__name__}: {e}"})
        _keeper_cleanup(work)
        os._exit(1)
    held: list[int] = []

    def watch() -> None:
        os.waitpid(init_pid, 0)
        _keeper_cleanup(work)
        os._exit(0)

    def on_term(_sig: int, _frame: Any) -> None:
        os.kill(init_pid, signal.SIGKILL)

    signal.signal(signal.SIGTERM, on_term)
    threading.Thread(target=watch, daemon=True).start()
    _reply(ctl, {"work": str(work), "init": init_pid})
    kept = False
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(ctl, 4096, 16)
        except OSError:
            msg, fds = b"", []
        held.extend(fds)
        if not msg:
            if not kept:
                os.kill(init_pid, signal.SIGKILL)
            threading.Event().wait()  # the watcher exits the process
        for cmd in msg.decode().split("\n"):
            if cmd == "keep":
                _c().prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)
                kept = True
            elif cmd == "stop":
                os.kill(init_pid, signal.SIGKILL)
        if "keep" in msg.decode():
            _reply(ctl, {"kept": True})


def _reply(ctl: socket.socket, obj: dict) -> None:
    try:
        ctl.sendall((json.dumps(obj) + "\n").encode())
    except OSError:
        pass


def _keeper_cleanup(work: Path) -> None:
    try:
        _c().umount2(_b(work), MNT_DETACH)
        work.rmdir()
    except OSError:
        pass


def _build(cfg: dict, work: Path) -> int:
    """Create the namespaces and the file system view; fork init; return init's PID."""
    binds = needed_binds()  # computed on the host's mount table, before anything changes
    _check(_c().unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET), "unshare")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    host = cfg["hostname"].encode()
    _check(_c().sethostname(host, len(host)), "sethostname")
    _network(cfg)
    _mount("sandbox", work, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0700,size={cfg['size']}")
    upper, ovl_work, root = work / "upper", work / "work", work / "merged"
    for d in (upper, ovl_work, root):
        d.mkdir()
    _mount("overlay", root, "overlay", 0, f"lowerdir=/,upperdir={upper},workdir={ovl_work}")
    _make_dev(root / "dev")
    _mount("tmpfs", root / "run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    (root / "run" / "lock").mkdir(mode=0o1777)
    _mount("tmpfs", root / "tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    _mount("sysfs", root / "sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _no_dns(root / "etc" / "resolv.conf")
    for src in binds:
        target = root / src.lstrip("/")
        target.mkdir(parents=True, exist_ok=True)
        _bind_ro(src, target)
    # Last: the first process forked after this becomes PID 1 (no helper command may run in between).
    own_pid_ns = os.open("/proc/self/ns/pid", os.O_RDONLY)
    _check(_c().unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # init: PID 1 of the new PID namespace
        try:
            os.close(r)
            _init_main(root, w)
        finally:
            os._exit(1)
    os.close(w)
    # Back to our own PID namespace for children: the keeper needs threads (CLONE_THREAD is refused
    # while pid_ns_for_children differs from the active one).
    _check(_c().setns(own_pid_ns, CLONE_NEWPID), "setns(pid)")
    os.close(own_pid_ns)
    ready = select.select([r], [], [], START_TIMEOUT)[0] and os.read(r, 64)
    os.close(r)
    if ready != b"ok":
        os.kill(pid, signal.SIGKILL)
        raise SandboxError(f"sandbox init failed: {ready!r}")
    return pid


def _network(cfg: dict) -> None:
    """Loopback up with the extra addresses; with ``eth0`` a veth pair inside the namespace whose
    default route leads nowhere (the agent sees a NIC with a MAC; nothing leaves the namespace)."""
    lines = ["link set lo up"] + [f"addr add {a}/32 dev lo" for a in cfg["addrs"]]
    if cfg["eth0"]:
        lines += ["link add eth0 type veth peer name fabric0",
                  f"link set eth0 address {cfg['mac']}", "link set eth0 up", "link set fabric0 up",
                  "addr add 10.0.0.4/24 dev eth0", "route add default via 10.0.0.1 dev eth0"]
    ip = shutil.which("ip") or "/sbin/ip"
    res = subprocess.run([ip, "-batch", "-"], input="\n".join(lines) + "\n", text=True, capture_output=True,
                         check=False)
    if res.returncode != 0:
        raise SandboxError(f"network set-up failed: {res.stderr.strip()}")


def _no_dns(resolv: Path) -> None:
    """The host's name servers are unreachable inside; without this every lookup (even the reverse one
    http.server does when it binds) waits for resolver time-outs. Loopback fails at once."""
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("# guestagent sandbox: private network, no DNS\nnameserver 127.0.0.1\n"
                      "options timeout:1 attempts:1\n")


def _make_dev(dev: Path) -> None:
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=0755,size=1m")
    for name, major, minor, mode in (("null", 1, 3, 0o666), ("zero", 1, 5, 0o666), ("full", 1, 7, 0o666),
                                     ("random", 1, 8, 0o666), ("urandom", 1, 9, 0o666), ("tty", 5, 0, 0o666)):
        os.mknod(dev / name, stat.S_IFCHR | mode, os.makedev(major, minor))
        os.chmod(dev / name, mode)
    # /dev/console is a plain file: whatever the agent writes to the console is captured there.
    (dev / "console").touch(mode=0o600)
    (dev / "pts").mkdir()
    _mount("devpts", dev / "pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=620")
    os.symlink("pts/ptmx", dev / "ptmx")
    (dev / "shm").mkdir(mode=0o1777)
    _mount("tmpfs", dev / "shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev / name)


def _init_main(root: Path, ready_fd: int) -> None:
    """PID 1 inside: own /proc, chroot, then reap every orphan until killed."""
    _pdeathsig()
    _mount("proc", root / "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chroot(root)
    os.chdir("/")
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: os._exit(0))
    os.write(ready_fd, b"ok")
    os.close(ready_fd)
    os.closerange(0, 3)
    fd = os.open("/dev/null", os.O_RDWR)
    for n in (0, 1, 2):
        if fd != n:
            os.dup2(fd, n)
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        signal.sigwaitinfo([signal.SIGCHLD])


# ------------------------------------------------------------------------------------ loop devices
def _loop_attach(image: Path, readonly: bool) -> tuple[int, int]:
    """Bind ``image`` to a free loop device with auto-clear; returns (loop number, open fd)."""
    import fcntl

    backing = os.open(image, os.O_RDONLY if readonly else os.O_RDWR)
    try:
        flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if readonly else 0)
        name = os.fsencode(image)[:63]
        # struct loop_info64: 5 x u64, 4 x u32, file name[64], crypt name[64], key[32], 2 x u64
        info = struct.pack("=5Q4I64s64s32s2Q", 0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0)
        for _ in range(20):
            ctl = os.open("/dev/loop-control", os.O_RDWR)
            try:
                n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            finally:
                os.close(ctl)
            fd = os.open(f"/dev/loop{n}", os.O_RDWR)
            try:
                config = struct.pack("=II", backing, 0) + info + bytes(64)
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOTTY):
                        raise
                    fcntl.ioctl(fd, LOOP_SET_FD, backing)  # kernels < 5.8
                    fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
                return n, fd
            except OSError as e:
                os.close(fd)
                if e.errno != errno.EBUSY:
                    raise
        raise SandboxError("no free loop device")
    finally:
        os.close(backing)


def _loop_bound(n: int) -> bool:
    return os.path.exists(f"/sys/block/loop{n}/loop/backing_file")


def _loop_release(n: int, fd: int) -> None:
    import fcntl

    try:
        fcntl.ioctl(fd, LOOP_CLR_FD)
    except OSError:
        pass  # still in use: auto-clear detaches it at the last close
    os.close(fd)


def build_image(image: PathLike, files: Mapping[str, Union[str, bytes]], *, fstype: str = "ext4",
                label: Optional[str] = None, size_kb: Optional[int] = None) -> Path:
    """Build a small file system image holding ``files`` ({relative path: content}) without mounting
    anything: ext2/3/4 with ``mkfs.<type> -d <dir>`` (e2fsprogs >= 1.43), vfat with ``mkfs.vfat`` and
    ``mcopy`` (mtools). Raises :class:`SandboxUnavailable` when the tools are missing."""
    import tempfile

    image = Path(image)
    total = sum(len(v) for v in files.values())
    size_kb = size_kb or max(1024, 2 * total // 1024 + 512)
    with tempfile.TemporaryDirectory(prefix="guestagent-image-") as staging:
        for rel, data in files.items():
            target = Path(staging) / rel.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.encode() if isinstance(data, str) else data)
        if fstype in ("ext2", "ext3", "ext4"):
            if not shutil.which("mkfs." + fstype):
                raise SandboxUnavailable(f"{fstype} images need mkfs.{fstype} (e2fsprogs)")
            argv = ["mkfs." + fstype, "-q", "-F", "-d", staging] + (["-L", label] if label else [])
            argv += [str(image), f"{size_kb}k"]
            argvs = [argv]
        elif fstype == "vfat":
            if not (shutil.which("mkfs.vfat") and shutil.which("mcopy")):
                raise SandboxUnavailable("vfat images need mkfs.vfat (dosfstools) and mcopy (mtools)")
            image.unlink(missing_ok=True)
            argvs = [["mkfs.vfat", "-C", *(["-n", label] if label else []), str(image), str(size_kb)]]
            entries = [str(p) for p in Path(staging).iterdir()]
            if entries:
                argvs.append(["mcopy", "-s", "-i", str(image), *entries, "::"])
        else:
            raise ValueError(f"unsupported file system type {fstype!r}")
        for argv in argvs:
            res = subprocess.run(argv, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise SandboxError(f"{argv[0]} failed: {res.stderr.strip()}")
    return image


def sweep_stale(base: Optional[PathLike] = None) -> list[str]:
    """Remove empty work directories whose keeper died without cleaning up (it was SIGKILLed)."""
    removed = []
    base = Path(base or "/tmp")
    for d in base.glob(WORKDIR_PREFIX + "*"):
        pid = d.name[len(WORKDIR_PREFIX):]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        try:
            d.rmdir()
            removed.append(str(d))
        except OSError:
            pass
    return removed


# ----------------------------------------------------------------------------------------- Sandbox
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
               "eth0": eth0, "mac": mac, "size": size}
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(project_root())] + [p for p in [env.get("PYTHONPATH")] if p])
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        self._keeper = subprocess.Popen(
            [interpreter(), "-c", "from guestagent.lab.sandbox import _keeper_main; _keeper_main()",
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
        argv = ["nsenter", f"--target={self.init_pid}", "--mount", "--uts", "--ipc", "--net", "--pid", "--root",
                "--wd"]
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
    def attach_image(self, image_file: PathLike, *, device: str = "/dev/sr0", readonly: bool = True) -> str:
        """Attach an image file to a loop device (on the host kernel) and expose it inside as ``device``.
        Returns the host loop device path."""
        n, fd = _loop_attach(Path(image_file).resolve(), readonly)
        self._loops.append((n, fd, device))
        try:
            os.set_inheritable(fd, False)
            socket.send_fds(self._ctl, [b"fd"], [fd])  # the keeper holds it too: gone when the sandbox is
            major, minor = Path(f"/sys/block/loop{n}/dev").read_text().strip().split(":")
            node = self.host_path(device)
            node.parent.mkdir(parents=True, exist_ok=True)
            os.mknod(node, stat.S_IFBLK | 0o660, os.makedev(int(major), int(minor)))
        except BaseException:
            self._detach_loops()
            raise
        return f"/dev/loop{n}"

    def _detach_loops(self) -> None:
        loops, self._loops = self._loops, []
        for n, fd, _ in loops:
            _loop_release(n, fd)
        deadline = time.monotonic() + 3
        while any(_loop_bound(n) for n, _, _ in loops) and time.monotonic() < deadline:
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
