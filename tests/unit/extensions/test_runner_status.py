"""Running handler commands and reading what extensions report."""

from __future__ import annotations

import json
import os
import time

import pytest

from guestagent.exthandler.extensions import runner
from guestagent.exthandler.extensions import status as ext_status


def test_output_format_keeps_tails_within_3200_chars():
    assert runner.format_output("out", "err") == "[stdout]\nout\n\n[stderr]\nerr"
    text = runner.format_output("a" * 5000 + "END1", "b" * 5000 + "END2")
    assert len(text) <= runner.OUTPUT_CHARS and "END1" in text and "END2" in text
    text = runner.format_output("short", "c" * 9000 + "TAIL")
    assert "short" in text and text.endswith("TAIL") and len(text) <= runner.OUTPUT_CHARS


def run(tmp_path, command, op="enable", timeout=None, **env):
    base = tmp_path / "h"
    base.mkdir(exist_ok=True)
    (base / "cmd.sh").write_text(command)
    os.chmod(base / "cmd.sh", 0o755)
    return runner.run_command(op, str(base), "/cmd.sh", dict(env), handler_name="T", timeout=timeout)


def test_exit_is_noticed_at_once_and_background_children_do_not_block(tmp_path):
    start = time.monotonic()
    result = run(tmp_path, "#!/bin/sh\n(sleep 30 &) ; echo started\n")
    assert time.monotonic() - start < 1.0 and result.exit_code == 0 and "started" in result.output


def test_non_zero_exit_carries_code_and_output(tmp_path):
    with pytest.raises(runner.CommandFailed) as e:
        run(tmp_path, "#!/bin/sh\necho oops; echo bad >&2; exit 9\n", op="install")
    assert e.value.code == 1007 and e.value.exit_code == 9
    assert "Non-zero exit code: 9" in e.value.msg and "oops" in e.value.msg and "bad" in e.value.msg


def test_timeout_kills_the_process_group(tmp_path):
    marker = tmp_path / "alive"
    start = time.monotonic()
    with pytest.raises(runner.CommandFailed) as e:
        run(tmp_path, f"#!/bin/sh\n(sleep 2; touch {marker}) &\nsleep 30\n", timeout=0.3)
    assert time.monotonic() - start < 2 and e.value.code == 1011 and "Timeout(0)" in e.value.msg
    time.sleep(2.2)
    assert not marker.exists()


def test_environment_is_merged_with_process_environment_winning(tmp_path, monkeypatch):
    monkeypatch.setenv("ConfigSequenceNumber", "77")
    env = runner.base_environment("/b", "1.0", "168.63.129.16", 3, "Ext")
    assert env["ConfigExtensionName"] == "Ext" and json.loads(env["AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES"])
    result = run(tmp_path, "#!/bin/sh\necho seq=$ConfigSequenceNumber\n", **env)
    assert "seq=77" in result.output


def write(path, value):
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return str(path)


def test_status_validation(tmp_path):
    good = [{"status": {"status": "success", "code": "3", "formattedMessage": {"lang": "en-US", "message": "m"},
                        "substatus": None, "extra": 1}}]
    st = ext_status.read_status(write(tmp_path / "a", good), "N")["status"]
    assert st["code"] == "3" and st["name"] == "N" and "substatus" not in st and "extra" not in st
    odd = [{"status": {"status": "weird"}}]
    assert ext_status.read_status(write(tmp_path / "b", odd), "N")["status"]["status"] == "error"
    assert ext_status.read_status(write(tmp_path / "c", []), "N") is None
    for bad in ({"status": {}}, [{"status": {"status": "success", "formattedMessage": {"lang": "x"}}}],
                [{"status": {"status": "success", "substatus": [{"status": "nope"}]}}], [{"nostatus": 1}]):
        st = ext_status.read_status(write(tmp_path / "d", bad), "N", retry=False)["status"]
        assert (st["status"], st["code"]) == ("error", 1012), bad
    missing = ext_status.read_status(str(tmp_path / "none"), "N")["status"]
    assert missing["status"] == "transitioning" and missing["code"] == 0


def test_placeholder_does_not_overwrite(tmp_path):
    path = str(tmp_path / "s" / "0.status")
    ext_status.write_placeholder(path, "N", "Enable", 1009, "failed")
    ext_status.write_placeholder(path, "N", "Enable", 1, "second")
    st = ext_status.read_status(path, "N")["status"]
    assert (st["status"], st["code"], st["formattedMessage"]["message"]) == ("error", 1009, "failed")


def test_heartbeat(tmp_path):
    path = write(tmp_path / "heartbeat.log", [{"version": 1.0, "heartbeat": {"status": "ready", "code": 0,
                                                "formattedMessage": {"lang": "en-US", "message": "ok"}}}])
    assert ext_status.read_heartbeat(path) == ("ready", "ok")
    old = time.time() - 700
    os.utime(path, (old, old))
    assert ext_status.read_heartbeat(path) == ("Unresponsive", None)
    with pytest.raises(OSError):
        ext_status.read_heartbeat(str(tmp_path / "missing"))
