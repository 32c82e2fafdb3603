"""ExtensionsConfig / vmSettings parsing: the model, per-handler errors, whole-document refusals."""

from __future__ import annotations

import json

import pytest

from guestagent.errors import ExtensionsConfigError, VmSettingsParseError
from guestagent.exthandler.extensions.manager import ordered_pairs
from guestagent.fabric import wireserver
from guestagent.fabric.scenario import ExtensionSpec, Scenario, SettingsSpec, Step
from guestagent.fabric.server import Fabric
from guestagent.protocol.extconfig import (
    ZERO_GUID,
    ExtensionSettings,
    parse_extensions_config,
    parse_vm_settings,
)
from guestagent.timestamps import MIN_TIMESTAMP, ticks_to_timestamp

HOST = "127.0.0.1"


def fabric(extensions):
    """A fabric (not serving: only its documents are rendered) whose goal state holds ``extensions``."""
    return Fabric(Scenario(steps=[Step(incarnation="3", extensions=extensions)]))


def doc(extensions):
    fab = fabric(extensions)
    return wireserver.extensions_config_xml(fab, fab.view(), HOST)


def test_model_from_extensions_config():
    ext = ExtensionSpec("P.T", "1.2", settings=[SettingsSpec(seq_no=5, public={"a": "é"}, protected={"k": "v"})])
    fab = fabric([ext])
    egs = parse_extensions_config(wireserver.extensions_config_xml(fab, fab.view(), HOST), "3")
    assert (egs.id, egs.source, egs.incarnation, egs.svd_sequence_number) == ("incarnation_3", "Fabric", "3", "3")
    assert egs.status_upload_blob == fab.status_blob_url(HOST)
    [parsed] = egs.extensions
    assert parsed.manifest_uris == [fab.manifest_url(HOST, "P.T"), fab.manifest_url(HOST, "P.T", failover=True)]
    assert parsed.state == "enabled"
    [s] = parsed.settings
    thumbprint, protected = fab.protected_settings(ext, ext.settings[0])
    assert (s.name, s.sequence_number, s.public_settings, s.protected_settings, s.certificate_thumbprint) == (
        "P.T", 5, {"a": "é"}, protected, thumbprint)


def test_invalid_runtime_settings_json_keeps_name_and_seqno():
    xml = doc([ExtensionSpec("P.T", "1.0", settings=[SettingsSpec(seq_no=2, public={})])])
    xml = xml.replace('{"runtimeSettings"', "{not json")
    [ext] = parse_extensions_config(xml, "1").extensions
    assert ext.invalid_setting_reason is None
    assert [(s.name, s.sequence_number, s.public_settings) for s in ext.settings] == [("P.T", 2, None)]


def test_empty_state_and_missing_seqno_make_only_that_handler_invalid():
    xml = doc([ExtensionSpec("A.B", "1.0", settings=[SettingsSpec(seq_no=1, public={})]),
               ExtensionSpec("C.D", "1.0", settings=[SettingsSpec(seq_no=1, public={})])])
    xml = xml.replace('state="enabled"', 'state=""', 1).replace('seqNo="1"', "", 2)
    a, c = parse_extensions_config(xml, "1").extensions
    assert "empty Extensions.Plugins.Plugin.state" in a.invalid_setting_reason
    assert "SeqNo not specified" in c.invalid_setting_reason


@pytest.mark.parametrize("text", ["", "<Extensions", "<!DOCTYPE x [<!ENTITY e 'x'>]><Extensions/>",
                                  "<?xml version='1.0'?><!DOCTYPE x SYSTEM 'http://127.0.0.1/evil'><a/>"])
def test_broken_or_hostile_documents_are_refused(text):
    with pytest.raises(ExtensionsConfigError, match="Error parsing ExtensionsConfig"):
        parse_extensions_config(text, "1")


def test_ticks_conversion():
    assert ticks_to_timestamp(637726657706205217) == "2021-11-16T13:22:50.620522Z"
    assert ticks_to_timestamp(None) == MIN_TIMESTAMP and ticks_to_timestamp("x") == MIN_TIMESTAMP
    assert ticks_to_timestamp(0) == MIN_TIMESTAMP


def vm(**over):
    base = {"extensionGoalStatesSource": "FastTrack", "statusUploadBlob": {"statusBlobType": "PageBlob", "value": "u"},
            "extensionGoalStates": [{"name": "A.B", "version": "1.0", "state": "enabled", "location": "https://m",
                                     "settingsSeqNo": 3, "settings": [{"publicSettings": "{\"k\": 1}"}]}]}
    base.update(over)
    return json.dumps(base)


def test_vm_settings_model_and_case_insensitive_keys():
    text = vm().replace('"settingsSeqNo"', '"SETTINGSSEQNO"').replace('"location"', '"Location"')
    egs = parse_vm_settings(text, "e1")
    assert egs.id == "etag_e1" and egs.status_upload_blob_type == "PageBlob" and egs.activity_id == ZERO_GUID
    assert egs.svd_sequence_number == ZERO_GUID
    [ext] = egs.extensions
    assert ext.manifest_uris == ["https://m"] and ext.settings[0].sequence_number == 3
    assert ext.settings[0].public_settings == {"k": 1}


@pytest.mark.parametrize("over,match", [
    ({"extensionGoalStates": {}}, "should be an array"),
    ({"requiredFeatures": [{"nam": "x"}]}, "missing the 'name'"),
    ({"statusUploadBlob": {"statusBlobType": "BlockBlob"}}, "value"),
    ({"extensionGoalStates": [{"name": "A", "version": "1", "state": "bogus"}]}, "Invalid extension state"),
    ({"extensionGoalStates": [{"name": "A", "version": "1", "state": "enabled", "settingsSeqNo": 0,
                               "settings": [{"protectedSettings": "MII"}]}]}, "thumbprint"),
    ({"extensionGoalStates": [{"name": "A", "version": "1", "state": "enabled", "settingsSeqNo": 0,
                               "settings": [{}, {}]}]}, "multiple settings"),
    ({"extensionGoalStates": [{"name": "A", "version": "1", "state": "enabled", "isMultiConfig": True,
                               "settings": [{"seqNo": 0, "extensionState": "enabled"}]}]}, "extensionName"),
    ({"extensionGoalStates": [{"name": "A", "version": "1", "state": "enabled", "settingsSeqNo": 0,
                               "settings": [{"publicSettings": "{bad"}]}]}, "JSONDecodeError"),
])
def test_vm_settings_violations_reject_the_document(over, match):
    with pytest.raises(VmSettingsParseError, match=match):
        parse_vm_settings(vm(**over), "e2")


@pytest.mark.parametrize("text", ["", "[]", "{bad json", "null"])
def test_vm_settings_not_a_document(text):
    with pytest.raises(VmSettingsParseError):
        parse_vm_settings(text, "e3")


def test_settings_file_json_is_upstream_shape():
    s = ExtensionSettings(name="x", sequence_number=1, public_settings={"b": 1, "a": "é"})
    assert json.dumps({"runtimeSettings": [{"handlerSettings": s.handler_settings()}]}) == (
        '{"runtimeSettings": [{"handlerSettings": {"publicSettings": {"b": 1, "a": "\\u00e9"}, '
        '"protectedSettings": null, "protectedSettingsCertThumbprint": null}}]}')


def test_processing_order_puts_removals_first_deepest_dependents_first():
    xml = doc([ExtensionSpec("Z.Enabled1", "1", settings=[SettingsSpec(seq_no=0, public={},
                                                                                   dependency_level=1)]),
               ExtensionSpec("Y.Enabled0", "1", settings=[SettingsSpec(seq_no=0, public={})]),
               ExtensionSpec("X.Remove2", "1", state="uninstall",
                           settings=[SettingsSpec(seq_no=0, public={}, dependency_level=2)]),
               ExtensionSpec("W.Remove0", "1", state="disabled", settings=[SettingsSpec(seq_no=0, public={})]),
               ExtensionSpec("V.NoSettings", "1")])
    pairs = ordered_pairs(parse_extensions_config(xml, "1").extensions)
    assert [(k, e.name) for k, e, _ in pairs] == [(-3, "X.Remove2"), (-1, "W.Remove0"), (0, "Y.Enabled0"),
                                                  (0, "V.NoSettings"), (1, "Z.Enabled1")]


# --- issue 13: names and numbers checked at the edge -------------------------------------------------------
@pytest.mark.parametrize("name, version, unsafe, words", [
    ("Microsoft.Azure.Extensions.CustomScript", "2.1.10", False, None),
    ("Pub.Type_x-1", "1", False, None),
    ("../x", "1.0", True, "Invalid handler name"),
    ("Pub/Type", "1.0", True, "Invalid handler name"),
    (".hidden", "1.0", True, "Invalid handler name"),
    ("Pub..Type", "1.0", True, "Invalid handler name"),
    ("P" * 201, "1.0", True, "longer than 200"),
    ("Pub.Type", "1.0/../..", True, "Invalid handler version"),
    ("Pub.Type", "1.0-beta", True, "Invalid handler version"),
    ("Pub.Type", "1." * 25 + "1", True, "Invalid handler version"),
])
def test_handler_names_and_versions(name, version, unsafe, words):
    [ext] = parse_extensions_config(doc([ExtensionSpec(name, version, settings=[SettingsSpec(seq_no=0)])]),
                                    "3").extensions
    assert ext.unsafe is unsafe
    if words is None:
        assert ext.invalid_setting_reason is None and len(ext.settings) == 1
    else:
        assert words in ext.invalid_setting_reason and ext.settings == []


@pytest.mark.parametrize("seq", ["+1", "1.5", " 1", "1_0", "-1", "0x1", "1" * 19])
def test_extensions_config_sequence_numbers_must_be_plain_non_negative_integers(seq):
    text = doc([ExtensionSpec("P.T", "1.0", settings=[SettingsSpec(seq_no=7)])]).replace('seqNo="7"', f'seqNo="{seq}"')
    [ext] = parse_extensions_config(text, "3").extensions
    assert "Invalid sequence number" in ext.invalid_setting_reason and not ext.unsafe


def test_a_bad_multi_config_extension_name_drops_the_handlers_settings():
    ext = ExtensionSpec("P.T", "1.0", multi_config=True,
                        settings=[SettingsSpec(seq_no=0, name="ok"), SettingsSpec(seq_no=0, name="a/../../b")])
    [parsed] = parse_extensions_config(doc([ext]), "3").extensions
    assert "Invalid multi-config extension name 'a/../../b'" in parsed.invalid_setting_reason
    assert parsed.settings == [] and not parsed.unsafe


def test_vm_settings_refusals_are_per_handler_the_rest_of_the_document_stands():
    good = {"name": "P.Good", "version": "1.0", "state": "enabled", "settingsSeqNo": 3, "settings": [{}]}
    bad = [dict(good, name="../x"), dict(good, name="P.Ver", version="1.0/.."),
           dict(good, name="P.Multi", isMultiConfig="false"), dict(good, name="P.Float", settingsSeqNo=2.0),
           dict(good, name="P.Bool", settingsSeqNo=False), dict(good, name="P.Neg", settingsSeqNo=-3),
           dict(good, name="P.Mc", isMultiConfig=True,
                settings=[{"extensionName": "../e", "seqNo": 0, "extensionState": "enabled"}])]
    egs = parse_vm_settings(json.dumps({"extensionGoalStates": [good, *bad]}), "e1")
    by_name = {e.name: e for e in egs.extensions}
    assert by_name["P.Good"].invalid_setting_reason is None and by_name["P.Good"].settings[0].sequence_number == 3
    assert [(e.name, e.unsafe) for e in egs.extensions if e.invalid_setting_reason] == [
        ("../x", True), ("P.Ver", True), ("P.Multi", False), ("P.Float", False), ("P.Bool", False), ("P.Neg", False),
        ("P.Mc", False)]
    assert by_name["P.Mc"].settings == []
