"""The namespace sandbox: isolation is real, nothing leaks, the host is never changed."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from guestagent.lab import sandbox as sbmod
from guestagent.lab.sandbox import Sandbox, SandboxUnavailable

pytestmark = pytest.mark.sandbox


def _sha(p: str) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def _losetup() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=False).stdout


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _wait(cond, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def test_namespaces_are_private(sandbox):
    host_name = socket.gethostname()
    assert sandbox.run(["hostname"]).stdout.strip() == "sandbox"
    sandbox.run(["hostname", "renamed-inside"])
    assert sandbox.run(["cat", "/proc/sys/kernel/hostname"]).stdout.strip() == "renamed-inside"
    assert socket.gethostname() == host_name
    # Own PID namespace and /proc: init is PID 1 and the host's processes are invisible.
    out = sandbox.run(["sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'"]).stdout.split()
    assert int(out[1]) < 10
    assert not any("pytest" in cmd for _, cmd in sandbox.processes())
    assert next(p for p, _ in sandbox.processes()) == 1
    mounts = sandbox.run(["findmnt", "-rn", "-o", "TARGET,FSTYPE"]).stdout.splitlines()
    kinds = dict(line.split(" ", 1) for line in mounts)
    assert kinds["/"] == "overlay" and kinds["/tmp"] == "tmpfs" and kinds["/run"] == "tmpfs"
    assert kinds["/dev"] == "tmpfs" and kinds["/proc"] == "proc" and kinds["/sys"] == "sysfs"


def test_useradd_inside_does_not_change_host(sandbox):
    before = {p: _sha(p) for p in ("/etc/passwd", "/etc/shadow", "/etc/group")}
    sandbox.run(["useradd", "-m", "-s", "/bin/bash", "sbxuser"])
    assert "sbxuser:" in sandbox.read_text("/etc/passwd")
    assert sandbox.run(["id", "-u", "sbxuser"]).ok
    assert {p: _sha(p) for p in before} == before
    assert not Path("/home/sbxuser").exists()
    changes = sandbox.change_set()
    assert changes["/etc/passwd"] == "modified"
    assert changes["/home/sbxuser"] == "added"
    assert subprocess.run(["id", "sbxuser"], capture_output=True, check=False).returncode != 0


def test_files_written_inside_and_from_the_host(sandbox):
    sandbox.write_file("/var/lib/waagent/secret.prv", "KEY", mode=0o600)
    out = sandbox.run(["stat", "-c", "%a %U %s", "/var/lib/waagent/secret.prv"]).stdout.split()
    assert out == ["600", "root", "3"]
    sandbox.run(["sh", "-c", "echo scratch > /tmp/sandbox-scratch; echo run > /run/y; rm -f /etc/hostname"])
    assert not Path("/var/lib/waagent/secret.prv").exists()
    changes = sandbox.change_set()
    assert changes["/var/lib/waagent/secret.prv"] == "added"
    if Path("/etc/hostname").exists():
        assert changes["/etc/hostname"] == "deleted"
        assert Path("/etc/hostname").exists()
    assert not any(p.startswith(("/tmp/", "/run/")) for p in changes)
    assert sandbox.read_text("/tmp/sandbox-scratch") == "scratch\n"


def test_device_nodes_and_console_capture(sandbox):
    out = sandbox.run(["sh", "-c", "head -c 16 /dev/urandom | wc -c; head -c 4 /dev/zero | od -An -tx1;"
                                   " echo gone > /dev/null; echo to-console > /dev/console"]).stdout.split()
    assert out[0] == "16" and out[1:] == ["00"] * 4
    assert sandbox.read_text("/dev/console") == "to-console\n"
    # a pty works (ptmx of the sandbox's own devpts)
    assert sandbox.python("import pty, os; m, s = pty.openpty(); print(os.ttyname(s))").stdout.startswith("/dev/pts/")


def test_project_and_interpreter_usable_inside(sandbox):
    res = sandbox.python("import sys, guestagent.version as v; print(v.AGENT_VERSION, sys.executable)")
    version, exe = res.stdout.split()
    from guestagent.version import AGENT_VERSION

    assert version == AGENT_VERSION and exe == sbmod.interpreter()
    res = sandbox.run(["python3", "-m", "guestagent.tools", "version"])
    assert "WALinuxAgent" in res.stdout
    # the project is read-only or copy-on-write: never changed by the sandbox
    sandbox.run(["sh", "-c", f"echo x > {sbmod.project_root()}/guestagent/.probe"], check=False)
    assert not (sbmod.project_root() / "guestagent" / ".probe").exists()


def test_run_reports_failures_and_timeouts(sandbox):
    res = sandbox.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
    assert res.argv == ["sh", "-c", "echo out; echo err >&2; exit 3"]
    from guestagent.errors import CommandError

    with pytest.raises(CommandError):
        sandbox.run(["false"])
    t = time.monotonic()
    res = sandbox.run(["sleep", "30"], timeout=0.5, check=False)
    assert res.timed_out and time.monotonic() - t < 5
    assert sandbox.run(["pwd"], cwd="/var/lib").stdout.strip() == "/var/lib"
    assert sandbox.run(["cat"], input="piped").stdout == "piped"
    env = sandbox.run(["env"], env={"EXTRA": "1"}).stdout
    assert "EXTRA=1" in env and "AZURE_GUEST_AGENT_PARENT_PROCESS_NAME" not in env


def test_network_is_private(sandbox):
    # the fabric's addresses are bindable inside (ports 80 and 32526)
    code = textwrap.dedent("""
        import socket
        for host, port in (("127.63.129.16", 80), ("127.63.129.16", 32526), ("169.254.169.254", 80)):
            s = socket.socket(); s.bind((host, port)); s.listen(); c = socket.create_connection((host, port), 2)
            print(host, port, "ok"); c.close(); s.close()
    """)
    assert sandbox.python(code).stdout.count("ok") == 3
    # a server on the host's loopback is not reachable from inside
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    try:
        res = sandbox.python(f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)", check=False)
        assert res.returncode != 0 and "ConnectionRefused" in res.stderr
    finally:
        srv.close()
    # the outside world is unreachable: only lo and the veth pair exist; default route leads nowhere
    links = sandbox.run(["ip", "-o", "link"]).stdout
    assert {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()} == {"lo", "eth0", "fabric0"}
    res = sandbox.python("import socket; socket.create_connection(('1.1.1.1', 53), 1)", check=False)
    assert res.returncode != 0


def test_loop_image_appears_as_dvd_and_mounts(sandbox, fs_image):
    image = fs_image({"ovf-env.xml": "<Environment/>", "sub/readme": "r"}, fstype="ext4", label="CDROM")
    loop = sandbox.attach_image(image)
    assert f"{loop}:" in _losetup()
    out = sandbox.run(["sh", "-c", "test -b /dev/sr0 && mkdir -p /mnt/cdrom/secure && "
                                   "mount -o ro /dev/sr0 /mnt/cdrom/secure && cat /mnt/cdrom/secure/ovf-env.xml && echo && "
                                   "findmnt -rn -o SOURCE,FSTYPE,OPTIONS /mnt/cdrom/secure"]).stdout.splitlines()
    assert out[0] == "<Environment/>"
    assert out[1].startswith("/dev/sr0 ext4 ro")
    assert sandbox.run(["sh", "-c", "touch /mnt/cdrom/secure/x"], check=False).returncode != 0
    assert not any("cdrom" in line for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_close_leaves_nothing(fs_image):
    image = fs_image({"a": "b"})
    sb = Sandbox()
    loop = sb.attach_image(image, device="/dev/sr0")
    sb.run(["sh", "-c", "mkdir -p /mnt/x && mount /dev/sr0 /mnt/x"])
    sleeper = sb.spawn(["sleep", "1000"])
    pids = (sb.keeper_pid, sb.init_pid, sleeper.pid)
    workdir = sb.workdir
    sb.close()
    assert all(_gone(p) for p in pids[:2])
    assert sleeper.wait(5) is not None
    assert not workdir.exists()
    assert f"{loop}:" not in _losetup()
    assert str(workdir) not in Path("/proc/self/mountinfo").read_text()
    sb.close()  # idempotent


def test_spawned_process_can_be_stopped(sandbox):
    p = sandbox.spawn(["sh", "-c", "trap 'exit 7' TERM; while true; do sleep 0.05; done"],
                      stdout=subprocess.PIPE)
    assert _wait(lambda: any("trap" in cmd for _, cmd in sandbox.processes()))
    p.terminate()
    p.wait(5)
    assert _wait(lambda: not any("trap" in cmd for _, cmd in sandbox.processes()))


def test_killed_owner_leaves_nothing(tmp_path, fs_image):
    image = fs_image({"a": "b"})
    script = tmp_path / "owner.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from guestagent.lab.sandbox import Sandbox
        sb = Sandbox()
        loop = sb.attach_image({str(image)!r})
        sb.run(["sh", "-c", "mkdir -p /mnt/x && mount /dev/sr0 /mnt/x"])
        p = sb.spawn(["sleep", "1000"])
        print(sb.keeper_pid, sb.init_pid, p.pid, loop, sb.workdir, flush=True)
        time.sleep(1000)
    """))
    env = dict(os.environ, PYTHONPATH=str(sbmod.project_root()))
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    keeper, init, nsenter, loop, workdir = owner.stdout.readline().split()
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    owner.stdout.close()
    assert _wait(lambda: all(_gone(int(p)) for p in (keeper, init, nsenter)))
    assert _wait(lambda: f"{loop}:" not in _losetup())
    # the keeper was killed before cleaning its (empty) work directory: the next sandbox sweeps it
    with Sandbox():
        pass
    assert not Path(workdir).exists()


def test_startup_is_fast():
    times = []
    for _ in range(4):
        t = time.monotonic()
        with Sandbox() as sb:
            sb.run(["true"])
        times.append(time.monotonic() - t)
    print(f"sandbox create+run+close: best {min(times):.3f}s, mean {sum(times) / len(times):.3f}s")
    assert min(times) < 0.5


def test_not_root_is_one_clear_sentence(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the only way to be "not root" without dropping privileges
    with pytest.raises(SandboxUnavailable, match="needs root"):
        Sandbox()


def test_boot_clock_starts_with_the_sandbox(sandbox):
    # a sandbox is a fresh boot: /proc/uptime (the agent's provisioning event reports it) counts from
    # its creation; the wall clock is the host's
    if not sandbox.timens:
        pytest.skip("this kernel has no time namespaces (< 5.6)")
    uptime, _idle, wall = sandbox.run(["sh", "-c", "cat /proc/uptime; date +%s"]).stdout.split()
    assert float(uptime) <= time.monotonic() - sandbox.started + 1.5
    assert abs(int(wall) - time.time()) < 5
    assert "--time" in sandbox.enter_argv()


def test_image_byte_range_is_its_own_block_device(sandbox, fs_image, tmp_path):
    # a "partition": bytes [1 MiB, end) of a disk image, as the resource disk's /dev/sdb1
    part = fs_image({"inside": "partition data"}, fstype="ext4", size_kb=2048)
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\xaa" * (1 << 20) + part.read_bytes())
    sandbox.attach_image(disk, device="/dev/sdb", readonly=False)
    sandbox.attach_image(disk, device="/dev/sdb1", readonly=False, offset=1 << 20, size=part.stat().st_size)
    out = sandbox.run(["sh", "-c", "blockdev --getsize64 /dev/sdb /dev/sdb1 && head -c 2 /dev/sdb | od -An -tx1 && "
                                   "mkdir -p /mnt/p && mount /dev/sdb1 /mnt/p && cat /mnt/p/inside && "
                                   "echo x > /mnt/p/written-through-sdb1 && umount /mnt/p"]).stdout
    assert out.split() == [str(disk.stat().st_size), str(part.stat().st_size), "aa", "aa", "partition", "data"]
    data = disk.read_bytes()
    assert data[: 1 << 20] == b"\xaa" * (1 << 20) and b"written-through-sdb1" in data[1 << 20:]


def test_a_venv_under_tmp_is_visible_inside(tmp_path):
    """A sandbox made by a venv's interpreter under /tmp (which the sandbox shadows with its own tmpfs)
    can run that same venv interpreter: the creating process's prefix is bound in (it once was not, and
    the bench's session failed with 'exec: …/bin/python: not found' when run from such a venv)."""
    venv = Path("/tmp") / f"guestagent-venv-test-{os.getpid()}"
    subprocess.run([os.path.realpath(sys.executable), "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True, timeout=120)
    try:
        code = textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {str(sbmod.project_root())!r})
            from guestagent.lab.sandbox import Sandbox
            with Sandbox(hostname="venv-test") as sb:
                r = sb.run([sys.executable, "-c", "import sys; print(sys.prefix)"], check=False)
                print("INSIDE", r.returncode, r.stdout.strip(), r.stderr.strip())
        """)
        out = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                             timeout=120)
        assert f"INSIDE 0 {venv}" in out.stdout, out.stdout + out.stderr
    finally:
        subprocess.run(["rm", "-rf", str(venv)], check=False)
