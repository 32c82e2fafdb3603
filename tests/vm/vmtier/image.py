"""The cached images: the Debian base (scripts/vm/build-image) and the agent layer on top of it.

The agent layer is a qcow2 overlay of the base in which the project's Debian package
(``scripts/build-deb``) was installed with ``apt-get install ./guestagent_*.deb`` inside a booted guest,
as an image builder does (its libraries are Debian's own python3-* packages, already in the base image);
the package's postinst enables the unit. The agent is NOT started there (a ``policy-rc.d`` forbids it
during the install, as image builders do): it first starts on each scenario's own boot, like on a
freshly deployed Azure VM. Both live in the cache folder (outside the repository) and are reused while
their inputs (build script, guest files / sources, packaging) are unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from .machine import Machine, MachineConfig

REPO = Path(__file__).resolve().parents[3]
CACHE = Path(os.environ.get("GUESTAGENT_VM_CACHE", "/var/tmp/guestagent-vm"))

INSTALL_SH = r"""
set -eu
W=/var/tmp/guestagent-install
# an image build: install and enable, never start (deb-systemd-invoke honours policy-rc.d)
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$W"/guestagent_*_all.deb >/dev/null
rm -f /usr/sbin/policy-rc.d
python3 -c "import requests, lxml, pyroute2, psutil, cryptography, asn1crypto"
systemctl is-enabled walinuxagent.service >/dev/null
if systemctl is-active --quiet walinuxagent.service; then echo "the agent started during the install" >&2; exit 1; fi
rm -rf "$W"
dpkg-query -W -f='${Package} ${Version} ' guestagent
/usr/sbin/waagent -version | head -1
"""

# what goes into the package besides guestagent/ (a change rebuilds the layer)
PACKAGED = ["bin/waagent", "config/waagent.conf", "config/waagent.logrotate", "config/66-azure-storage.rules",
            "config/99-azure-product-uuid.rules", "systemd/walinuxagent.service", "systemd/azure.slice",
            "systemd/azure-vmextensions.slice", "scripts/build-deb", "packaging/deb/control.in",
            "packaging/deb/postinst", "packaging/deb/prerm", "packaging/deb/postrm", "packaging/deb/copyright",
            "packaging/deb/changelog"]


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
    files += [REPO / f for f in PACKAGED]
    for p in files:
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(INSTALL_SH.encode())
    return h.hexdigest()[:12]


def build_deb(dest: Path) -> Path:
    """The project's Debian package, built now (it depends on the guest's Debian python3-* packages)."""
    return build_debs(dest)[0]


def build_debs(dest: Path) -> List[Path]:
    """guestagent's package, then the transitional waagent package that upgrades Debian's to it."""
    proc = subprocess.run([str(REPO / "scripts/build-deb"), str(dest)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"scripts/build-deb failed:\n{proc.stderr[-4000:]}")
    return [Path(line) for line in proc.stdout.strip().splitlines()]


def _layer(backing: Path, out: Path, base: Path, files: dict, script: str, what: str) -> Path:
    """Boot an overlay of ``backing``, copy ``files`` (guest path → bytes) in, run ``script``, power
    off, keep the overlay as ``out``."""
    t0 = time.monotonic()
    work = CACHE / f".layer-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    m = Machine(MachineConfig(image_dir=base, disk=backing, work=work, cpus=2, timeout=600))
    try:
        m.boot()
        m.run(["mkdir", "-p", "/var/tmp/guestagent-install", *sorted({str(Path(p).parent) for p in files})])
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


def agent_image(base: Path, force: bool = False, backing: Optional[Path] = None) -> Path:
    """The agent layer for the current sources, built if missing: a qcow2 layer on the base (or on
    ``backing``, a package layer of the base) with the project's .deb installed by apt."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    under = backing or base / "base.qcow2"
    with open(CACHE / ".agent-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions build one layer at a time
        key = f"{base.name}-{source_key()}" if backing is None else f"{backing.stem}-{source_key()}"
        out = CACHE / f"agent-{key}.qcow2"
        if out.exists() and not force:
            return out
        wdir = CACHE / f".deb-{os.getpid()}"
        shutil.rmtree(wdir, ignore_errors=True)
        try:
            deb = build_deb(wdir)
            log(f"package: {deb.name}")
            files = {f"/var/tmp/guestagent-install/{deb.name}": deb.read_bytes()}
            _layer(under, out, base, files, INSTALL_SH, "agent")
            for old in CACHE.glob("agent-*.qcow2"):
                # sources change all the time: drop old layers, but not ones a parallel run may use
                if old != out and time.time() - old.stat().st_mtime > 3 * 3600:
                    old.unlink()
            return out
        finally:
            shutil.rmtree(wdir, ignore_errors=True)


PACKAGES_SH = r"""
set -eu
D=/var/tmp/guestagent-packages
# an image build: install, never start (deb-systemd-invoke honours policy-rc.d)
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
chmod 0755 /usr/sbin/policy-rc.d
if ls "$D"/*.deb >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$D"/*.deb >/dev/null
fi
rm -f /usr/sbin/policy-rc.d
"""


def _resolve(base: Path, packages: Sequence[str], dest: Path) -> List[Path]:
    """Download ``packages`` and whatever of their dependencies the base lacks, from the host's apt
    (the guest has no network but the fabric): the host's apt resolves them against the base's dpkg
    status (saved by build-image), then ``apt-get download`` fetches exactly those versions."""
    status = base / "dpkg-status"
    # a simulation, not --print-uris: that one leaves out what the host's own apt cache already holds
    argv = ["apt-get", "install", "-s", "-q", "--no-install-recommends", "-o", f"Dir::State::status={status}",
            "-o", "Debug::NoLocking=1", "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=", *packages]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        # a machine whose apt lists were never fetched (or were cleaned, as container images do): fetch, retry
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"apt-get could not resolve {' '.join(packages)}:\n{proc.stderr[-2000:]}")
    wanted = [f"{m.group(1)}={m.group(2)}"
              for m in re.finditer(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) ", proc.stdout, re.M)]
    dest.mkdir(parents=True, exist_ok=True)
    if wanted:
        proc = subprocess.run(["apt-get", "download", *wanted], cwd=dest, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"apt-get download failed:\n{proc.stderr[-2000:]}")
    return sorted(dest.glob("*.deb"))


def package_layer(base: Path, packages: Sequence[str], script: str = "", keep_debs: str = "") -> Path:
    """A layer on the base with Debian ``packages`` installed offline with apt (enabled by their
    postinst, started by nothing: a policy-rc.d forbids it during the install), then ``script`` run
    as root in the guest (to mask a service the scenario starts itself, say). With ``keep_debs`` (a
    guest folder) the .debs stay in the guest, for a scenario that installs them again later.
    Cached per base, package set and script; scenarios put the agent layer on it with
    ``agent_image(base, backing=layer)``."""
    import fcntl

    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".agent-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        h = hashlib.sha256("\0".join([*sorted(packages), script, keep_debs, PACKAGES_SH]).encode())
        out = CACHE / f"pkg-{base.name}-{h.hexdigest()[:12]}.qcow2"
        if out.exists():
            return out
        wdir = CACHE / f".debs-{os.getpid()}"
        shutil.rmtree(wdir, ignore_errors=True)
        try:
            debs = _resolve(base, packages, wdir)
            log(f"package layer: {len(debs)} .debs for {' '.join(packages)}")
            files = {f"/var/tmp/guestagent-packages/{d.name}": d.read_bytes() for d in debs}
            keep = f"mkdir -p {keep_debs} && cp /var/tmp/guestagent-packages/*.deb {keep_debs}/\n" if keep_debs else ""
            _layer(base / "base.qcow2", out, base, files,
                   PACKAGES_SH + keep + "rm -rf /var/tmp/guestagent-packages\n" + script, "packages")
            for old in CACHE.glob("pkg-base-*.qcow2"):
                if not old.name.startswith(f"pkg-{base.name}-"):   # layers of an older base
                    old.unlink()
            return out
        finally:
            shutil.rmtree(wdir, ignore_errors=True)


if __name__ == "__main__":
    # PYTHONPATH=tests/vm python3 -m vmtier.image [--force]: build/reuse both layers, print the agent layer
    force = "--force" in sys.argv[1:]
    print(agent_image(base_image(force=force), force=force))
