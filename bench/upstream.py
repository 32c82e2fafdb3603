"""Upstream for comparison: Debian's ``waagent`` package (WALinuxAgent), unpacked, never installed.

``apt-get download`` fetches the .deb (and python3-distro, which it imports) into bench/.cache/;
``dpkg-deb -x`` unpacks them there and the modules are byte-compiled (as the package's postinst
does), so upstream starts as it would on an installed system. It then runs with the same
interpreter, sandbox, configuration and fabric as ours. Debian 12 ships 2.7.3.0, not 2.15: the
ratios compare with that release, and the table also shows the issue's figures for 2.15.

A source tree of another release (e.g. 2.15, ``git archive v2.15.0.1`` of the WALinuxAgent repository,
never committed here) runs the same way with :func:`tree_agent`: its ``bin/waagent`` and its
``azurelinuxagent`` package, with the Debian package's ``distro`` module beside it.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

from harness import Agent, byte_compile

from guestagent.lab.sandbox import DEFAULT_PATH

CACHE = Path(__file__).resolve().parent / ".cache" / "upstream"
PACKAGES = ("waagent", "python3-distro")


class UpstreamUnavailable(Exception):
    """Upstream cannot be measured here; the message says why."""


def _run(argv: list[str], cwd: Path) -> None:
    try:
        res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UpstreamUnavailable(f"{' '.join(argv)} failed: {e}")
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise UpstreamUnavailable(f"{' '.join(argv)} failed: {tail[0]}")


def prepare() -> Path:
    """The unpacked root (cached); downloads and unpacks on first use."""
    root = CACHE / "root"
    if (root / "usr" / "sbin" / "waagent").is_file():
        return root
    if not shutil.which("apt-get") or not shutil.which("dpkg-deb"):
        raise UpstreamUnavailable("apt-get/dpkg-deb are not available (not a Debian-family host)")
    CACHE.mkdir(parents=True, exist_ok=True)
    _run(["apt-get", "download", *PACKAGES], CACHE)
    tmp = CACHE / "root.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for deb in sorted(glob.glob(str(CACHE / "*.deb"))):
        _run(["dpkg-deb", "-x", deb, str(tmp)], CACHE)
    tmp.rename(root)
    return root


def version(root: Path) -> str:
    found = glob.glob(str(root / "usr/lib/python3/dist-packages/WALinuxAgent-*.egg-info"))
    return Path(found[0]).name.split("-")[1].rsplit(".egg", 1)[0] if found else "?"


#: Upstream mounts the DVD with ``-t udf,iso9660,vfat`` only; the sandbox's kernel has none of them
#: (the lab's DVD is ext4), so inside upstream's sandbox ``mount`` lets the kernel detect the type.
#: Ours falls back to detection by itself. The shim lives only in the throwaway image.
MOUNT_SHIM = """#!/bin/sh
for a; do shift; [ "$a" = "udf,iso9660,vfat" ] && a=auto; set -- "$@" "$a"; done
exec /usr/bin/mount "$@"
"""

#: Upstream ejects the DVD after provisioning and dies when ``eject`` (a package it only suggests) is
#: missing; a VM image has it. Inside the image the shim unmounts what is mounted and succeeds.
EJECT_SHIM = """#!/bin/sh
umount "${1:-/dev/sr0}" 2>/dev/null
exit 0
"""

#: Debian's osutil restarts the primary interface with ``ifdown eth0 && ifup eth0`` after publishing
#: the hostname and retries 3 x 5 s when ifupdown is missing (it is, here). A no-op stands in: the
#: best case for upstream (no DHCP round trip), so its figures here are, if anything, flattering.
IFUPDOWN_SHIM = "#!/bin/sh\nexit 0\n"


#: The shims live in /usr/local/s?bin; the sandbox puts the interpreter's own directory first on PATH,
#: which for /usr/bin/python3 would put /usr/bin/mount before them: upstream gets the plain PATH.
SHIM_PATH = {"PATH": DEFAULT_PATH}
SHIMS = {"/usr/local/sbin/mount": (MOUNT_SHIM, 0o755), "/usr/local/bin/eject": (EJECT_SHIM, 0o755),
         "/usr/local/sbin/ifdown": (IFUPDOWN_SHIM, 0o755), "/usr/local/sbin/ifup": (IFUPDOWN_SHIM, 0o755)}


def upstream_agent(python: str) -> Agent:
    root = prepare()
    site = root / "usr" / "lib" / "python3" / "dist-packages"
    return Agent(f"upstream {version(root)}", [python, str(root / "usr" / "sbin" / "waagent")],
                 env={"PYTHONPATH": str(site), **SHIM_PATH, **byte_compile(python, site)}, files=dict(SHIMS))


def tree_version(tree: Path) -> str:
    """AGENT_VERSION from the tree's version.py (read, not imported)."""
    text = (tree / "azurelinuxagent" / "common" / "version.py").read_text(encoding="utf-8")
    for line in text.splitlines():
        if line.startswith("AGENT_VERSION"):
            return line.split("=", 1)[1].strip().strip("'\"")
    return "?"


def tree_agent(python: str, tree: Path) -> Agent:
    """Upstream from a source tree (visible inside the sandbox: not under /tmp); ``distro`` comes from
    the unpacked Debian package, after the tree on the path so the tree's own package wins."""
    tree = Path(tree).resolve()
    if not (tree / "bin" / "waagent").is_file() or not (tree / "azurelinuxagent").is_dir():
        raise UpstreamUnavailable(f"{tree} is not a WALinuxAgent source tree (no bin/waagent, azurelinuxagent/)")
    site = prepare() / "usr" / "lib" / "python3" / "dist-packages"
    return Agent(f"upstream {tree_version(tree)}", [python, str(tree / "bin" / "waagent")],
                 env={"PYTHONPATH": f"{tree}:{site}", **SHIM_PATH, **byte_compile(python, tree / "azurelinuxagent")},
                 files=dict(SHIMS))
