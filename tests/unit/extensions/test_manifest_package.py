"""Versions, manifests and hostile packages."""

from __future__ import annotations

import io
import os
import stat
import zipfile

import pytest

from guestagent.errors import ExtensionError
from guestagent.exthandler.extensions.manifest import (
    parse_handler_manifest,
    parse_plugin_manifest,
    select_package,
)
from guestagent.exthandler.extensions.package import PackageError, unpack
from guestagent.exthandler.extensions.versions import compare_versions, version_matches


def test_version_rules():
    assert compare_versions("1.2", "1.2.0.0") == 0 and compare_versions("1.10", "1.9") == 1
    assert version_matches("1.0", "1.0.5.3") and version_matches("2.1.6", "2.1.6.1")
    assert not version_matches("2.1.6", "2.1.7") and not version_matches("1.0.0", "1.0")
    assert compare_versions("1.0rc1", "1.0") == 0


def test_manifest_merges_internal_plugins_and_skips_garbage_versions():
    xml = ("<PluginVersionManifest><Plugins><Plugin><Version>1.2</Version><Uris><Uri>u12</Uri></Uris></Plugin>"
           "<Plugin><Version>junk</Version></Plugin></Plugins><InternalPlugins><Plugin><Version>1.10</Version>"
           "<Uris><Uri>u110</Uri></Uris></Plugin></InternalPlugins></PluginVersionManifest>")
    packages = parse_plugin_manifest(xml)
    assert [p.version for p in packages] == ["1.2", "1.10"] and packages[1].is_internal
    assert select_package(packages, "1").version == "1.10"


# not JSON: upstream's 'Malformed manifest file' (1003); JSON of the wrong shape: upstream's data[0] or
# ['handlerManifest'] raises, and its catch-all reports code -1
@pytest.mark.parametrize("text,code", [("{", 1003), ("[]", -1), ('[{"handlerManifest": 3}]', -1),
                                       ('{"handlerManifest": {"enableCommand": "e.sh"}}', -1)])
def test_bad_handler_manifest_codes(text, code):
    with pytest.raises(ExtensionError) as e:
        parse_handler_manifest(text)
    assert e.value.code == code


def test_handler_manifest_defaults_and_missing_command():
    m = parse_handler_manifest('\ufeff[{"handlerManifest": {"enableCommand": "/bin/e.sh", "updateMode": "x"}}]')
    assert m.command("enable") == "/bin/e.sh" and not m.update_with_install
    with pytest.raises(ExtensionError, match="no installCommand"):
        m.command("install")


def make_zip(tmp_path, entries, name="p.zip"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as zf:
        for entry in entries:
            if isinstance(entry, zipfile.ZipInfo):
                zf.writestr(entry, b"target")
            else:
                zf.writestr(entry[0], entry[1])
    return str(path)


def symlink_info(name):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize("entries,match", [
    ([("/etc/evil", "x")], "absolute path"),
    ([("a/../../evil", "x")], "outside the package"),
    ([symlink_info("link")], "symbolic link"),
])
def test_hostile_members_are_refused_and_nothing_is_left(tmp_path, entries, match):
    target = tmp_path / "out"
    with pytest.raises(PackageError, match=match):
        unpack(make_zip(tmp_path, [("ok.txt", "fine"), *entries]), str(target))
    assert not target.exists() and not (tmp_path / "evil").exists()


def test_size_caps(tmp_path):
    z = make_zip(tmp_path, [("big.bin", b"\0" * 100000)])
    with pytest.raises(PackageError, match="more than 1000 bytes"):
        unpack(z, str(tmp_path / "out"), max_bytes=1000)
    z = make_zip(tmp_path, [(f"f{i}", "x") for i in range(5)], "many.zip")
    with pytest.raises(PackageError, match="too many members"):
        unpack(z, str(tmp_path / "out2"), max_members=3)


def test_lying_header_bomb_is_caught_while_writing(tmp_path):
    z = make_zip(tmp_path, [("bomb.bin", b"\0" * 50000)])
    data = bytearray(open(z, "rb").read())
    # shrink the declared sizes in both headers: the stream still inflates to 50000 bytes
    for sig in (b"PK\x01\x02", b"PK\x03\x04"):
        i = data.find(sig)
        off = 24 if sig == b"PK\x01\x02" else 22
        data[i + off:i + off + 4] = (10).to_bytes(4, "little")
    open(z, "wb").write(bytes(data))
    with pytest.raises(PackageError):
        unpack(z, str(tmp_path / "out"), max_bytes=1000)
    assert not (tmp_path / "out").exists()


def test_truncated_zip_is_a_clear_error(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.txt", "x" * 1000)
    path = tmp_path / "t.zip"
    path.write_bytes(buf.getvalue()[:200])
    with pytest.raises(PackageError, match="unpack"):
        unpack(str(path), str(tmp_path / "out"))


def test_unpacked_files_get_owner_execute(tmp_path):
    unpack(make_zip(tmp_path, [("bin/run.sh", "echo"), ("HandlerManifest.json", "[]")]), str(tmp_path / "out"))
    assert os.stat(tmp_path / "out" / "bin" / "run.sh").st_mode & 0o100
