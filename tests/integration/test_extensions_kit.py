"""``guestagent ext-test``: the sample handler passes; broken handlers get a readable list of problems."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from guestagent.exthandler import kit
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
