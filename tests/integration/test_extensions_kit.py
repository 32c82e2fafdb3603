"""``guestagent ext-test``: the sample handler passes; broken handlers get a readable list of problems."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from guestagent.kit import main as kit
from guestagent.tools import main as tools_main

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample-handler"


def test_sample_handler_keeps_the_contract(capsys):
    assert tools_main(["ext-test", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "install -> enable -> enable -> disable -> update -> uninstall -> install -> enable -> disable -> " \
           "uninstall" in out
    assert "protected settings decrypted" in out or "could not be decrypted" in out
    assert "env ConfigSequenceNumber=2" in out and "the handler kept the contract" in out


def test_fast_track_delivery(capsys):
    assert kit.main([str(SAMPLE), "--fast-track"]) == 0


def test_broken_handler_is_reported(tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(SAMPLE, broken)
    manifest = json.loads((broken / "HandlerManifest.json").read_text())
    del manifest[0]["handlerManifest"]["uninstallCommand"]
    manifest[0]["handlerManifest"]["reportHeartbeat"] = "yes"
    (broken / "HandlerManifest.json").write_text(json.dumps(manifest))
    script = broken / "bin" / "handler.sh"
    script.write_text(script.read_text().replace("    echo \"sample handler: $op (seq $seq)\"\n",
                                                 "    echo \"sample handler: $op (seq $seq)\"; exit 3\n"))
    out = io.StringIO()
    assert kit.run_ext_test(str(broken), out=out) == 1
    text = out.getvalue()
    assert "handlerManifest.uninstallCommand is missing" in text
    assert "reportHeartbeat should be a JSON boolean" in text
    assert "install exited with 3" in text and "Non-zero exit code: 3" in text


def test_missing_manifest_is_a_usage_error(tmp_path, capsys):
    assert kit.main([str(tmp_path)]) == 2


def test_own_settings_reach_the_handler_and_a_leak_is_reported(tmp_path, capsys):
    secret_value = "kit-own-secret-4711"
    assert kit.main([str(SAMPLE), "--settings", '{"commandToExecute": "true"}',
                     "--protected-settings", json.dumps({"token": secret_value})]) == 0
    out = capsys.readouterr().out
    assert "protected settings decrypted" in out and secret_value not in out

    leaky = tmp_path / "leaky"
    shutil.copytree(SAMPLE, leaky)
    script = leaky / "bin" / "handler.sh"
    # a handler that prints its decrypted protected settings: the kit must say so
    script.write_text(script.read_text().replace(
        '    echo "sample handler: enable (seq $seq): $secret_note"\n',
        '    echo "sample handler: enable (seq $seq): $secret_note"\n'
        '    json_string protectedSettings "config/$seq.settings" | base64 -d | openssl smime -decrypt -inform DER'
        ' -recip "$lib/$thumb.crt" -inkey "$lib/$thumb.prv"\n'))
    settings = tmp_path / "protected.json"
    settings.write_text(json.dumps({"token": secret_value}))
    out = io.StringIO()
    assert kit.run_ext_test(str(leaky), out=out, protected_settings={"token": secret_value}) == 1
    assert "enable printed the protected settings in clear text" in out.getvalue()
    assert kit.main([str(leaky), "--protected-settings", f"@{settings}"]) == 1


def test_bad_settings_options_are_usage_errors(tmp_path, capsys):
    assert kit.main([str(SAMPLE), "--settings", "{not json"]) == 2
    assert "--settings is not a JSON document" in capsys.readouterr().err
    assert kit.main([str(SAMPLE), "--protected-settings", "[1, 2]"]) == 2
    assert kit.main([str(SAMPLE), "--protected-settings", f"@{tmp_path}/missing.json"]) == 2
