"""Upstream's four ovf-env.xml samples parse as upstream parses them (spec 05 §1)."""

from __future__ import annotations

import pytest

from guestagent.errors import ProtocolError
from guestagent.provisioning.ovfenv import parse_ovf_env, redact_password


def test_sample_fields(upstream):
    ovf = parse_ovf_env((upstream / "ovf-env.xml").read_text(encoding="utf-8"))
    assert (ovf.hostname, ovf.username, ovf.user_password) == ("HostName", "UserName", "UserPassword")
    assert ovf.disable_ssh_password_auth is False
    assert ovf.customdata == "CustomData"
    assert len(ovf.ssh_pubkeys) == 1 and len(ovf.ssh_keypairs) == 1
    key = ovf.ssh_pubkeys[0]
    assert key.path == "$HOME/UserName/.ssh/authorized_keys"
    assert key.fingerprint == "EB0C0AB4B2D5FC35F2F0658D19F44C8283E2DD62"
    assert key.value == "ssh-rsa AAAANOTAREALKEY== foo@bar.local"
    assert ovf.ssh_keypairs[0].path == "$HOME/UserName/.ssh/id_rsa"
    assert ovf.kms_server_hostname == "kms.core.windows.net"
    assert ovf.preprovisioned_vm is False


@pytest.mark.parametrize("name, value, disabled", [
    ("ovf-env.xml", "false", True),
    ("ovf-env-2.xml", "true", False),
    ("ovf-env-4.xml", "bad data", False),
])
def test_provision_guest_agent(upstream, name, value, disabled):
    ovf = parse_ovf_env((upstream / name).read_text(encoding="utf-8"))
    assert ovf.provision_guest_agent == value
    assert ovf.agent_disabled is disabled


def test_empty_provision_guest_agent_is_a_validation_error(upstream):
    with pytest.raises(ProtocolError, match="Failed to validate OVF: ProvisionGuestAgent not found"):
        parse_ovf_env((upstream / "ovf-env-3.xml").read_text(encoding="utf-8"))


def test_saved_copy_has_no_password(upstream):
    text = (upstream / "ovf-env.xml").read_text(encoding="utf-8")
    out = redact_password(text)
    assert "<UserPassword>*</UserPassword>" in out and ">UserPassword<" not in out
