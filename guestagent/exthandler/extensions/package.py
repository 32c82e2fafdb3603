"""Extension package download and safe unpacking (04 §1).

The zip comes from the network, so every member is checked before anything is written: absolute paths,
``..`` components, symlinks and device entries are refused, and member count and unpacked size are capped
(counted while writing, so lying headers do not help a zip bomb). The package is unpacked into a staging
directory and moved into the base dir only when complete: a corrupt or hostile package never leaves a
half-installed handler.
"""

from __future__ import annotations

import os
import shutil
import stat
from typing import TYPE_CHECKING, Any, Optional, Protocol

from guestagent import log
from guestagent.errors import ExtensionError
from guestagent.osutil import pathguard, system

if TYPE_CHECKING:
    import zipfile

CODE_DOWNLOAD = 1001
MAX_MEMBERS = 20000
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
DOWNLOAD_ATTEMPTS = 3
_CHUNK = 1 << 20


class PackageError(ExtensionError):
    """The package could not be unpacked (corrupt, truncated or hostile)."""


def zip_path(lib_dir: str, name: str, version: str) -> str:
    return pathguard.join(lib_dir, f"{name}__{version}.zip")


def _check_member(info: zipfile.ZipInfo) -> str:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise PackageError(f"Refusing package member with an absolute path: {info.filename!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PackageError(f"Refusing package member outside the package directory: {info.filename!r}")
    mode = (info.external_attr >> 16) & 0o170000
    if mode and mode not in (stat.S_IFREG, stat.S_IFDIR):
        kind = "symbolic link" if mode == stat.S_IFLNK else "special file"
        raise PackageError(f"Refusing package member that is a {kind}: {info.filename!r}")
    return "/".join(parts)


def unpack(zip_file: str, target_dir: str, max_bytes: int = MAX_UNPACKED_BYTES,
           max_members: int = MAX_MEMBERS) -> None:
    """Unpack ``zip_file`` into ``target_dir`` (created; must not exist). Raise PackageError and leave
    nothing behind on any problem. Files get ``u+x`` added, as upstream does for every package file."""
    import zipfile  # here: the idle ext-handler has no zip to read (zipfile, cp437: ~0.35 MB resident)

    real_zip, real_target = system.path(zip_file), system.path(target_dir)
    try:
        with zipfile.ZipFile(real_zip) as zf:
            infos = zf.infolist()
            if len(infos) > max_members:
                raise PackageError(f"Package has too many members: {len(infos)} (limit {max_members})")
            checked = [(info, _check_member(info)) for info in infos]
            if sum(i.file_size for i in infos) > max_bytes:
                raise PackageError(f"Package unpacks to more than {max_bytes} bytes")
            os.makedirs(real_target, mode=0o755)
            written = 0
            for info, rel in checked:
                if not rel:
                    continue
                dest = os.path.join(real_target, rel)
                if info.is_dir():
                    os.makedirs(dest, mode=0o755, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
                with zf.open(info) as src, open(dest, "wb") as out:
                    while True:
                        chunk = src.read(_CHUNK)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > max_bytes:
                            raise PackageError(f"Package unpacks to more than {max_bytes} bytes")
                        out.write(chunk)
                os.chmod(dest, 0o744)
    except PackageError:
        shutil.rmtree(real_target, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, RuntimeError) as e:
        shutil.rmtree(real_target, ignore_errors=True)
        raise PackageError(f"Failed to unpack the package {os.path.basename(zip_file)}: {type(e).__name__}: {e}") \
            from None


def find_handler_manifest(root: str) -> Optional[str]:
    """The first HandlerManifest.json in walk order (04 §1)."""
    for dirpath, dirnames, filenames in os.walk(system.path(root)):
        dirnames.sort()
        if "HandlerManifest.json" in filenames:
            return os.path.join(dirpath, "HandlerManifest.json")
    return None


def _merge_into(src: str, dest: str) -> None:
    """Move the staged tree into the base dir (which may already hold the agent's config/)."""
    os.makedirs(dest, mode=0o755, exist_ok=True)
    for entry in os.listdir(src):
        s, d = os.path.join(src, entry), os.path.join(dest, entry)
        if os.path.isdir(s) and os.path.isdir(d) and not os.path.islink(d):
            _merge_into(s, d)
        else:
            if os.path.isdir(d) and not os.path.islink(d):
                shutil.rmtree(d)
            os.replace(s, d)
    shutil.rmtree(src, ignore_errors=True)


class PackageChecks(Protocol):
    """Checks of the package's origin (extensions.signing): the zip before unpacking, the manifest before the
    unpacked tree is moved in. Each raises ExtensionError to refuse the package."""

    def check_zip(self, zip_file: str) -> None: ...

    def check_manifest(self, text: str) -> None: ...


def install_package(protocol: Any, files: Any, uris: list, manifest_location: Optional[str] = None,
                    checks: Optional[PackageChecks] = None) -> None:
    """Download (reusing an existing zip), verify, unpack into ``files.base_dir`` and initialise the layout
    (HandlerManifest.json copy, config/ status/ events/, HandlerEnvironment.json). A package ``checks``
    refuses is removed and nothing of it is installed."""
    zpath = zip_path(files.lib_dir, files.name, files.version)
    staging = pathguard.join(files.lib_dir, f".{files.name}-{files.version}.unpacking")
    system.remove(staging)
    for attempt in range(DOWNLOAD_ATTEMPTS):
        if not system.exists(zpath):
            if not uris:
                raise ExtensionError("Failed to download artifacts: No package uri found", code=-1)
            try:
                data = protocol.download_artifact(list(uris), manifest_location=manifest_location,
                                                  what=f"extension package {files.name}-{files.version}")
            except ExtensionError as e:
                raise ExtensionError(f"Failed to download artifacts: {e.msg}", code=CODE_DOWNLOAD) from None
            system.write_file(zpath, data, mode=0o600, fsync=False)
        try:
            _verify_zip(zpath)
        except PackageError as e:
            _retry_or_raise(zpath, staging, attempt, e)
            continue
        if checks is not None:
            try:
                checks.check_zip(zpath)
            except ExtensionError:
                system.remove(zpath)
                raise
        try:
            unpack(zpath, staging)
            break
        except PackageError as e:
            _retry_or_raise(zpath, staging, attempt, e)
    manifest = find_handler_manifest(staging)
    if manifest is None:
        system.remove(staging)
        system.remove(zpath)
        raise ExtensionError("HandlerManifest.json not found", code=1002)
    text = open(manifest, encoding="utf-8-sig", errors="replace").read()
    if checks is not None:
        try:
            checks.check_manifest(text)
        except ExtensionError:
            system.remove(staging)
            system.remove(zpath)
            raise
    _merge_into(system.path(staging), system.path(pathguard.within(files.lib_dir, files.base_dir)))
    system.remove(zpath)
    system.write_file(files.manifest_file, text, mode=0o744, fsync=False)
    initialize_layout(files)


def _retry_or_raise(zpath: str, staging: str, attempt: int, e: PackageError) -> None:
    log.warn("Package {0} is not usable (attempt {1}): {2}", os.path.basename(zpath), attempt + 1, e.msg)
    system.remove(zpath)
    system.remove(staging)
    if attempt == DOWNLOAD_ATTEMPTS - 1:
        raise ExtensionError(f"Failed to download artifacts: {e.msg} (after {DOWNLOAD_ATTEMPTS} attempts)",
                             code=CODE_DOWNLOAD) from None


def _verify_zip(zpath: str) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(system.path(zpath)) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as e:
        raise PackageError(f"The package is not a valid zip file: {type(e).__name__}: {e}") from None
    if bad is not None:
        raise PackageError(f"The package is corrupt (bad CRC in {bad!r})")


def initialize_layout(files: Any) -> None:
    system.mkdir(files.status_dir, mode=0o700)
    system.mkdir(files.config_dir, mode=0o700)
    os.chmod(system.path(files.status_dir), 0o700)
    os.chmod(system.path(files.config_dir), 0o700)
    system.mkdir(files.log_dir, mode=0o755)
    system.mkdir(files.events_dir, mode=0o700)
    try:
        files.write_environment()
    except OSError as e:
        raise ExtensionError(f"Failed to write HandlerEnvironment.json: {e}", code=-1) from None
