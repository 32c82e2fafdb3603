"""The namespaces and file system view of a sandbox: the keeper process that builds them, and init.

The keeper (``python -c``, outside the sandbox's PID namespace) unshares mount, UTS, IPC, network,
PID and (when the kernel has them) time namespaces, mounts a tmpfs over its private work directory,
builds an overlay whose lower layer is the host's root file system (writes land in the tmpfs upper
layer) plus private /dev, /proc, /sys, /run and /tmp, and forks the sandbox's PID 1 ("init"), which
chroots into the overlay and only reaps orphans. The time namespace's boot clock starts at zero, so
``/proc/uptime`` inside counts from the sandbox's creation, as on a freshly booted VM.

Why it cannot leak: every mount lives in the private mount namespace only (propagation is made
private first), so it disappears with the last process in it; keeper and init die with their parent
(``PR_SET_PDEATHSIG``), and when init dies the kernel kills every process in the PID namespace. A
work directory left behind by a killed keeper is removed by the next sandbox (its name carries the
keeper's PID).

Only the root file system is seen through the overlay, so the running interpreter and the project
(wherever they live) are bind-mounted read-only when they sit on another mount or under a directory
the sandbox shadows (/tmp, /run, /dev...).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from guestagent.lab.errors import SandboxError

PathLike = Union[str, "os.PathLike[str]"]

CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00000080, 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MNT_DETACH = 0x2
PR_SET_PDEATHSIG = 1

WORKDIR_PREFIX = "guestagent-sandbox-"
#: Directories the sandbox replaces with its own mounts (host content there is not visible).
SHADOWED = ("/dev", "/proc", "/sys", "/run", "/tmp")
START_TIMEOUT = 20.0


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


def python_paths() -> list[str]:
    """The running interpreter's own directories: the project, the interpreter, its prefixes (a venv's
    too) and its import path."""
    wanted = {str(project_root()), os.path.dirname(interpreter()), os.path.dirname(os.path.abspath(sys.executable)),
              sys.prefix, sys.base_prefix, sys.exec_prefix}
    wanted.update(p for p in sys.path if p and os.path.isdir(p))
    return sorted(wanted)


def needed_binds(extra: Sequence[str] = ()) -> list[str]:
    """Host directories the sandbox must see (project, interpreter, its libraries, and ``extra``: the
    creating process's :func:`python_paths`, e.g. a venv under /tmp) that an overlay of the root file
    system would not show: on another mount, or under a directory the sandbox shadows."""
    wanted = set(python_paths()) | set(extra)
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
def keeper_main() -> None:
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
        init_pid, timens = _build(cfg, work)
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
    _reply(ctl, {"work": str(work), "init": init_pid, "timens": timens})
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


def _build(cfg: dict, work: Path) -> tuple[int, bool]:
    """Create the namespaces and the file system view; fork init; return (init's PID, whether it has
    its own time namespace)."""
    binds = needed_binds(cfg.get("paths", ()))  # on the host's mount table, before anything changes
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
    timens = _boot_clock_from_zero()
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
    return pid, timens


def _boot_clock_from_zero() -> bool:
    """A time namespace for the next child whose CLOCK_BOOTTIME (``/proc/uptime``, ``sysinfo``)
    starts at zero: the agent reports uptime in its provisioning event, and a sandbox is a fresh boot.
    Wall clock and CLOCK_MONOTONIC are untouched. False when the kernel has no time namespaces (< 5.6)."""
    if not os.path.exists("/proc/self/ns/time"):
        return False
    if _c().unshare(CLONE_NEWTIME) != 0:
        return False
    # Offsets may only be written before a process enters; the result must stay >= 0, so whole seconds.
    offset = int(time.clock_gettime(time.CLOCK_BOOTTIME))
    try:
        with open("/proc/self/timens_offsets", "w", encoding="ascii") as f:
            f.write(f"boottime {-offset} 0\n")
    except OSError:
        pass  # a time namespace with the host's clocks: harmless
    return True


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
