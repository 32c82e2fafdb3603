"""The cached images: the Debian base (scripts/vm/build-image) and the agent layer on top of it.

The agent layer is a qcow2 overlay of the base in which the project's wheel was installed with
``pip install --no-index --no-deps`` inside a booted guest (its libraries are Debian's own
python3-* packages, already in the base image, as the .deb depends on them), and the project's
systemd unit enabled, as a distro package would. The agent is NOT started there: it first starts on
each scenario's own boot, like on a freshly deployed Azure VM. Both live in the cache folder
(outside the repository) and are reused while their inputs (build script, guest files / sources,
unit, conf) are unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .machine import Machine, MachineConfig

REPO = Path(__file__).resolve().parents[3]
CACHE = Path(os.environ.get("GUESTAGENT_VM_CACHE", "/var/tmp/guestagent-vm"))

INSTALL_SH = r"""
set -eu
W=/var/tmp/guestagent-install
python3 -m pip install -q --no-index --no-deps --break-system-packages --root-user-action=ignore \
    --no-warn-script-location "$W"/guestagent-*.whl
python3 -c "import requests, lxml, pyroute2, psutil, cryptography, asn1crypto"
install -m 0755 "$W/waagent" /usr/sbin/waagent
install -m 0644 "$W/waagent.conf" /etc/waagent.conf
install -m 0644 "$W/walinuxagent.service" "$W/azure.slice" "$W/azure-vmextensions.slice" /lib/systemd/system/
systemctl daemon-reload
systemctl enable walinuxagent.service
rm -rf "$W"
/usr/sbin/waagent -version
"""

# the files that go into the agent layer besides the wheels: (repo path, name in the guest's staging dir)
PACKAGED = [("bin/waagent", "waagent"), ("config/waagent.conf", "waagent.conf"),
            ("systemd/walinuxagent.service", "walinuxagent.service"), ("systemd/azure.slice", "azure.slice"),
            ("systemd/azure-vmextensions.slice", "azure-vmextensions.slice")]


def log(msg: str) -> None:
    print(f"[vmtier {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_image(force: bool = False) -> Path:
    """Build the base image unless the cached one matches its inputs; returns its folder."""
    argv = [str(REPO / "scripts/vm/build-image")] + (["--force"] if force else [])
    proc = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, GUESTAGENT_VM_CACHE=str(CACHE)))
    if proc.returncode:
        raise RuntimeError(f"image build failed:\n{proc.stderr[-4000:]}")
    if proc.stderr.strip():
        log(proc.stderr.strip())
    return Path(proc.stdout.strip().splitlines()[-1])


def source_key() -> str:
    """Hash of everything that goes into the agent layer."""
    h = hashlib.sha256()
    files = sorted(p for p in (REPO / "guestagent").rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    files += [REPO / "pyproject.toml"] + [REPO / f for f, _ in PACKAGED]
    for p in files:
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(INSTALL_SH.encode())
    return h.hexdigest()[:12]


def build_wheel(dest: Path) -> Path:
    """The project's wheel, built now (its dependencies are the guest's Debian packages)."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check",
                           "--no-deps", "--wheel-dir", str(dest), str(REPO)],
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"pip wheel failed:\n{proc.stderr[-4000:]}")
    wheels = sorted(dest.glob("guestagent-*.whl"))
    if not wheels:
        raise RuntimeError(f"no guestagent wheel in {dest}")
    return wheels[0]


def _layer(backing: Path, out: Path, base: Path, files: dict, script: str, what: str) -> Path:
    """Boot an overlay of ``backing``, copy ``files`` (guest path → bytes) in, run ``script``, power
    off, keep the overlay as ``out``."""
    t0 = time.monotonic()
    work = CACHE / f".layer-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    m = Machine(MachineConfig(image_dir=base, disk=backing, work=work, cpus=2, timeout=600))
    try:
        m.boot()
        m.run(["mkdir", "-p", "/var/tmp/guestagent-install"])
        for path, data in files.items():
            m.write(path, data)
        res = m.run(script, timeout=400)
        m.poweroff()
        os.replace(m.overlay, out)
        log(f"{what} layer {out.name} built in {time.monotonic() - t0:.0f}s {res.out.strip()}")
        return out
    except Exception:
        log(f"{what} layer build failed; console:\n{m.console_tail(40)}")
        raise
    finally:
        m.destroy()
        shutil.rmtree(work, ignore_errors=True)


def agent_image(base: Path, force: bool = False) -> Path:
    """The agent layer for the current sources, built if missing: a qcow2 layer on the base with the
    project's wheel + unit + conf."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".agent-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions build one layer at a time
        key = f"{base.name}-{source_key()}"
        out = CACHE / f"agent-{key}.qcow2"
        if out.exists() and not force:
            return out
        wdir = CACHE / f".wheels-{os.getpid()}"
        shutil.rmtree(wdir, ignore_errors=True)
        try:
            wheel = build_wheel(wdir)
            log(f"wheel: {wheel.name}")
            stage = "/var/tmp/guestagent-install"
            files = {f"{stage}/{wheel.name}": wheel.read_bytes()}
            files.update({f"{stage}/{name}": (REPO / src).read_bytes() for src, name in PACKAGED})
            _layer(base / "base.qcow2", out, base, files, INSTALL_SH, "agent")
            for old in CACHE.glob("agent-*.qcow2"):
                # sources change all the time: drop old layers, but not ones a parallel run may use
                if old != out and time.time() - old.stat().st_mtime > 3 * 3600:
                    old.unlink()
            return out
        finally:
            shutil.rmtree(wdir, ignore_errors=True)


if __name__ == "__main__":
    # PYTHONPATH=tests/vm python3 -m vmtier.image [--force]: build/reuse both layers, print the agent layer
    force = "--force" in sys.argv[1:]
    print(agent_image(base_image(force=force), force=force))
