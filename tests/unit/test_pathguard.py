"""osutil.pathguard: a path built from fabric data must resolve inside its root."""

from __future__ import annotations

import os

import pytest

from guestagent.errors import PathEscapeError
from guestagent.osutil import pathguard


@pytest.fixture
def root(tmp_path):
    lib = tmp_path / "var" / "lib" / "waagent"
    lib.mkdir(parents=True)
    (tmp_path / "var" / "lib" / "waagentX").mkdir()
    return str(lib)


@pytest.mark.parametrize("parts", [("Pub.Type-1.0",), ("Pub.Type-1.0", "config", "0.settings"),
                                   ("not-yet", "created", "file"), ("a..b-1.0",), ("..x",), (".",)])
def test_paths_inside_the_root_are_returned_as_built(root, parts):
    assert pathguard.join(root, *parts) == os.path.join(root, *parts)


@pytest.mark.parametrize("parts", [("..",), ("../../../tmp/x",), ("Pub-1.0", "..", "..", "etc"),
                                   ("/etc/passwd",), ("../waagentX",), ("../waagentX/evil",),
                                   ("Pub-1.0/config/../../../escape.0.settings",)])
def test_dot_dots_absolute_parts_and_prefix_tricks_are_refused(root, parts):
    with pytest.raises(PathEscapeError, match="outside"):
        pathguard.join(root, *parts)


def test_a_symlink_leading_out_is_refused_even_below_a_missing_part(root, tmp_path):
    os.symlink(str(tmp_path), os.path.join(root, "Pub.Type-1.0"))
    with pytest.raises(PathEscapeError):
        pathguard.join(root, "Pub.Type-1.0")
    with pytest.raises(PathEscapeError):
        pathguard.join(root, "Pub.Type-1.0", "config", "HandlerState")


def test_a_symlink_inside_the_root_to_the_root_is_fine_and_the_root_may_be_a_symlink(root, tmp_path):
    os.symlink(root, os.path.join(root, "self"))
    assert pathguard.join(root, "self", "x") == os.path.join(root, "self", "x")
    link = str(tmp_path / "lib-link")
    os.symlink(root, link)
    assert pathguard.join(link, "Pub-1.0") == os.path.join(link, "Pub-1.0")


def test_within_checks_an_already_built_path(root):
    assert pathguard.within(root, root) == root
    with pytest.raises(PathEscapeError):
        pathguard.within(root, root + "X/file")
