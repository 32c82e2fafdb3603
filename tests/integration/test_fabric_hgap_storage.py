"""HostGAPlugin, storage and IMDS emulators over loopback, with plain stdlib HTTP."""

import base64
import io
import json
import re
import stat
import urllib.error
import urllib.request
import zipfile

import pytest

from guestagent.fabric.scenario import ExtensionSpec, Scenario, SettingsSpec, Step, default_scenario
from guestagent.fabric.server import Fabric


def http(url, method="GET", body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as e:
        return e.code, e.read(), {k.lower(): v for k, v in e.headers.items()}


def hgap(fab, path):
    return f"http://127.0.0.1:{fab.hgap_port}{path}"


def test_versions_health(fab):
    status, body, _ = http(hgap(fab, "/versions"))
    assert status == 200 and "2015-09-01" in json.loads(body)
    assert http(hgap(fab, "/health"))[0] == 200
    assert [r["kind"] for r in fab.requests] == ["hgap_versions", "hgap_health"]


def test_vm_settings_etag_and_fast_track_steps(fab):
    status, body, headers = http(hgap(fab, "/vmSettings"))
    doc = json.loads(body)
    etag = headers["etag"]
    assert status == 200 and etag and doc["extensionGoalStatesSource"] == "Fabric"
    assert doc["hostGAPluginVersion"] == "1.0.8.159" and doc["inSvdSeqNo"] == 1
    ext = doc["extensionGoalStates"][0]
    assert ext["name"] == "GuestAgent.Fabric.Sample" and ext["settingsSeqNo"] == 0
    assert json.loads(ext["settings"][0]["publicSettings"]) == {"message": "hello from the fabric"}
    assert ext["settings"][0]["protectedSettingsCertThumbprint"] in {c.thumbprint for c in fab.tenant_certs()}
    assert http(hgap(fab, "/vmSettings"), headers={"if-none-match": etag})[0] == 304
    fab.advance()
    fab.advance()  # step 2 is a FastTrack goal state
    status, body, headers = http(hgap(fab, "/vmSettings"), headers={"if-none-match": etag})
    doc = json.loads(body)
    assert status == 200 and headers["etag"] != etag and doc["extensionGoalStatesSource"] == "FastTrack"
    assert doc["extensionGoalStates"][0]["version"] == "1.1.0" and doc["inSvdSeqNo"] == 2
    _, gs, _ = http(f"{fab.base_url}/machine/?comp=goalstate")
    assert b"<Incarnation>2</Incarnation>" in gs  # FastTrack does not change the incarnation


@pytest.mark.parametrize("mode,status", [("not_supported", 404), ("error", 500)])
def test_vm_settings_modes(mode, status):
    with Fabric(Scenario(vm_settings=mode)) as fab:
        assert http(hgap(fab, "/vmSettings"))[0] == status


def test_vm_settings_parse_error_old_version_no_etag():
    sc = Scenario(steps=[Step("1", vm_settings="parse_error"), Step("2", vm_settings="old_version"),
                         Step("3", vm_settings="no_etag")])
    with Fabric(sc) as fab:
        status, body, headers = http(hgap(fab, "/vmSettings"))
        assert status == 200 and "etag" in headers
        with pytest.raises(ValueError):
            json.loads(body)
        fab.advance()
        assert json.loads(http(hgap(fab, "/vmSettings"))[1])["hostGAPluginVersion"] == "1.0.8.100"
        fab.advance()
        status, _, headers = http(hgap(fab, "/vmSettings"))
        assert status == 200 and "etag" not in headers


def test_manifest_and_package(fab):
    status, manifest, _ = http(fab.manifest_url(None, "GuestAgent.Fabric.Sample"))
    assert status == 200
    versions = re.findall(rb"<Version>(.*?)</Version>", manifest)
    assert versions == [b"1.0.0", b"1.1.0"]
    uri = re.findall(rb"<Uri>(.*?)</Uri>", manifest)[0].decode()
    status, data, _ = http(uri)
    assert status == 200
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert sorted(zf.namelist()) == ["HandlerManifest.json", "bin/ext.sh"]
    assert stat.S_IMODE(zf.getinfo("bin/ext.sh").external_attr >> 16) == 0o755
    assert json.loads(zf.read("HandlerManifest.json"))[0]["handlerManifest"]["enableCommand"] == "bin/ext.sh enable"
    assert http(fab.manifest_url(None, "No.Such.Handler"))[0] == 404
    assert http(fab.package_url(None, "GuestAgent.Fabric.Sample", "9.9.9"))[0] == 404
    assert http(fab.agent_manifest_url())[0] == 200
    assert http(fab.manifest_url(None, "GuestAgent.Fabric.Sample", failover=True))[0] == 200
    assert [r["kind"] for r in fab.requests][:2] == ["manifest", "package"]


def test_extension_artifact_proxies_storage_only(fab):
    url = fab.manifest_url(None, "GuestAgent.Fabric.Sample")
    status, body, _ = http(hgap(fab, "/extensionArtifact"), headers={"x-ms-artifact-location": url})
    assert status == 200 and b"<PluginVersionManifest" in body
    fab.faults.add("manifest", status=500, count=0)  # direct storage broken; the proxy still works
    assert http(url)[0] == 500
    assert http(hgap(fab, "/extensionArtifact"), headers={"x-ms-artifact-location": url})[0] == 200
    assert http(hgap(fab, "/extensionArtifact"))[0] == 400
    status, _, _ = http(hgap(fab, "/extensionArtifact"),
                        headers={"x-ms-artifact-location": "https://example.blob.core.windows.net/x"})
    assert status == 502  # never fetched from the internet
    status, body, _ = http(hgap(fab, "/extensionArtifact"), headers={"x-ms-artifact-location": fab.artifacts_profile_url()})
    assert status == 200 and json.loads(body) == {"onHold": False}


STATUS = {"version": "1.1", "timestampUTC": "2025-01-01T00:00:00Z",
          "aggregateStatus": {"guestAgentStatus": {"version": "2.15.0.1", "status": "Ready",
                                                   "formattedMessage": {"lang": "en-US",
                                                                        "message": "Guest Agent is running"}},
                              "handlerAggregateStatus": []}}


def _blob_headers(blob_type, length):
    return {"x-ms-blob-type": blob_type, "x-ms-date": "2025-01-01T00:00:00Z", "x-ms-version": "2014-02-14",
            "Content-Length": str(length)}


def test_status_blob_direct_block_and_page(fab):
    data = json.dumps(STATUS).encode()
    url = fab.status_blob_url()
    assert http(url, "PUT", data, _blob_headers("BlockBlob", len(data)))[0] == 201
    assert fab.status_blob == STATUS and (fab.state_dir / "status.json").is_file()
    assert stat.S_IMODE((fab.state_dir / "status.json").stat().st_mode) == 0o600
    status, body, headers = http(url)
    assert status == 200 and body == data and headers["x-ms-blob-type"] == "BlockBlob"

    doc = dict(STATUS, timestampUTC="2025-01-02T00:00:00Z")
    data = json.dumps(doc).encode()
    size = (len(data) + 511) // 512 * 512
    create = {**_blob_headers("PageBlob", 0), "x-ms-blob-content-length": str(size)}
    assert http(url, "PUT", b"", create)[0] == 201
    page = data + b"\0" * (size - len(data))
    assert http(url + "&comp=page", "PUT", page, {"x-ms-range": f"bytes=0-{size - 1}", "x-ms-page-write": "update",
                                                  "x-ms-version": "2014-02-14"})[0] == 201
    assert fab.status_blob == doc
    # misaligned range, range beyond the blob, wrong signature
    assert http(url + "&comp=page", "PUT", b"x" * 100, {"x-ms-range": "bytes=0-99",
                                                         "x-ms-page-write": "update"})[0] == 400
    assert http(url + "&comp=page", "PUT", b"x" * 512, {"x-ms-range": f"bytes={size}-{size + 511}",
                                                         "x-ms-page-write": "update"})[0] == 416
    assert http(url.replace(fab.sas_sig, "forged"), "PUT", data, _blob_headers("BlockBlob", len(data)))[0] == 403
    assert fab.status_blob == doc
    assert "<redacted>" in fab.requests[-1]["path"] and fab.sas_sig not in json.dumps(fab.requests)
    assert fab.sas_sig not in (fab.state_dir / "requests.jsonl").read_text()


def _envelope(uri, headers, content=None):
    doc = {"headers": [{"headerName": k, "headerValue": v} for k, v in headers.items()], "requestUri": uri}
    if content is not None:
        doc["content"] = base64.b64encode(content).decode()
    return json.dumps(doc, sort_keys=True).encode()


def test_hgap_status_envelope_block_and_page(fab):
    data = json.dumps(STATUS).encode()
    body = _envelope(fab.status_blob_url(), _blob_headers("BlockBlob", len(data)), data)
    assert http(hgap(fab, "/status"), "PUT", body, {"Content-type": "application/json"})[0] == 200
    assert fab.status_blob == STATUS and fab.status_uploads[-1]["via"] == "hgap"
    # the envelope's shape as sent (keys and headers in order): the differential tier compares it
    shape = fab.records["hgap_envelope"][-1]
    assert shape["keys"] == ["content", "headers", "requestUri"]
    assert shape["headers"] == [[k, v] for k, v in _blob_headers("BlockBlob", len(data)).items()]
    text = json.dumps(dict(STATUS, timestampUTC="x")).encode()
    padded = text + b" " * (-len(text) % 512)
    create = {**_blob_headers("PageBlob", 0), "x-ms-blob-content-length": str(len(padded))}
    assert http(hgap(fab, "/status"), "PUT", _envelope(fab.status_blob_url(), create))[0] == 200
    page = {"Content-Length": str(len(padded)), "x-ms-date": "d", "x-ms-range": f"bytes=0-{len(padded) - 1}",
            "x-ms-page-write": "update", "x-ms-version": "2014-02-14"}
    assert http(hgap(fab, "/status"), "PUT", _envelope(fab.status_blob_url() + "&comp=page", page, padded))[0] == 200
    assert fab.status_blob["timestampUTC"] == "x" and fab.status_uploads[-1]["type"] == "PageBlob"
    assert http(hgap(fab, "/status"), "PUT", b"not json")[0] == 400
    assert http(hgap(fab, "/status"), "PUT", b'{"requestUri": "u", "content": "@@@"}')[0] == 400
    assert http(hgap(fab, "/status"), "GET")[0] == 405


def test_vm_agent_log_upload_is_stored(fab):
    payload = b"PK\x05\x06" + b"\0" * 18
    status, _, _ = http(hgap(fab, "/vmAgentLog"), "PUT", payload, {"x-ms-client-name": "WALinuxAgent"})
    assert status == 200
    assert fab.vm_agent_logs[0]["data"] == payload
    assert (fab.state_dir / "vmagentlog" / "0000.zip").read_bytes() == payload


def test_imds(fab):
    base = f"http://127.0.0.1:{fab.imds_port}/metadata/instance"
    assert http(base + "?api-version=2018-02-01")[0] == 400  # no Metadata header
    assert http(base, headers={"Metadata": "true"})[0] == 400  # no api-version
    status, body, _ = http(base + "?api-version=2018-02-01", headers={"Metadata": "True"})
    doc = json.loads(body)
    assert status == 200 and doc["network"]["interface"][0]["macAddress"]
    assert doc["network"]["interface"][0]["ipv4"]["ipAddress"][0]["privateIpAddress"]
    status, body, _ = http(base + "/compute?api-version=2018-02-01", headers={"Metadata": "true"})
    assert status == 200 and json.loads(body)["vmId"] == fab.vm_id
    status, body, _ = http(base + "/compute/vmId?api-version=2018-02-01&format=text", headers={"Metadata": "true"})
    assert body.decode() == fab.vm_id
    assert http(base + "/nothing?api-version=1", headers={"Metadata": "true"})[0] == 404
    assert {r["kind"] for r in fab.requests} == {"imds"}


def test_multi_config_and_dependencies_in_both_documents():
    sc = default_scenario()
    sc.steps = [Step("1", extensions=[ExtensionSpec("GuestAgent.Fabric.Sample", "1.0.0", multi_config=True, settings=[
        SettingsSpec(3, name="first", public={"a": 1}),
        SettingsSpec(1, name="second", state="disabled", dependency_level=2,
                     depends_on=[{"handler": "GuestAgent.Fabric.Sample", "extension": "first"}])])])]
    with Fabric(sc) as fab:
        import html
        import xml.etree.ElementTree as ET

        _, gs, _ = http(f"{fab.base_url}/machine/?comp=goalstate")
        url = html.unescape(re.search(rb"<ExtensionsConfig>(.*?)</", gs).group(1).decode())
        root = ET.fromstring(http(url)[1])
        items = root.findall("PluginSettings/Plugin/ExtensionRuntimeSettings")
        assert [(i.get("name"), i.get("seqNo"), i.get("state")) for i in items] == [
            ("first", "3", "enabled"), ("second", "1", "disabled")]
        dep = root.find("PluginSettings/Plugin/DependsOn")
        assert dep.get("dependencyLevel") == "2" and dep.get("name") == "second"
        assert dep.find("DependsOnExtension").get("extension") == "first"
        vm = json.loads(http(hgap(fab, "/vmSettings"))[1])["extensionGoalStates"][0]
        assert vm["isMultiConfig"] is True and "settingsSeqNo" not in vm
        assert [(s["extensionName"], s["seqNo"], s["extensionState"]) for s in vm["settings"]] == [
            ("first", 3, "enabled"), ("second", 1, "disabled")]
        assert vm["dependsOn"] == [{"dependsOnExtension": [{"handler": "GuestAgent.Fabric.Sample",
                                                            "extension": "first"}],
                                    "dependencyLevel": 2, "name": "second"}]


def test_public_urls_for_forwarded_vms():
    with Fabric(public_wire_url="http://168.63.129.16", public_storage_url="http://10.0.2.9:80/") as fab:
        _, gs, _ = http(f"{fab.base_url}/machine/?comp=goalstate")
        assert b"<ExtensionsConfig>http://168.63.129.16/machine/" in gs
        assert fab.status_blob_url().startswith("http://10.0.2.9:80/$system/")
        status, body, _ = http(hgap(fab, "/extensionArtifact"),
                               headers={"x-ms-artifact-location": fab.manifest_url(None, "GuestAgent.Fabric.Sample")})
        assert status == 200 and b"<Version>1.0.0</Version>" in body
