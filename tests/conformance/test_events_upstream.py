"""Upstream's event samples (events/**, ext/event_from_extension.xml) handled as upstream handles them."""

from __future__ import annotations

import shutil

import pytest

from guestagent import events
from guestagent.exthandler import extevents, telemetry


def test_agent_and_legacy_event_files(upstream):
    d = upstream / "events"
    for name in ("1478123456789000.tld", "1478123456789001.tld", "1479766858966718.tld", "custom_script_1.tld",
                 "custom_script_2.tld", "custom_script_extra_parameters.tld", "custom_script_nonascii_characters.tld",
                 "event_with_callstack.waagent.tld", "event_with_sas_token.tld", "legacy_agent.tld",
                 "legacy_agent_no_timestamp.tld", "custom_script_no_read_access.tld"):
        ev = telemetry.parse_event((d / name).read_bytes().decode("utf-8"))
        assert ev.event_id == 1 and ev.provider_id.startswith("69B669B9") and ev.file_type == "json", name
        assert ev.get("Name"), name
    with pytest.raises(telemetry.EventParseError):
        telemetry.parse_event((d / "custom_script_invalid_json.tld").read_text())
    with pytest.raises(UnicodeError):
        (d / "custom_script_utf-16.tld").read_bytes().decode("utf-8")
    nonascii = telemetry.parse_event((d / "custom_script_nonascii_characters.tld").read_bytes().decode("utf-8"))
    assert any(ord(c) > 127 for c in str(nonascii.get("Message")))
    sas = telemetry.parse_event((d / "event_with_sas_token.tld").read_text())
    telemetry.redact_message(sas)
    assert "sig=" not in str(sas.get("Message")).lower() or "<redacted>" in str(sas.get("Message"))


def test_legacy_xml_event(upstream):
    ev = telemetry.parse_event((upstream / "ext/event_from_extension.xml").read_text())
    assert (ev.event_id, ev.provider_id, ev.file_type) == (1, events.PROVIDER_ID, "xml")
    assert ev.get("Name") == "Microsoft.OSTCExtensions.VMAccessForLinux" and ev.get("OperationSuccess") is True
    assert ev.get("IsInternal") is False and ev.get("Duration") == 0
    assert ev.is_extension_event()
    telemetry.complete_legacy_event(ev, 0.0)
    assert [n for n, _ in ev.parameters][:6] == ["OperationSuccess", "Version", "Name", "Message", "Operation",
                                                  "Duration"]
    assert ev.get("GAVersion").startswith("WALinuxAgent-") and ev.get("ExtensionType") == "xml"


# (captured, {reason: count}) per sample folder of events/extension_events
EXPECTED = {
    "different_cases": (2, {}),
    "empty_message": (0, {"MissingKeyError: Message not found": 1,
                          "EmptyMessageError: Message should not be empty": 1}),
    "extra_parameters": (2, {"MissingKeyError: Message not found": 1}),
    "int_type": (1, {}),
    "large_messages": (1, {}),
    "missing_parameters": (0, {"MissingKeyError: eventpid not found": 2, "MissingKeyError: Message not found": 2,
                               "MissingKeyError: version not found": 3}),
    "mix_files": (9, {"MissingKeyError: Message not found": 2}),
    "sas_files": (2, {}),
    "special_chars": (1, {}),
    "well_formed_files": (23, {}),
}


@pytest.mark.parametrize("folder", sorted(EXPECTED))
def test_extension_event_folders(upstream, tmp_path, folder):
    ev_dir = tmp_path / "log/Microsoft.OSTCExtensions.Test/events"
    ev_dir.mkdir(parents=True)
    for f in (upstream / "events/extension_events" / folder).iterdir():
        shutil.copy(f, ev_dir / f.name)
    result = extevents.collect(str(tmp_path / "log"), str(tmp_path / "lib"), sleep=lambda s: None)
    captured, dropped = EXPECTED[folder]
    assert result.captured["Microsoft.OSTCExtensions.Test"] == captured
    got = {k.replace("[InvalidExtensionEventError] ", ""): v
           for k, v in result.dropped.get("Microsoft.OSTCExtensions.Test", {}).items()}
    assert got == dropped
    assert list(ev_dir.iterdir()) == []  # every processed file deleted, the folder emptied
    written = list((tmp_path / "lib/events").glob("*.waagent.tld")) if captured else []
    bodies = [telemetry.parse_event(p.read_text()) for p in written]
    etp = [b for b in bodies if str(b.get("EventName", "")).startswith("Microsoft.OSTCExtensions.Test-")]
    assert len(etp) == captured
    for b in etp:
        assert b.provider_id == events.LOG_PROVIDER_ID and b.event_id == 7
        assert 0 < len(b.get("Context1")) <= extevents.MAX_MESSAGE and "sig=" not in b.get("Context1").lower()


def test_malformed_extension_files(upstream, tmp_path):
    ev_dir = tmp_path / "log/Microsoft.OSTCExtensions.Test/events"
    shutil.copytree(upstream / "events/extension_events/malformed_files", ev_dir)
    result = extevents.collect(str(tmp_path / "log"), str(tmp_path / "lib"), sleep=lambda s: None)
    assert result.captured["Microsoft.OSTCExtensions.Test"] == 0
    # 1592008079.json lacks Message; bad_name_file.json / .tld are not <digits>.json; files are removed, the
    # bad_json_files sub-folder is not a file (upstream cannot remove it either and logs an error)
    assert [p.name for p in ev_dir.iterdir()] == ["bad_json_files"]
