"""WireServer emulator over loopback, with plain stdlib HTTP (never the agent's client or parsers)."""

import base64
import html
import re
import subprocess
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import pytest

from guestagent.fabric.scenario import RemoteUser, Scenario, Step
from guestagent.fabric.server import Fabric

WIRE_HEADERS = {"x-ms-agent-name": "WALinuxAgent", "x-ms-version": "2012-11-30"}


def http(url, method="GET", body=None, headers=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def _url(goal_state: bytes, tag: str) -> str:
    m = re.search(rf"<{tag}>(.*?)</{tag}>".encode(), goal_state, re.S)
    assert m, f"{tag} missing"
    return html.unescape(m.group(1).decode()).strip()


def test_versions_and_goal_state_documents_resolve(fab):
    status, body, _ = http(f"{fab.base_url}/?comp=versions")
    assert status == 200 and b"<Preferred>" in body and b"2012-11-30" in body
    status, gs, _ = http(f"{fab.base_url}/machine/?comp=goalstate", headers=WIRE_HEADERS)
    root = ET.fromstring(gs)
    assert status == 200 and root.findtext("Incarnation") == "1"
    assert root.findtext(".//ContainerId") == fab.scenario.container_id
    assert root.findtext(".//InstanceId") == fab.scenario.role_instance_id
    assert b"&amp;" in gs  # URLs are XML-escaped
    for tag, root_tag in [("HostingEnvironmentConfig", "HostingEnvironmentConfig"),
                          ("SharedConfig", "SharedConfig"), ("ExtensionsConfig", "Extensions")]:
        url = _url(gs, tag)
        assert url.startswith(fab.base_url)
        status, doc, _ = http(url, headers=WIRE_HEADERS)
        assert status == 200 and ET.fromstring(doc).tag == root_tag
    kinds = [r["kind"] for r in fab.requests]
    assert kinds == ["versions", "goalstate", "hostingenv", "sharedconfig", "extensionsconfig"]
    assert all(set(r) >= {"time", "kind", "method", "path", "status", "duration", "headers"} for r in fab.requests)
    assert (fab.state_dir / "requests.jsonl").read_text().count("\n") == 5


def test_extensions_config_points_at_storage_and_advance(fab):
    _, gs, _ = http(f"{fab.base_url}/machine/?comp=goalstate")
    _, ec, _ = http(_url(gs, "ExtensionsConfig"))
    root = ET.fromstring(ec)
    plugin = root.find("Plugins/Plugin")
    assert plugin.get("name") == "GuestAgent.Fabric.Sample" and plugin.get("state") == "enabled"
    status, manifest, _ = http(plugin.get("location"))
    assert status == 200 and b"<PluginVersionManifest" in manifest
    blob = root.find("StatusUploadBlob")
    assert blob.get("statusBlobType") == "BlockBlob" and "sig=" in blob.text
    settings = root.findtext("PluginSettings/Plugin/RuntimeSettings")
    assert '"publicSettings": {"message": "hello from the fabric"}' in settings
    assert "fabric-protected-value" not in ec.decode()  # protected settings are encrypted
    fab.advance()
    _, gs2, _ = http(f"{fab.base_url}/machine/?comp=goalstate")
    assert ET.fromstring(gs2).findtext("Incarnation") == "2"
    _, ec2, _ = http(_url(gs2, "ExtensionsConfig"))
    root2 = ET.fromstring(ec2)
    assert root2.find("PluginSettings/Plugin/RuntimeSettings").get("seqNo") == "1"
    t1 = int(root.find("InVMGoalStateMetaData").get("createdOnTicks"))
    t2 = int(root2.find("InVMGoalStateMetaData").get("createdOnTicks"))
    assert t2 > t1


def _transport(tmp_path):
    key, crt = tmp_path / "TransportPrivate.pem", tmp_path / "TransportCert.pem"
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-subj", "/CN=LinuxTransport", "-days", "730",
                    "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    header = "".join(line for line in crt.read_text().splitlines() if not line.startswith("-----"))
    return key, crt, header


def _decrypt_asn1(blob: bytes, key_path) -> bytes:
    """Independent CMS decryption: asn1crypto for the structure, cryptography for the primitives."""
    from asn1crypto import cms
    try:  # cryptography >= 43 moved 3DES to the decrepit module; Debian 12's 38 has it in algorithms
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:
        from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives import hashes, padding, serialization
    from cryptography.hazmat.primitives.asymmetric import padding as apad
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    env = cms.ContentInfo.load(blob)["content"]
    ri = env["recipient_infos"][0].chosen
    assert ri["version"].native == "v2" and ri["rid"].name == "subject_key_identifier"
    kt = ri["key_encryption_algorithm"]["algorithm"].native
    pad = apad.OAEP(apad.MGF1(hashes.SHA1()), hashes.SHA1(), None) if kt == "rsaes_oaep" else apad.PKCS1v15()
    cek = key.decrypt(ri["encrypted_key"].native, pad)
    eci = env["encrypted_content_info"]
    alg = eci["content_encryption_algorithm"]
    algo = algorithms.AES(cek) if alg["algorithm"].native == "aes128_cbc" else TripleDES(cek)
    dec = Cipher(algo, modes.CBC(alg["parameters"].native)).decryptor()
    padded = dec.update(eci["encrypted_content"].native) + dec.finalize()
    unpad = padding.PKCS7(algo.block_size).unpadder()
    return unpad.update(padded) + unpad.finalize()


@pytest.mark.parametrize("cipher,kt,content", [("AES128_CBC", "rsaes_oaep", "aes128_cbc"),
                                                ("DES_EDE3_CBC", "rsaes_pkcs1v15", "tripledes_3key")])
def test_certificates_envelope_decrypts_independently(fab, tmp_path, cipher, kt, content):
    from asn1crypto import cms
    from cryptography.hazmat.primitives.serialization import pkcs12

    key, crt, header = _transport(tmp_path)
    _, gs, _ = http(f"{fab.base_url}/machine/?comp=goalstate")
    status, doc, _ = http(_url(gs, "Certificates"), headers={**WIRE_HEADERS, "x-ms-cipher-name": cipher,
                                                             "x-ms-guest-agent-public-x509-cert": header})
    assert status == 200
    root = ET.fromstring(doc)
    assert root.findtext("Format") == "Pkcs7BlobWithPfxContents"
    blob = base64.b64decode(root.findtext("Data"))
    info = cms.ContentInfo.load(blob)
    assert info["content"]["version"].native == "v2"
    assert info["content"]["recipient_infos"][0].chosen["key_encryption_algorithm"]["algorithm"].native == kt
    assert info["content"]["encrypted_content_info"]["content_encryption_algorithm"]["algorithm"].native == content
    pfx_a = _decrypt_asn1(blob, key)
    (tmp_path / "blob.der").write_bytes(blob)
    out = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(tmp_path / "blob.der"),
                          "-inkey", str(key), "-recip", str(crt)], capture_output=True, check=True).stdout
    assert out == pfx_a
    bundle = pkcs12.load_pkcs12(pfx_a, b"")
    certs = [bundle.cert, *list(bundle.additional_certs)]
    thumbs = {c.thumbprint for c in fab.tenant_certs()}
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding
    got = {hashlib.sha1(c.certificate.public_bytes(Encoding.DER)).hexdigest().upper() for c in certs}
    assert got == thumbs and len(thumbs) == 3  # CRP cert, CRP CA, the ovf key pair
    info = subprocess.run(["openssl", "pkcs12", "-info", "-nodes", "-passin", "pass:", "-in", "/dev/stdin"],
                          input=pfx_a, capture_output=True, check=True)
    assert info.stdout.count(b"BEGIN PRIVATE KEY") == 2
    assert b"pbeWithSHA1And3-KeyTripleDES-CBC" in info.stderr and b"Iteration 2000" in info.stderr


def test_certificates_rejects_bad_requests(fab):
    _, gs, _ = http(f"{fab.base_url}/machine/?comp=goalstate")
    url = _url(gs, "Certificates")
    assert http(url)[0] == 400
    status, body, _ = http(url, headers={"x-ms-guest-agent-public-x509-cert": "bm90IGEgY2VydA=="})
    assert status == 400 and b"not a base64 DER" in body
    assert http(url, headers={"x-ms-cipher-name": "RC4"})[0] == 400


def test_protected_settings_decrypt_with_tenant_key(fab, tmp_path):
    _, gs, _ = http(f"{fab.base_url}/machine/?comp=goalstate")
    _, ec, _ = http(_url(gs, "ExtensionsConfig"))
    import json

    settings = json.loads(ET.fromstring(ec).findtext("PluginSettings/Plugin/RuntimeSettings"))
    hs = settings["runtimeSettings"][0]["handlerSettings"]
    tenant = next(c for c in fab.tenant_certs() if c.thumbprint == hs["protectedSettingsCertThumbprint"])
    (tmp_path / "t.crt").write_text(tenant.cert_pem)
    (tmp_path / "t.prv").write_text(tenant.key_pem)
    out = subprocess.run(["openssl", "smime", "-inform", "DER", "-decrypt", "-recip", str(tmp_path / "t.crt"),
                          "-inkey", str(tmp_path / "t.prv")], input=base64.b64decode(hs["protectedSettings"]),
                         capture_output=True, check=True).stdout
    assert json.loads(out) == {"secret": "fabric-protected-value"}


def test_remote_access_passwords_are_utf16_cms(tmp_path):
    sc = Scenario(steps=[Step(incarnation="1", remote_access=[RemoteUser("jit", "Pa55-word", "Mon, 01 Jan 2029 "
                                                                                              "00:00:00 GMT")])])
    key, _, header = _transport(tmp_path)
    with Fabric(sc) as fab:
        _, gs, _ = http(f"{fab.base_url}/machine/?comp=goalstate")
        status, doc, _ = http(_url(gs, "RemoteAccessInfo"), headers={"x-ms-cipher-name": "AES128_CBC",
                                                                      "x-ms-guest-agent-public-x509-cert": header})
        assert status == 200
        user = ET.fromstring(doc).find("Users/User")
        assert user.findtext("Name") == "jit"
        assert _decrypt_asn1(base64.b64decode(user.findtext("Password")), key).decode("utf-16-le") == "Pa55-word"


HEALTH = ('<?xml version="1.0" encoding="utf-8"?><Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
          "<GoalStateIncarnation>1</GoalStateIncarnation><Container><ContainerId>c</ContainerId><RoleInstanceList>"
          "<Role><InstanceId>i</InstanceId><Health><State>NotReady</State><Details><SubStatus>Provisioning"
          "</SubStatus><Description>Starting</Description></Details></Health></Role></RoleInstanceList></Container>"
          "</Health>")


def test_health_role_properties_healthservice(fab):
    post = {"Content-Type": "text/xml;charset=utf-8", **WIRE_HEADERS}
    assert http(f"{fab.base_url}/machine?comp=health", "POST", HEALTH.encode(), post)[0] == 200
    ready = HEALTH.replace("NotReady", "Ready").replace(
        "<Details><SubStatus>Provisioning</SubStatus><Description>Starting</Description></Details>", "")
    assert http(f"{fab.base_url}/machine?comp=health", "POST", ready.encode(), post)[0] == 200
    assert [(h["state"], h["substatus"], h["description"]) for h in fab.health_reports] == [
        ("NotReady", "Provisioning", "Starting"), ("Ready", None, None)]
    assert fab.health_reports[0]["incarnation"] == "1"
    assert (fab.state_dir / "health.jsonl").read_text().count("\n") == 2
    for bad in (b"<Health><oops", b"<NotHealth/>", b"<!DOCTYPE x [<!ENTITY a 'b'>]><Health/>", b"<Health/>"):
        status, body, _ = http(f"{fab.base_url}/machine?comp=health", "POST", bad, post)
        assert status == 400 and body
    assert len(fab.health_reports) == 2
    props = ('<?xml version="1.0" encoding="utf-8"?><RoleProperties><Container><ContainerId>c</ContainerId>'
             "<RoleInstances><RoleInstance><Id>i</Id><Properties><Property name=\"CertificateThumbprint\" "
             'value="ABC" /></Properties></RoleInstance></RoleInstances></Container></RoleProperties>')
    assert http(f"{fab.base_url}/machine?comp=roleProperties", "POST", props.encode(), post)[0] == 202
    assert fab.records["roleproperties"][0]["properties"] == {"CertificateThumbprint": "ABC"}
    obs = b'{"Api": "reporttargethealth", "Version": "1.0", "Source": "WALinuxAgent", "Observations": []}'
    assert http(f"{fab.base_url}/HealthService", "POST", obs, {"Content-Type": "application/json"})[0] == 200
    assert http(f"{fab.base_url}/HealthService", "POST", b"{", {"Content-Type": "application/json"})[0] == 400


def test_telemetry_params_are_typed(fab):
    body = ('<?xml version="1.0"?><TelemetryData version="1.0"><Provider id="69B669B9-4AF8-4C50-BDC4-6006FA76E975">'
            '<Event id="1"><![CDATA[<Param Name="Name" Value="GuestAgent.Fabric.Sample" T="mt:wstr" />'
            '<Param Name="OperationSuccess" Value="True" T="mt:bool" /><Param Name="Duration" Value="12" '
            'T="mt:uint64" /><Param Name="Value" Value="1.5" T="mt:float64" /><Param Name="Message" '
            'Value="a &amp; &lt;b&gt;" T="mt:wstr" />]]></Event><Event id="1"><![CDATA[]]></Event></Provider>'
            "</TelemetryData>")
    assert http(f"{fab.base_url}/machine?comp=telemetrydata", "POST", body.encode())[0] == 200
    ev = fab.telemetry[0]
    assert ev["provider"] == "69B669B9-4AF8-4C50-BDC4-6006FA76E975" and ev["event_id"] == 1
    assert ev["params"] == {"Name": "GuestAgent.Fabric.Sample", "OperationSuccess": True, "Duration": 12,
                            "Value": 1.5, "Message": "a & <b>"}
    assert len(fab.telemetry) == 2
    bad = body.replace('Value="12"', 'Value="twelve"')
    assert http(f"{fab.base_url}/machine?comp=telemetrydata", "POST", bad.encode())[0] == 400
    assert len(fab.telemetry) == 2


def test_unknown_paths_are_404(fab):
    assert http(f"{fab.base_url}/nothing")[0] == 404
    assert http(f"{fab.base_url}/machine/?comp=bogus")[0] == 404
    assert fab.requests[-1]["kind"] == "unknown"
