"""Fixtures for the sandbox tier: a throwaway namespace sandbox per test, and file system images.

Images are built without mounting anything on the host: ext2/ext4 with ``mkfs.ext4 -d <dir>``
(e2fsprogs >= 1.43 populates the file system from a directory), vfat with ``mkfs.vfat`` + ``mcopy``
(mtools). The kernel here has no iso9660/udf (see /proc/filesystems), so the provisioning DVD in
sandbox tests is an ext4 image attached at /dev/sr0.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Union

import pytest

FileData = Union[str, bytes]


def kernel_filesystems() -> set[str]:
    with open("/proc/filesystems", encoding="utf-8") as f:
        return {line.split()[-1] for line in f if line.strip()}


def make_fs_image(image: Union[str, os.PathLike], files: Mapping[str, FileData], *, fstype: str = "ext4",
                  label: Optional[str] = None, size_kb: Optional[int] = None) -> Path:
    """Build a small file system image holding ``files`` ({relative path: content}); returns its path.
    ``fstype``: ext2, ext4 (mkfs.ext4 -d) or vfat (mkfs.vfat + mcopy; skips the test if absent)."""
    from guestagent.lab.sandbox import SandboxUnavailable, build_image

    try:
        return build_image(image, files, fstype=fstype, label=label, size_kb=size_kb)
    except SandboxUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def fs_image(tmp_path):
    """Factory: ``fs_image({"ovf-env.xml": xml}, fstype="ext4", label="CDROM") -> Path``."""
    counter = iter(range(1000))

    def build(files: Mapping[str, FileData], **kw) -> Path:
        return make_fs_image(tmp_path / f"image{next(counter)}.img", files, **kw)

    return build


@pytest.fixture
def sandbox():
    """A fresh Sandbox (hostname "sandbox", loopback 127.63.129.16 and 169.254.169.254), closed after
    the test whatever happens."""
    from guestagent.lab.sandbox import Sandbox, SandboxUnavailable

    try:
        sb = Sandbox()
    except SandboxUnavailable as e:
        pytest.skip(str(e))
    with sb:
        yield sb


@pytest.fixture
def agent(tmp_path, request):
    """The daemon's sandbox (tests/sandbox/agentlab.py), prepared and not started; indirect
    parametrisation (``request.param``) gives one test its own waagent.conf settings."""
    from guestagent.lab.sandbox import SandboxUnavailable
    from tests.sandbox.agentlab import Agent

    try:
        a = Agent(tmp_path, getattr(request, "param", None))
    except SandboxUnavailable as e:
        pytest.skip(str(e))
    try:
        yield a
    finally:
        a.close()


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.sandbox)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="sandbox tests need root (namespaces, loop devices)"))
