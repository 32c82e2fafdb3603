"""Extension packages and manifests served by the emulated storage account.

A handler version is a folder (HandlerManifest.json + scripts); it is zipped on first request (file
modes kept, so scripts stay executable) and cached until a file in the folder changes. A version given
as a ready-made ``.zip`` file (a test's hostile package) is served as it is.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from pathlib import Path
from typing import Dict, Iterable, Tuple
from xml.sax.saxutils import escape

from guestagent.fabric.scenario import HandlerPackage

_MAX_PACKAGE = 256 * 1024 * 1024


class PackageCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zips: Dict[Path, Tuple[float, bytes]] = {}

    def zip_of(self, folder: Path) -> bytes:
        if folder.is_file():
            if folder.stat().st_size > _MAX_PACKAGE:
                raise ValueError(f"package {folder} is larger than {_MAX_PACKAGE} bytes")
            return folder.read_bytes()
        stamp = _newest_mtime(folder)
        with self._lock:
            cached = self._zips.get(folder)
            if cached and cached[0] == stamp:
                return cached[1]
        data = zip_folder(folder)
        with self._lock:
            self._zips[folder] = (stamp, data)
        return data


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except OSError:
                pass
    return newest


def zip_folder(folder: Path) -> bytes:
    """Deterministic zip of a folder: sorted entries, fixed timestamps, unix modes in external_attr."""
    buf = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                full = Path(root) / name
                if full.is_symlink() or not full.is_file():
                    continue
                rel = full.relative_to(folder).as_posix()
                info = zipfile.ZipInfo(rel, date_time=(2020, 1, 1, 0, 0, 0))
                data = full.read_bytes()
                mode = full.stat().st_mode & 0o777
                if data.startswith(b"#!"):  # scripts stay runnable even if an installer dropped the x bits
                    mode |= 0o755
                info.external_attr = (mode | 0o100000) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                total += len(data)
                if total > _MAX_PACKAGE:
                    raise ValueError(f"handler folder {folder} is larger than {_MAX_PACKAGE} bytes")
                zf.writestr(info, data)
    return buf.getvalue()


def manifest_xml(packages: Iterable[HandlerPackage], package_url) -> str:
    """Extension manifest (PluginVersionManifest) listing every version the scenario provides.

    ``package_url(pkg)`` gives the storage URL of one package."""
    plugins = []
    for pkg in sorted(packages, key=lambda p: _version_key(p.version)):
        plugins.append("    <Plugin>\n"
                       f"      <Version>{escape(pkg.version)}</Version>\n"
                       f"      <Uris>\n        <Uri>{escape(package_url(pkg))}</Uri>\n      </Uris>\n"
                       "    </Plugin>\n")
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            '<PluginVersionManifest xmlns:i="http://www.w3.org/2001/XMLSchema-instance">\n'
            "  <Plugins>\n" + "".join(plugins) + "  </Plugins>\n"
            "  <InternalPlugins>\n  </InternalPlugins>\n"
            "</PluginVersionManifest>\n")


def _version_key(version: str):
    parts = []
    for piece in version.split("."):
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return parts
