"""ovf-env.xml parsing and the password-free copy (spec 05 §1, §2)."""

from __future__ import annotations

import re

import pytest

from guestagent import log
from guestagent.errors import ProtocolError
from guestagent.provisioning.ovfenv import parse_ovf_env, redact_password
from tests.conftest import TESTDATA

DATA = TESTDATA / "provisioning"


def full() -> str:
    return (DATA / "ovf-env-full.xml").read_text()


def test_every_field_of_the_full_document():
    ovf = parse_ovf_env(full())
    assert (ovf.version, ovf.hostname, ovf.username) == ("1.0", "lab-vm-01", "azureuser")
    assert ovf.user_password == "Sup3r$ecret-Pa55"
    assert ovf.disable_ssh_password_auth is True  # "TRUE": case-insensitive
    assert ovf.configuration_set_type == "LinuxProvisioningConfiguration"
    assert [(k.path, k.fingerprint, k.value is not None) for k in ovf.ssh_pubkeys] == [
        ("$HOME/azureuser/.ssh/authorized_keys", None, True),
        ("$HOME/azureuser/.ssh/authorized_keys", "0123456789ABCDEF0123456789ABCDEF01234567", False)]
    assert [(p.path, p.fingerprint) for p in ovf.ssh_keypairs] == [
        ("$HOME/azureuser/.ssh/id_rsa", "0123456789ABCDEF0123456789ABCDEF01234567")]
    assert ovf.customdata.startswith("IyEvYmluL3No")
    assert ovf.provision_guest_agent == "true" and not ovf.agent_disabled
    assert ovf.kms_server_hostname == "kms.core.windows.net"
    assert ovf.preprovisioned_vm is True and ovf.preprovisioned_vm_type == "Savable"
    assert "Sup3r" not in repr(ovf)


def test_minimal_document_defaults_to_password_auth_enabled():
    ovf = parse_ovf_env((DATA / "ovf-env-minimal.xml").read_text())
    assert ovf.user_password is None and ovf.customdata is None
    assert ovf.disable_ssh_password_auth is False
    assert ovf.ssh_pubkeys == [] and ovf.ssh_keypairs == []
    assert ovf.preprovisioned_vm is False and ovf.preprovisioned_vm_type is None


def test_password_is_registered_as_a_secret():
    parse_ovf_env(full())
    assert "Sup3r$ecret-Pa55" not in log.redact("the password is Sup3r$ecret-Pa55")


def test_deprovision_parse_skips_secrets():
    ovf = parse_ovf_env(full(), deprovision=True)
    assert ovf.username == "azureuser" and ovf.user_password is None and ovf.customdata is None


@pytest.mark.parametrize("element, what", [
    ("<wa:Version>1.0</wa:Version>", "Version"),
    ("<HostName>lab-vm-01</HostName>", "HostName"),
    ("<UserName>azureuser</UserName>", "UserName"),
    ("<HostName>lab-vm-01</HostName>", "HostName"),
    ("<wa:ProvisionGuestAgent>true</wa:ProvisionGuestAgent>", "ProvisionGuestAgent"),
])
def test_missing_required_element(element, what):
    text = full()
    # Both Version elements must go for "Version not found".
    text = text.replace(element, "")
    with pytest.raises(ProtocolError, match=f"Failed to validate OVF: {what} not found"):
        parse_ovf_env(text)


@pytest.mark.parametrize("old, new, what", [
    ("<UserName>azureuser</UserName>", "<UserName></UserName>", "UserName"),
    ("<UserName>azureuser</UserName>", "<UserName><![CDATA[azureuser]]></UserName>", "UserName"),
    ("<wa:ProvisionGuestAgent>true</wa:ProvisionGuestAgent>", "<wa:ProvisionGuestAgent/>", "ProvisionGuestAgent"),
    ("<LinuxProvisioningConfigurationSet xmlns=\"http://schemas.microsoft.com/windowsazure\"",
     "<LinuxProvisioningConfigurationSet xmlns=\"urn:other\"", "LinuxProvisioningConfigurationSet"),
    ("<wa:PlatformSettingsSection>", "<wa:OtherSection>", "PlatformSettingsSection"),
])
def test_empty_or_foreign_elements_read_as_absent(old, new, what):
    text = full().replace(old, new)
    if "OtherSection" in new:
        text = text.replace("</wa:PlatformSettingsSection>", "</wa:OtherSection>")
    with pytest.raises(ProtocolError, match=f"{what} not found"):
        parse_ovf_env(text)


def test_wrong_root_namespace():
    text = full().replace('xmlns="http://schemas.dmtf.org/ovf/environment/1"', 'xmlns="urn:x"', 1)
    with pytest.raises(ProtocolError, match="Environment not found"):
        parse_ovf_env(text)


@pytest.mark.parametrize("text, msg", [
    ("", "empty"),
    ("<Environment><unclosed></Environment>", "malformed"),
    ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><Environment/>', "DTD"),
    ("<Environment>" + "x" * (2 * 1024 * 1024) + "</Environment>", "too large"),
])
def test_hostile_or_broken_documents(text, msg):
    with pytest.raises(ProtocolError, match=msg):
        parse_ovf_env(text)


def test_newer_version_only_warns(capsys):
    ovf = parse_ovf_env(full().replace("<wa:Version>1.0</wa:Version>", "<wa:Version>2.0</wa:Version>", 1))
    assert ovf.version == "2.0"


def test_text_is_untrimmed_first_text_node():
    ovf = parse_ovf_env(full().replace("<HostName>lab-vm-01</HostName>", "<HostName> spaced </HostName>"))
    assert ovf.hostname == " spaced "


def test_redacted_copy_is_byte_identical_to_upstream_for_the_usual_form():
    text = full()
    out = redact_password(text)
    assert out == re.sub("<UserPassword>.*?<", "<UserPassword>*<", text)
    assert "Sup3r" not in out
    assert parse_ovf_env(out).user_password == "*"


@pytest.mark.parametrize("form", [
    "<UserPassword>line1\nline2</UserPassword>",
    "<wa:UserPassword>pfx-secret</wa:UserPassword>",
    "<UserPassword><![CDATA[cdata-secret]]></UserPassword>",
    '<UserPassword i:nil="false">attr-secret</UserPassword>',
])
def test_redaction_covers_what_upstream_misses(form):
    text = full().replace("<UserPassword>Sup3r$ecret-Pa55</UserPassword>", form)
    out = redact_password(text)
    for secret in ("line1", "line2", "pfx-secret", "cdata-secret", "attr-secret"):
        assert secret not in out


@pytest.mark.parametrize("fragment", [
    "<A>x</A>", "<A/>", "<A></A>", "<A><![CDATA[x]]></A>", "<A>a<![CDATA[b]]>c</A>", "<A><![CDATA[b]]>c</A>",
    "<A><B>z</B>d</A>", "<A>x&amp;y&gt;</A>", '<A k="a>b">t<![CDATA[x]]></A>', "<A><!--c>-->x<?p a>?>y</A>",
    "<A><!--c--><![CDATA[b]]>c</A>", "<A><!--c--></A>", "<A><B><![CDATA[q]]>r</B><![CDATA[s]]>u</A>", "<A>\r\n</A>",
])
def test_an_elements_text_is_minidoms_first_text_node(fragment):
    """Upstream reads ovf-env.xml with minidom: the stdlib's minidom is the oracle for every node-kind mix."""
    from xml.dom import minidom

    from guestagent.protocol import xml
    from guestagent.provisioning.ovfenv import _text

    nodes = minidom.parseString(fragment).documentElement.childNodes
    expected = next((n.data for n in nodes if n.nodeType == n.TEXT_NODE), None)
    assert _text(xml.parse_tree(fragment)) == expected


@pytest.mark.parametrize("name", ["../x", "..", "/etc", "a/b", "root", "-rf", "1abc", "x" * 33, "a b", "a..b",
                                  "user\n", "tom;id", "é"])
def test_a_user_name_useradd_or_azure_would_not_take_is_refused_at_the_edge(name):
    """Issue 13 D6: ``../x`` once became the home /x, a sudoers line and authorized_keys."""
    text = full().replace("<UserName>azureuser</UserName>", f"<UserName>{name.replace(chr(10), '&#10;')}</UserName>")
    with pytest.raises(ProtocolError, match=f"invalid user name {re.escape(repr(name))}"):
        parse_ovf_env(text)


@pytest.mark.parametrize("name", ["azureuser", "Admin_1", "_svc", "first.last", "a-b", "x" * 32])
def test_ordinary_user_names_are_accepted(name):
    assert parse_ovf_env(full().replace("<UserName>azureuser</UserName>", f"<UserName>{name}</UserName>")).username \
        == name
