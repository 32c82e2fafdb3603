"""The protocol client's parsers on upstream's real sample documents (skipped without ../shared)."""

import json
from datetime import datetime

import pytest

from guestagent.errors import ProtocolError
from guestagent.protocol import dhcp, goalstate, history, hostplugin, imds, xml
from guestagent.protocol.goalstate import (
    parse_certificates_document,
    parse_goal_state,
    parse_hosting_env,
    parse_remote_access,
    parse_shared_config,
)


def test_every_goal_state_sample(upstream):
    files = sorted((upstream / "wire").glob("goal_state*.xml")) + sorted((upstream / "hibernate").glob(
        "*/GoalState.xml")) + sorted((upstream / "tenant_certificate_rotation").glob("GoalState-*.xml"))
    assert len(files) >= 8
    for f in files:
        if f.name == "goal_state_noop.xml":  # the "no RoleInstance" sample: refused, upstream retries it
            with pytest.raises(ProtocolError, match="without a RoleInstance"):
                parse_goal_state(f.read_text())
            continue
        doc = parse_goal_state(f.read_text())
        assert doc.incarnation and doc.container_id and doc.role_instance_id, f
        if f.name == "goal_state.xml":
            assert doc.incarnation == "1" and doc.container_id == "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2"
            assert doc.role_instance_id == "b61f93d0-e1ed-40b2-b067-22c243233448.MachineRole_IN_0"
            assert doc.role_config_name.endswith("._canary.1.xml")
            assert doc.deployment_id == "bc8b9d47-b5ed-4704-85d9-fd74cc967ec2"
            assert "&amp;" not in doc.extensions_config_uri and "&type=extensionsConfig" in doc.extensions_config_uri
            assert doc.certificates_uri.endswith("comp=certificates&incarnation=1")
        if f.name == "goal_state_no_ext.xml":
            assert doc.extensions_config_uri is None
        if f.name == "goal_state_remote_access.xml":
            assert doc.remote_access_uri


def test_versions_sample(upstream):
    root = xml.parse((upstream / "wire/version_info.xml").read_text())
    assert xml.findtext(xml.find(root, "Preferred"), "Version") == "2012-11-30"


def test_hosting_env_and_shared_config(upstream):
    he = parse_hosting_env((upstream / "wire/hosting_env.xml").read_text())
    assert (he.vm_name, he.role_name, he.deployment_name) == ("MachineRole_IN_0", "MachineRole",
                                                              "db00a7755a5e4e8a8fe4b19bc3b330c3")
    sc = parse_shared_config((upstream / "wire/shared_config.xml").read_text())
    assert sc.instances and sc.instances[0].id == "MachineRole_IN_0"
    for f in (upstream / "hibernate").glob("*/SharedConfig.xml"):
        parse_shared_config(f.read_text())
    for f in (upstream / "hibernate").glob("*/HostingEnvironmentConfig.xml"):
        assert parse_hosting_env(f.read_text()).vm_name == "_test-vm"  # these samples carry no Role/Deployment


def test_certificates_envelopes(upstream):
    assert parse_certificates_document((upstream / "wire/certs.xml").read_text()).usable
    assert not parse_certificates_document((upstream / "wire/certs_format_not_pfx.xml").read_text()).usable
    assert parse_certificates_document((upstream / "wire/certs_no_format_specified.xml").read_text()).usable


def test_remote_access_samples(upstream):
    assert len(parse_remote_access((upstream / "wire/remote_access_10_accounts.xml").read_text()).users) == 10
    single = parse_remote_access((upstream / "wire/remote_access_single_account.xml").read_text())
    assert single.users[0].name == "testAccount" and single.users[0].encrypted_password
    assert parse_remote_access((upstream / "wire/remote_access_no_accounts.xml").read_text()).users == []


def test_isc_leases(upstream):
    now = datetime(2024, 1, 1)
    assert dhcp.parse_isc_leases((upstream / "dhcp.leases").read_text(), now) == "168.63.129.16"
    assert dhcp.parse_isc_leases((upstream / "dhcp.leases.multi").read_text(), now) == "168.63.129.2"
    assert dhcp.parse_isc_leases((upstream / "dhcp.leases.custom.dns").read_text(), now) == "168.63.129.16"


def test_networkd_lease(upstream):
    assert dhcp.parse_networkd_lease((upstream / "2").read_text()) == "168.63.129.16"


def test_dhcp_reply_sample(upstream):
    raw = (upstream / "dhcp").read_bytes()
    assert len(raw) == 328
    reply = dhcp.parse_reply(raw, raw[4:8], raw[0x1C:0x22])
    assert reply.endpoint == "10.62.144.140"


def test_vm_settings_samples_versions_and_redaction(upstream):
    for f in sorted((upstream / "hostgaplugin").glob("vm_settings*.json")):
        text = f.read_text()
        try:
            doc = json.loads(text)
        except ValueError:
            assert "parse_error" in f.name
            continue
        version = hostplugin._version_tuple(doc.get("hostGAPluginVersion", ""))
        if f.name == "vm_settings-unsupported_version.json":
            assert version < hostplugin.MIN_VM_SETTINGS_VERSION
    red = history.redact_vm_settings((upstream / "hostgaplugin/vm_settings-redact.json").read_text())
    assert "sig=" not in red and "MIIC4AYJ" not in red
    json.loads(red)


def test_extensions_config_redaction(upstream):
    text = (upstream / "wire/ext_conf_redact.xml").read_text()
    red = history.redact_extensions_config(text)
    assert "sig=" not in red and "MIIC4AYJ" not in red
    root = xml.parse(red)
    assert xml.findtext(root, "StatusUploadBlob").endswith("?***REDACTED***")


def test_artifacts_profile_samples(upstream):
    assert goalstate.parse_on_hold((upstream / "wire/in_vm_artifacts_profile.json").read_text()) in (True, False)
    assert goalstate.parse_on_hold((upstream / "hostgaplugin/in_vm_artifacts_profile.json").read_text()) in (
        True, False)


def test_imds_samples(upstream):
    valid = (upstream / "imds/valid.json").read_text()
    assert imds.probe_result(200, valid, "")[0]
    assert imds.parse_compute(valid).vm_id == "e7fdbfc4-2deb-4a4e-8615-ea6aaf50162e"
    imds.probe_result(200, (upstream / "imds/unicode.json").read_text(encoding="utf-8"), "")


@pytest.mark.parametrize("name", ["ext_conf.xml", "ext_conf_multiple_extensions.xml", "manifest.xml",
                                  "ga_manifest.xml"])
def test_hardened_parser_accepts_real_documents(upstream, name):
    assert xml.parse((upstream / "wire" / name).read_bytes()) is not None
