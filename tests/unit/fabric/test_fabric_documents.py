"""The fabric's documents have the platform's shape: compared element-by-element with upstream's samples."""

import base64
import io
import json
import stat
import xml.etree.ElementTree as ET

import pytest

from guestagent.fabric import hostplugin, wireserver
from guestagent.fabric.ovf import build_ovf_env, write_ovf_iso
from guestagent.fabric.scenario import default_scenario
from guestagent.fabric.server import Fabric

OVF = "{http://schemas.dmtf.org/ovf/environment/1}"
WA = "{http://schemas.microsoft.com/windowsazure}"


def _paths(el, prefix=""):
    here = f"{prefix}/{el.tag}"
    out = {here}
    for child in el:
        out |= _paths(child, here)
    return out


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    return Fabric(state_dir=tmp_path_factory.mktemp("state"))  # documents only; no sockets needed


def test_goal_state_matches_upstream_shape(fab, upstream):
    ours = ET.fromstring(wireserver.goal_state_xml(fab, fab.view(), "127.0.0.1"))
    theirs = ET.fromstring((upstream / "wire/goal_state.xml").read_bytes())
    assert _paths(theirs) <= _paths(ours)


def test_sub_documents_match_upstream_shape(fab, upstream):
    view = fab.view()
    for ours, sample, needed in [
        (wireserver.hosting_env_xml(fab, view), "wire/hosting_env.xml",
         ["Incarnation", "Role", "Deployment"]),
        (wireserver.shared_config_xml(fab, view), "wire/shared_config.xml", ["Deployment", "Instances/Instance"]),
        (wireserver.versions_xml(), "wire/version_info.xml", ["Preferred/Version", "Supported/Version"]),
    ]:
        o, t = ET.fromstring(ours), ET.fromstring((upstream / sample).read_bytes())
        assert o.tag == t.tag
        for path in needed:
            assert o.find(path) is not None and t.find(path) is not None
    ho = ET.fromstring(wireserver.hosting_env_xml(fab, view))
    assert ho.find("Incarnation").get("instance") and ho.find("Role").get("name")
    assert ho.find("Deployment").get("name") == fab.scenario.deployment_name


def test_extensions_config_matches_upstream_shape(fab, upstream):
    ours = ET.fromstring(wireserver.extensions_config_xml(fab, fab.view(), "127.0.0.1"))
    theirs = ET.fromstring((upstream / "wire/ext_conf_multiple_extensions.xml").read_bytes())
    for path in ["GuestAgentExtension/GAFamilies/GAFamily/Uris/Uri", "StatusUploadBlob", "Plugins/Plugin",
                 "PluginSettings/Plugin/RuntimeSettings", "InVMGoalStateMetaData"]:
        assert ours.find(path) is not None and theirs.find(path) is not None, path
    for attr in ("name", "version", "location", "failoverlocation", "state", "autoUpgrade", "isJson"):
        assert ours.find("Plugins/Plugin").get(attr) is not None
        assert theirs.find("Plugins/Plugin").get(attr) is not None
    settings = json.loads(ours.findtext("PluginSettings/Plugin/RuntimeSettings"))
    sample = json.loads(theirs.findtext("PluginSettings/Plugin/RuntimeSettings"))
    assert set(settings["runtimeSettings"][0]["handlerSettings"]) == set(sample["runtimeSettings"][0]["handlerSettings"])


def test_vm_settings_matches_upstream_keys(fab, upstream):
    ours = hostplugin.vm_settings_doc(fab, fab.view(), "127.0.0.1", "1.0.8.159")
    theirs = json.loads((upstream / "hostgaplugin/vm_settings.json").read_text())
    assert set(theirs) == set(ours)
    ext_ours, ext_theirs = ours["extensionGoalStates"][0], theirs["extensionGoalStates"][0]
    assert set(ext_theirs) - {"encodedSignature", "dependsOn"} <= set(ext_ours) | {"failoverlocation"}
    assert set(ext_ours["settings"][0]) == set(ext_theirs["settings"][0])
    assert isinstance(ext_ours["settings"][0]["publicSettings"], str)  # a JSON string, as HGAP sends it


def test_ovf_env_matches_upstream_schema(upstream):
    sc = default_scenario()
    ours = ET.fromstring(build_ovf_env(sc))
    theirs = ET.fromstring((upstream / "ovf-env.xml").read_bytes())
    assert _paths(theirs) == _paths(ours)
    lpcs = ours.find(f"{WA}ProvisioningSection/{WA}LinuxProvisioningConfigurationSet")
    assert lpcs.findtext(f"{WA}HostName") == "guestagent-vm" and lpcs.findtext(f"{WA}UserName") == "azureuser"
    assert lpcs.findtext(f"{WA}DisableSshPasswordAuthentication") == "false"
    assert base64.b64decode(lpcs.findtext(f"{WA}CustomData")).decode() == sc.ovf.custom_data
    keys = lpcs.findall(f"{WA}SSH/{WA}PublicKeys/{WA}PublicKey")
    thumb = sc.tenant_cert("azureuser-key").thumbprint
    assert keys[0].findtext(f"{WA}Fingerprint") == thumb and keys[0].find(f"{WA}Value") is None
    assert keys[1].findtext(f"{WA}Value").startswith("ssh-ed25519 ") and keys[1].find(f"{WA}Fingerprint") is None
    assert lpcs.findtext(f"{WA}SSH/{WA}KeyPairs/{WA}KeyPair/{WA}Fingerprint") == thumb
    assert ours.findtext(f"{WA}PlatformSettingsSection/{WA}PlatformSettings/{WA}ProvisionGuestAgent") == "true"


def test_ovf_iso_and_certificate_cache_are_private(tmp_path):
    import pycdlib

    sc = default_scenario()
    iso_path = write_ovf_iso(sc, tmp_path / "ovf.iso", tmp_path / "certs")
    assert stat.S_IMODE(iso_path.stat().st_mode) == 0o600
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    buf = io.BytesIO()
    iso.get_file_from_iso_fp(buf, rr_path="/ovf-env.xml")
    iso.close()
    assert buf.getvalue().decode() == build_ovf_env(sc)
    files = sorted(p.name for p in (tmp_path / "certs").iterdir())
    assert "TenantEncryptionCert.key.der" in files and "CRP.key.der" not in files
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in (tmp_path / "certs").iterdir())
    again = default_scenario()
    assert again.tenant_certs(tmp_path / "certs")[0].thumbprint == sc.tenant_certs()[0].thumbprint


def test_secrets_stay_out_of_logs(tmp_path):
    import urllib.request

    with Fabric(state_dir=tmp_path) as fab:
        for path in ("/machine/?comp=goalstate", f"/machine/x/y?comp=config&type=extensionsConfig&sig={fab.sas_sig}"):
            urllib.request.urlopen(f"{fab.base_url}{path}").read()
    text = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*.json*"))
    for secret in ("fabric-protected-value", "Fabric-Passw0rd!", fab.sas_sig, "PRIVATE KEY"):
        assert secret not in text
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in tmp_path.glob("*.json*"))
