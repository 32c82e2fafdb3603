"""Scenario files, fault queues, blob semantics — without sockets."""

import json

import pytest

from guestagent.fabric.faults import FaultSet
from guestagent.fabric.scenario import ScenarioError, default_scenario, load_scenario, parse_scenario
from guestagent.fabric.storage import BlobStore, decode_status


def test_default_scenario():
    sc = default_scenario()
    assert [(s.incarnation, s.fast_track) for s in sc.steps] == [("1", False), ("2", False), ("2", True)]
    ext = sc.steps[0].extensions[0]
    assert ext.name == "GuestAgent.Fabric.Sample" and ext.settings[0].protected == {"secret": "fabric-protected-value"}
    assert [h.version for h in sc.handler_versions("guestagent.fabric.sample")] == ["1.0.0", "1.1.0"]
    assert sc.key_pair_names() == ["azureuser-key"]
    assert load_scenario("default").name == "default"


def _write(tmp_path, doc, name="s.json"):
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


@pytest.mark.parametrize("doc,message", [
    ({"stepz": []}, "scenario: unknown key(s) stepz"),
    ({"steps": [{"extensions": [{"version": "1.0"}]}]}, "steps[0].extensions[0].name: is required"),
    ({"steps": [{"extensions": [{"name": "A.B", "version": "1", "state": "on"}]}]},
     "steps[0].extensions[0].state: 'on' is not one of enabled, disabled, uninstall"),
    ({"steps": [{"extensions": [{"name": "A.B", "version": "1"}]}]}, "no handler folder for 'A.B'"),
    ({"steps": [{"status_blob_type": "AppendBlob"}]}, "steps[0].status_blob_type"),
    ({"steps": [{"fast_track": "yes"}]}, "steps[0].fast_track: expected true or false"),
    ({"steps": "all"}, "steps: expected a list"),
    ({"vm_settings": "maybe"}, "vm_settings: 'maybe' is not one of"),
    ({"handlers": [{"name": "A.B", "version": "1", "path": "nowhere"}]}, "is not a handler folder"),
    ({"ovf": {"ssh_key_pairs": [{"path": "/x"}]}}, "a key pair needs 'certificate'"),
    ({"ovf": {"ssh_public_keys": [{"path": "/x"}]}}, "needs 'value'"),
    ({"steps": [{"extensions": [{"name": "A", "version": "1", "multi_config": True, "seqNo": 1}]}]},
     "takes its settings from 'extensions'"),
    ({"imds": []}, "imds: expected an object"),
    ([], "scenario: expected an object"),
])
def test_scenario_errors_name_the_place(tmp_path, doc, message):
    with pytest.raises(ScenarioError) as err:
        load_scenario(_write(tmp_path, doc))
    assert message in str(err.value) and "s.json" in str(err.value)


def test_scenario_file_errors(tmp_path):
    # a missing comma: every Python reports it at the same place (3.13 words a trailing comma differently)
    with pytest.raises(ScenarioError, match="invalid JSON at line 2 column 1"):
        load_scenario(_write(tmp_path, '{"name": "x"\n"y": 1}'))
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(tmp_path / "missing.json")
    with pytest.raises(ScenarioError, match="larger than 4 MiB"):
        load_scenario(_write(tmp_path, " " * (4 * 1024 * 1024 + 1)))


def test_incarnation_numbering_and_relative_handlers(tmp_path):
    folder = tmp_path / "h"
    folder.mkdir()
    (folder / "HandlerManifest.json").write_text("[]")
    sc = parse_scenario({"handlers": [{"name": "P.T", "version": "2.0", "path": "h"}],
                         "steps": [{}, {"fast_track": True}, {"incarnation": 7}, {}, {"fast_track": True}],
                         }, tmp_path)
    assert [s.incarnation for s in sc.steps] == ["1", "1", "7", "8", "8"]
    assert sc.handlers[0].path == folder.resolve()


def test_fault_queue_order_count_and_wildcard():
    fs = FaultSet()
    fs.add("goalstate", status=500, count=2)
    fs.add("goalstate", status=410)
    fs.add("*", delay=0.0, body="malformed", count=0)
    got = [fs.take("goalstate").status for _ in range(3)]
    assert got == [500, 500, 410]
    assert fs.take("goalstate").body == "malformed" and fs.take("imds").body == "malformed"
    fs.clear("*")
    assert fs.take("goalstate") is None and len(fs.history) == 5


def test_blob_store_semantics():
    store = BlobStore()
    assert store.write("/b", {}, {"x-ms-blob-type": "BlockBlob"}, b'{"a": 1}').status == 201
    assert decode_status(store.get("/b").data) == {"a": 1}
    assert store.write("/b", {}, {"x-ms-blob-type": "Append"}, b"").status == 400
    assert store.write("/p", {}, {"x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": "1000"}, b"").status == 400
    assert store.write("/p", {}, {"x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": "1024"}, b"x").status == 400
    assert store.write("/p", {}, {"x-ms-blob-type": "PageBlob", "x-ms-blob-content-length": "1024"}, b"").status == 201
    page = {"x-ms-range": "bytes=512-1023", "x-ms-page-write": "update"}
    assert store.write("/p", {"comp": "page"}, page, b"}" + b" " * 511).status == 201
    assert store.write("/p", {"comp": "page"}, {**page, "x-ms-range": "bytes=0-511"},
                       b'{"b": 2' + b" " * 505).status == 201
    assert decode_status(store.get("/p").data) == {"b": 2}
    assert store.write("/p", {"comp": "page"}, {**page, "x-ms-page-write": "clear"}, b" " * 512).status == 400
    assert store.write("/b", {"comp": "page"}, page, b" " * 512).status == 409
    assert store.write("/none", {"comp": "page"}, page, b" " * 512).status == 404
    assert decode_status(b"\0" * 512) is None and decode_status(b'{"half": ') is None


def test_sample_handler_writes_a_valid_status(tmp_path):
    import os
    import subprocess

    from guestagent.fabric.scenario import BUILTIN_DIR

    script = BUILTIN_DIR / "handlers/sample/bin/ext.sh"
    env = {"PATH": os.environ["PATH"], "AZURE_GUEST_AGENT_EXTENSION_PATH": str(tmp_path), "ConfigSequenceNumber": "3"}
    subprocess.run(["/bin/sh", str(script), "enable"], cwd=tmp_path, env=env, check=True, capture_output=True)
    subprocess.run(["/bin/sh", str(script), "enable"], cwd=tmp_path, env={**env, "ConfigExtensionName": "mc1"},
                   check=True, capture_output=True)
    status = json.loads((tmp_path / "status/3.status").read_text())
    assert status[0]["status"]["status"] == "success" and status[0]["status"]["operation"] == "Enable"
    assert json.loads((tmp_path / "status/mc1.3.status").read_text())[0]["status"]["code"] == 0
    assert (tmp_path / "operations.log").read_text().splitlines() == ["enable seq=3 ext=", "enable seq=3 ext=mc1"]
