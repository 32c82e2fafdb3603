"""The kit's flow (what ``guestagent ext-test`` runs inside its sandbox), in-process in a temporary directory:
the sample handler passes; broken handlers get a readable list of problems; a manifest upstream would fail on
is refused before anything runs. The command line in the sandbox is tests/sandbox/test_ext_test.py."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from guestagent.kit import main as kit
from guestagent.kit.flow import KitOptions, run_ext_test, upstream_manifest_problems

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "examples" / "sample-handler"


def _run(folder: Path, **options) -> tuple[int, str]:
    out = io.StringIO()
    return run_ext_test(str(folder), KitOptions(**options), out=out), out.getvalue()


def test_sample_handler_keeps_the_contract(tmp_path):
    code, out = _run(SAMPLE, report_dir=str(tmp_path / "report"))
    assert code == 0, out
    assert "install -> enable -> enable -> disable -> update -> uninstall -> install -> enable -> disable -> " \
           "uninstall" in out
    assert "protected settings decrypted" in out and "certificate " in out and "(mode 600)" in out
    assert "env ConfigSequenceNumber=2" in out and "the handler kept the contract" in out
    report = tmp_path / "report"
    assert (report / "commands" / "01-install.txt").read_text().startswith("command: ")
    assert (report / "status" / "1-install-enable" / "status" / "0.status").is_file()
    assert "bin/handler.sh enable" in (report / "logs" / "Kit.SampleHandler" / "CommandExecution.log").read_text()


def test_fast_track_delivery():
    assert _run(SAMPLE, fast_track=True)[0] == 0


def _broken(tmp_path: Path, edit) -> Path:
    broken = tmp_path / "broken"
    shutil.copytree(SAMPLE, broken)
    manifest = json.loads((broken / "HandlerManifest.json").read_text())
    (broken / "HandlerManifest.json").write_text(json.dumps(edit(manifest)))
    return broken


def test_failing_handler_is_reported(tmp_path):
    def edit(manifest):
        manifest[0]["handlerManifest"]["reportHeartbeat"] = "yes"
        return manifest

    broken = _broken(tmp_path, edit)
    script = broken / "bin" / "handler.sh"
    script.write_text(script.read_text().replace("    echo \"sample handler: $op (seq $seq)\"\n",
                                                 "    echo \"sample handler: $op (seq $seq)\"; exit 3\n"))
    code, text = _run(broken)
    assert code == 1
    assert "reportHeartbeat should be a JSON boolean" in text
    assert "install exited with 3" in text and "Non-zero exit code: 3" in text


@pytest.mark.parametrize("edit,message", [
    (lambda m: m[0], "is a JSON object, not a list: upstream reads data[0]"),
    (lambda m: [], "is an empty list"),
    (lambda m: [{"handlerManifest": None}], "handlerManifest is a JSON null"),
    (lambda m: [{"name": "x"}], "handlerManifest is missing"),
    (lambda m: [{"handlerManifest": {k: v for k, v in m[0]["handlerManifest"].items() if k != "uninstallCommand"}}],
     "handlerManifest.uninstallCommand is missing: upstream fails the uninstall operation"),
    (lambda m: [{"handlerManifest": dict(m[0]["handlerManifest"], enableCommand=["bin/handler.sh"])}],
     "enableCommand is a JSON list, not a string"),
    (lambda m: [{"handlerManifest": dict(m[0]["handlerManifest"], updateMode=1)}], "updateMode is a JSON number"),
    (lambda m: [dict(m[0], resourceLimits=[])], "resourceLimits is a JSON list"),
])
def test_what_upstream_fails_on_is_refused_before_anything_runs(tmp_path, edit, message):
    code, text = _run(_broken(tmp_path, edit))
    assert code == 1 and message in text, text
    assert "refused: upstream would fail on this handler" in text and "-- install" not in text


def test_upstream_manifest_problems_accepts_what_upstream_reads():
    assert upstream_manifest_problems((SAMPLE / "HandlerManifest.json").read_text()) == []
    assert "not JSON" in upstream_manifest_problems("\ufeff{")[0]


def test_own_settings_reach_the_handler_and_a_leak_is_reported(tmp_path):
    secret_value = "kit-own-secret-4711"
    code, out = _run(SAMPLE, public={"commandToExecute": "true"}, protected={"token": secret_value})
    assert code == 0 and "protected settings decrypted" in out and secret_value not in out

    leaky = tmp_path / "leaky"
    shutil.copytree(SAMPLE, leaky)
    script = leaky / "bin" / "handler.sh"
    # a handler that prints its decrypted protected settings: the kit must say so
    script.write_text(script.read_text().replace(
        '    echo "sample handler: enable (seq $seq): $secret_note"\n',
        '    echo "sample handler: enable (seq $seq): $secret_note"\n'
        '    json_string protectedSettings "config/$seq.settings" | base64 -d | openssl smime -decrypt -inform DER'
        ' -recip "$lib/$thumb.crt" -inkey "$lib/$thumb.prv"\n'))
    code, out = _run(leaky, protected={"token": secret_value})
    assert code == 1 and "enable printed the protected settings in clear text" in out


def test_bad_options_are_usage_errors(tmp_path, capsys):
    assert kit.main([str(tmp_path)]) == 2
    assert "no HandlerManifest.json" in capsys.readouterr().err
    assert kit.main([str(SAMPLE), "--settings", "{not json"]) == 2
    assert "--settings is not a JSON document" in capsys.readouterr().err
    assert kit.main([str(SAMPLE), "--protected-settings", "[1, 2]"]) == 2
    assert kit.main([str(SAMPLE), "--protected-settings", f"@{tmp_path}/missing.json"]) == 2
    assert kit.main([str(SAMPLE), "--versions", "1.0.0"]) == 2
    assert "--versions takes two versions" in capsys.readouterr().err
    # the sandbox's side of the command would write the real /var/lib/waagent: refused outside a sandbox
    assert kit.main([str(SAMPLE), "--inside", str(tmp_path / "report")]) == 2
    assert "not for use on a host" in capsys.readouterr().err and not (tmp_path / "report").exists()
