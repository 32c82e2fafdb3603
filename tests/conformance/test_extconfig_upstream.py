"""Upstream's own sample documents through our parsers: every ExtensionsConfig / vmSettings sample parses or
is refused with upstream's reason, manifests and HandlerManifest.json samples give upstream's values, and
upstream's status-file samples are reported as upstream reports them."""

from __future__ import annotations

import json

import pytest

from guestagent.errors import VmSettingsParseError
from guestagent.exthandler.extensions import status as ext_status
from guestagent.exthandler.extensions.manifest import (
    parse_handler_manifest,
    parse_plugin_manifest,
    select_package,
)
from guestagent.protocol.extconfig import parse_extensions_config, parse_vm_settings

INVALID_REASONS = {
    "ext_conf_multiple_depends_on_for_single_handler.xml": "Extension Handler can only have a single dependsOn node",
    "ext_conf_multiple_runtime_settings_same_plugin.xml": "Multiple RuntimeSettings found for the same extension",
    "ext_conf_multiple_settings_for_same_handler.xml": "Multiple plugin settings found for the same extension",
    "ext_conf_plugin_settings_version_mismatch.xml": "Extension PluginSettings Version Mismatch!",
    "ext_conf_single_and_multi_config_settings_same_plugin.xml": "Both RuntimeSettings and ExtensionRuntimeSettings",
}


def test_every_extensions_config_sample_parses(upstream):
    files = sorted(upstream.glob("wire/**/ext_conf*.xml")) + sorted(upstream.glob("hostgaplugin/ext_conf*.xml"))
    assert len(files) > 40
    for f in files:
        egs = parse_extensions_config(f.read_text(encoding="utf-8"), "7")
        assert egs.id == "incarnation_7" and egs.source == "Fabric" and egs.channel == "WireServer"
        assert egs.status_upload_blob_type in ("BlockBlob", "PageBlob")
        reason = INVALID_REASONS.get(f.name)
        invalid = [e.invalid_setting_reason for e in egs.extensions if e.invalid_setting_reason]
        if reason:
            assert invalid and invalid[0].startswith(reason), f.name
        elif f.name != "ext_conf_invalid_and_valid_handlers.xml":
            assert not invalid, (f.name, invalid)


def test_extensions_config_details(upstream):
    egs = parse_extensions_config((upstream / "wire/ext_conf_multiple_extensions.xml").read_text(), "1")
    assert egs.status_upload_blob.startswith("https://") and egs.status_upload_blob == egs.status_upload_blob.strip()
    assert egs.created_on_timestamp == "2021-11-16T13:22:50.620522Z"  # upstream's float rounding (03 §1)
    first = egs.extensions[0]
    s = first.settings[0]
    assert s.certificate_thumbprint and s.protected_settings.startswith("MII") and isinstance(s.public_settings, dict)
    mc = parse_extensions_config((upstream / "wire/multi-config/ext_conf_with_multi_config.xml").read_text(), "4")
    run_command = mc.extensions[0]
    assert run_command.supports_multi_config
    assert [(x.name, x.sequence_number, x.dependency_level) for x in run_command.settings] == [
        ("firstRunCommand", 2, 0), ("secondRunCommand", 2, 3), ("thirdRunCommand", 1, 4)]
    assert mc.status_upload_blob_type == "PageBlob" and mc.required_features == ["MultipleExtensionsPerHandler"]
    rsm = parse_extensions_config((upstream / "wire/ext_conf_rsm_version.xml").read_text(), "1")
    fam = rsm.agent_families[0]
    assert fam.name == "Prod" and fam.version and fam.is_version_from_rsm is True and fam.uris
    no_settings = parse_extensions_config((upstream / "wire/ext_conf_no_settings.xml").read_text(), "1")
    assert no_settings.extensions[0].settings == []
    bad_type = parse_extensions_config((upstream / "hostgaplugin/ext_conf-invalid_blob_type.xml").read_text(), "1")
    assert bad_type.status_upload_blob_type == "BlockBlob"


def test_every_vm_settings_sample_parses_or_is_refused(upstream):
    for f in sorted(upstream.glob("hostgaplugin/vm_settings*.json")):
        text = f.read_text(encoding="utf-8")
        if f.name == "vm_settings-parse_error.json":
            with pytest.raises(VmSettingsParseError, match="Etag: 123"):
                parse_vm_settings(text, "123")
            continue
        egs = parse_vm_settings(text, "123")
        assert egs.id == "etag_123" and egs.channel == "HostGAPlugin" and egs.source in ("FastTrack", "Fabric")


def test_vm_settings_details(upstream):
    egs = parse_vm_settings((upstream / "hostgaplugin/vm_settings.json").read_text(), "9")
    assert egs.source == "FastTrack" and egs.on_hold is True and egs.svd_sequence_number == "1"
    assert egs.created_on_timestamp == "2021-11-16T13:22:50.620529Z"
    by_name = {e.name: e for e in egs.extensions}
    cse = by_name["Microsoft.Azure.Extensions.CustomScript"]
    assert cse.settings[0].dependency_level == 1 and cse.settings[0].public_settings["commandToExecute"]
    assert len(cse.manifest_uris) == 3
    rc = by_name["Microsoft.CPlat.Core.RunCommandHandlerLinux"]
    assert rc.supports_multi_config and [s.name for s in rc.settings] == ["MCExt1", "MCExt2", "MCExt3"]
    assert [s.dependency_level for s in rc.settings] == [2, 1, 0]
    assert egs.supports_encoded_signature is False
    sig = parse_vm_settings((upstream / "hostgaplugin/vm_settings-supported_hgap_version_for_signature.json")
                            .read_text(), "1")
    assert sig.supports_encoded_signature is True
    no_blob = parse_vm_settings((upstream / "hostgaplugin/vm_settings-no_status_upload_blob.json").read_text(), "1")
    assert no_blob.status_upload_blob is None and no_blob.status_upload_blob_type == "BlockBlob"


def test_extension_manifest_samples(upstream):
    packages = parse_plugin_manifest((upstream / "wire/manifest.xml").read_text())
    versions = [p.version for p in packages]
    assert versions == sorted(versions, key=lambda v: tuple(int(x) for x in v.split(".")))
    assert select_package(packages, "1.1").version == "1.1.1"
    assert select_package(packages, "1.0.0").version == "1.0.0"
    assert select_package(packages, "9.0") is None


def test_handler_manifest_samples(upstream):
    folder = upstream / "ext/handler_manifest"
    valid = parse_handler_manifest((folder / "valid_manifest.json").read_text())
    assert valid.command("enable")
    strings = parse_handler_manifest((folder / "manifest_boolean_fields_strings.json").read_text())
    assert strings.report_heartbeat and strings.continue_on_update_failure and strings.supports_multiple_extensions
    invalid = parse_handler_manifest((folder / "manifest_boolean_fields_invalid.json").read_text())
    assert not invalid.report_heartbeat and not invalid.supports_multiple_extensions
    assert set(invalid.non_boolean) == {"reportHeartbeat", "continueOnUpdateFailure", "supportsMultipleExtensions"}
    minimal = parse_handler_manifest((folder / "manifest_no_optional_fields.json").read_text())
    assert minimal.update_with_install and not minimal.report_heartbeat
    sample = parse_handler_manifest((upstream / "ext/sample_ext-1.3.0/HandlerManifest.json").read_text())
    assert sample.command("install")


def test_status_file_samples(upstream):
    ext = upstream / "ext"
    ok = ext_status.read_status(str(ext / "sample-status.json"), "My.Handler")
    st = ok["status"]
    assert st["name"] == "My.Handler" and st["status"] == "success" and st["code"] == 1
    # the sample's substatus code is the string "0": forwarded as the handler wrote it, as upstream's
    # parse_ext_substatus does (issue 14)
    assert st["substatus"][0]["code"] == "0" and "snapshotInfo" not in st
    for name in ("sample-status-invalid-json-format.json", "sample-status-invalid-format-emptykey-line7.json",
                 "sample-status-invalid-status-no-status-status-key.json"):
        bad = ext_status.read_status(str(ext / name), "My.Handler", retry=False)["status"]
        assert bad["status"] == "error" and bad["code"] == 1012, name
    big = ext_status.read_status(str(ext / "sample-status-very-large.json"), "X")["status"]
    msg = big["formattedMessage"]["message"]
    assert len(msg) == 1024 + len(ext_status.TRUNCATED) and msg.endswith(ext_status.TRUNCATED)
    many = ext_status.read_status(str(ext / "sample-status-very-large-multiple-substatuses.json"), "X")["status"]
    kept = many["substatus"]
    assert 0 < len(kept) < 42
    assert sum(len(s["name"]) + len(s["formattedMessage"]["message"]) for s in kept) <= ext_status.MAX_STATUS_CHARS
    json.dumps(many)
