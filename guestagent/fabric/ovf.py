"""ovf-env.xml for a scenario (the provisioning document on the VM's DVD), and the DVD image itself.

SSH keys named by certificate are referenced by thumbprint: the same tenant certificates are served
in the Certificates document, so build the ovf-env from the same Scenario object (or the same
``cache_dir``) as the Fabric.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Optional, Union
from xml.sax.saxutils import escape

from guestagent.fabric.scenario import OvfSpec, Scenario


def _bool(value: bool) -> str:
    return "true" if value else "false"


def build_ovf_env(scenario: Scenario, cache_dir: Optional[Path] = None, ovf: Optional[OvfSpec] = None) -> str:
    """The scenario's ovf-env.xml (the DVD's), or ``ovf``'s (a pool's customer document)."""
    ovf = ovf or scenario.ovf
    thumbs = {c.name: c.thumbprint for c in scenario.tenant_certs(cache_dir)} if scenario.key_pair_names() else {}
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<Environment xmlns="http://schemas.dmtf.org/ovf/environment/1" '
        'xmlns:oe="http://schemas.dmtf.org/ovf/environment/1" xmlns:wa="http://schemas.microsoft.com/windowsazure" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">',
        "    <wa:ProvisioningSection>",
        f"      <wa:Version>{escape(ovf.version)}</wa:Version>",
        '      <LinuxProvisioningConfigurationSet xmlns="http://schemas.microsoft.com/windowsazure" '
        'xmlns:i="http://www.w3.org/2001/XMLSchema-instance">',
        "        <ConfigurationSetType>LinuxProvisioningConfiguration</ConfigurationSetType>",
        f"        <HostName>{escape(ovf.hostname)}</HostName>",
        f"        <UserName>{escape(ovf.username)}</UserName>",
    ]
    if ovf.password is not None:
        lines.append(f"        <UserPassword>{escape(ovf.password)}</UserPassword>")
    lines.append(f"        <DisableSshPasswordAuthentication>{_bool(ovf.disable_ssh_password_auth)}"
                 "</DisableSshPasswordAuthentication>")
    if ovf.public_keys or ovf.key_pairs:
        lines += ["        <SSH>", "          <PublicKeys>"]
        for key in ovf.public_keys:
            lines.append("            <PublicKey>")
            if key.certificate:
                lines.append(f"              <Fingerprint>{thumbs[key.certificate]}</Fingerprint>")
            lines.append(f"              <Path>{escape(key.path)}</Path>")
            if key.value:
                lines.append(f"              <Value>{escape(key.value)}</Value>")
            lines.append("            </PublicKey>")
        lines += ["          </PublicKeys>", "          <KeyPairs>"]
        for key in ovf.key_pairs:
            lines += ["            <KeyPair>", f"              <Fingerprint>{thumbs[key.certificate]}</Fingerprint>",
                      f"              <Path>{escape(key.path)}</Path>", "            </KeyPair>"]
        lines += ["          </KeyPairs>", "        </SSH>"]
    if ovf.custom_data is not None:
        lines.append(f"        <CustomData>{base64.b64encode(ovf.custom_data.encode('utf-8')).decode()}</CustomData>")
    lines += [
        "      </LinuxProvisioningConfigurationSet>",
        "    </wa:ProvisioningSection>",
        "    <wa:PlatformSettingsSection>",
        "      <wa:Version>1.0</wa:Version>",
        "      <wa:PlatformSettings>",
        "        <wa:KmsServerHostname>kms.core.windows.net</wa:KmsServerHostname>",
        f"        <wa:ProvisionGuestAgent>{_bool(ovf.provision_guest_agent)}</wa:ProvisionGuestAgent>",
        '        <wa:GuestAgentPackageName xsi:nil="true"/>',
        "        <wa:RetainWindowsPEPassInUnattend>true</wa:RetainWindowsPEPassInUnattend>",
        "        <wa:RetainOfflineServicingPassInUnattend>true</wa:RetainOfflineServicingPassInUnattend>",
        f"        <wa:PreprovisionedVm>{_bool(ovf.preprovisioned_vm)}</wa:PreprovisionedVm>",
        *([f"        <wa:PreprovisionedVMType>{escape(ovf.preprovisioned_vm_type)}</wa:PreprovisionedVMType>"]
          if ovf.preprovisioned_vm_type else []),
        "      </wa:PlatformSettings>",
        "    </wa:PlatformSettingsSection>",
        "</Environment>",
    ]
    return "\n".join(lines) + "\n"


def write_ovf_iso(scenario: Scenario, target: Union[str, Path], cache_dir: Optional[Path] = None) -> Path:
    """An ISO-9660 image (Joliet + Rock Ridge) holding ovf-env.xml, like the provisioning DVD (mode 0600:
    it carries the admin password)."""
    import io
    import os

    import pycdlib

    data = build_ovf_env(scenario, cache_dir).encode("utf-8")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="rd_rdfe_stable")
    iso.add_fp(io.BytesIO(data), len(data), "/OVF_ENV.XML;1", rr_name="ovf-env.xml", joliet_path="/ovf-env.xml")
    target = Path(target)
    fd = os.open(str(target), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        iso.write_fp(fh)
    iso.close()
    return target
