"""ovf-env.xml → :class:`OvfEnv` (spec 05 §1).

The document goes through the hardened parser (size cap, no DTD/entities, well-formed) into lxml's
tree; values are read with upstream's exact (minidom) semantics — namespace-qualified lookups anywhere
below the parent, an element's *first plain text node*, untrimmed (so an empty or CDATA-only element
reads as absent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from lxml import etree

from guestagent import log
from guestagent.errors import ProtocolError, XmlError
from guestagent.osutil import users
from guestagent.protocol import xml as hardened

OVF_VERSION = "1.0"
OVF_NS = "http://schemas.dmtf.org/ovf/environment/1"
WA_NS = "http://schemas.microsoft.com/windowsazure"
#: ovf-env.xml is a few KiB; anything near this is not a provisioning document.
MAX_SIZE = 1024 * 1024

# Every UserPassword element's content (any prefix, multi-line, CDATA) → "*". Upstream's
# "<UserPassword>.*?<" misses prefixed and multi-line passwords; for the usual form the output is
# byte-identical to upstream's.
_PASSWORD = re.compile(r"(<((?:[\w.-]+:)?UserPassword)(?:\s[^>]*)?>)(.*?)(</\2\s*>)", re.DOTALL)
_UPSTREAM_PASSWORD = re.compile(r"<UserPassword>.*?<")


@dataclass(frozen=True)
class PublicKey:
    path: Optional[str]
    fingerprint: Optional[str]
    value: Optional[str]


@dataclass(frozen=True)
class KeyPair:
    path: Optional[str]
    fingerprint: Optional[str]


@dataclass
class OvfEnv:
    version: str
    hostname: str
    username: str
    user_password: Optional[str] = field(default=None, repr=False)
    disable_ssh_password_auth: bool = False
    ssh_pubkeys: list[PublicKey] = field(default_factory=list)
    ssh_keypairs: list[KeyPair] = field(default_factory=list)
    customdata: Optional[str] = field(default=None, repr=False)
    #: Raw text of PlatformSettings/ProvisionGuestAgent (required, non-empty).
    provision_guest_agent: str = ""
    configuration_set_type: Optional[str] = None
    kms_server_hostname: Optional[str] = None
    preprovisioned_vm: bool = False
    preprovisioned_vm_type: Optional[str] = None

    @property
    def agent_disabled(self) -> bool:
        """``ProvisionGuestAgent`` = false (any case) → disable the agent after provisioning."""
        return self.provision_guest_agent.lower() == "false"


def _first(node: Optional[etree._Element], ns: str, tag: str) -> Optional[etree._Element]:
    """The first element ``{ns}tag`` below ``node`` (minidom's getElementsByTagNameNS: the node excluded)."""
    if node is None:
        return None
    return next(node.iterdescendants(f"{{{ns}}}{tag}"), None)


def _all(node: etree._Element, ns: str, tag: str) -> list[etree._Element]:
    return list(node.iterdescendants(f"{{{ns}}}{tag}"))


# lxml's serialization of an element: comments, PIs, CDATA sections, tags, text ('<', '>' always escaped).
_TOKEN = re.compile(r"<!--.*?-->|<\?.*?\?>|<!\[CDATA\[.*?\]\]>|<[^>]*>|[^<]+", re.DOTALL)


def _text(node: Optional[etree._Element]) -> Optional[str]:
    """Upstream's gettext: the first child *text* node's data; a CDATA section is not one, a comment ends
    one. lxml joins text and CDATA in ``text``/``tail`` but keeps them apart in its tree, so their order is
    read off its serialization and the value off the matching ``text()`` node."""
    if node is None:
        return None
    depth = 0
    seen = 0  # CDATA sections of this element passed so far
    for token in _TOKEN.findall(etree.tostring(node, encoding=str, with_tail=False)):
        if token.startswith(("<!--", "<?")):
            continue
        if token.startswith("<![CDATA["):
            seen += depth == 1
        elif token.startswith("</"):
            depth -= 1
        elif token.startswith("<"):
            depth += not token.endswith("/>")
        elif depth == 1:
            return str(node.xpath("text()")[seen])
    return None


def _findtext(node: Optional[etree._Element], ns: str, tag: str) -> Optional[str]:
    return _text(_first(node, ns, tag))


def _require(value, what: str):
    if value is None:
        raise ProtocolError(f"Failed to validate OVF: {what} not found")
    return value


def parse_ovf_env(text: str, deprovision: bool = False) -> OvfEnv:
    """Parse and validate; any problem is a :class:`ProtocolError` saying what is missing or broken.
    ``deprovision`` (reading the saved copy) skips the secrets: password and custom data."""
    if text is None:
        raise ProtocolError("Failed to validate OVF: ovf-env.xml is empty")
    try:
        root = hardened.parse_tree(text, max_size=MAX_SIZE, what="ovf-env.xml")
    except XmlError as e:
        raise ProtocolError(f"Failed to validate OVF: {e.msg}") from None
    return _parse(root, deprovision)


def _parse(root: etree._Element, deprovision: bool) -> OvfEnv:
    environment = f"{{{OVF_NS}}}Environment"
    env = _require(root if root.tag == environment else _first(root, OVF_NS, "Environment"), "Environment")
    section = _require(_first(env, WA_NS, "ProvisioningSection"), "ProvisioningSection")
    version = _require(_findtext(env, WA_NS, "Version"), "Version")
    if version > OVF_VERSION:
        log.warn("Newer provisioning configuration detected. Please consider updating waagent")
    conf_set = _require(_first(section, WA_NS, "LinuxProvisioningConfigurationSet"),
                        "LinuxProvisioningConfigurationSet")
    hostname = _require(_findtext(conf_set, WA_NS, "HostName"), "HostName")
    username = _require(_findtext(conf_set, WA_NS, "UserName"), "UserName")
    why = users.username_error(username)
    if why is not None:
        raise ProtocolError(f"Failed to validate OVF: invalid user name {username!r}: {why}")
    ovf = OvfEnv(version=version, hostname=hostname, username=username,
                 configuration_set_type=_findtext(conf_set, WA_NS, "ConfigurationSetType"))
    if not deprovision:
        ovf.user_password = _findtext(conf_set, WA_NS, "UserPassword")
        if ovf.user_password:
            log.register_secret(ovf.user_password)
        ovf.customdata = _findtext(conf_set, WA_NS, "CustomData")
        auth = _findtext(conf_set, WA_NS, "DisableSshPasswordAuthentication")
        ovf.disable_ssh_password_auth = auth is not None and auth.lower() == "true"
        for key in _all(conf_set, WA_NS, "PublicKey"):
            ovf.ssh_pubkeys.append(PublicKey(_findtext(key, WA_NS, "Path"), _findtext(key, WA_NS, "Fingerprint"),
                                             _findtext(key, WA_NS, "Value")))
        for pair in _all(conf_set, WA_NS, "KeyPair"):
            ovf.ssh_keypairs.append(KeyPair(_findtext(pair, WA_NS, "Path"), _findtext(pair, WA_NS, "Fingerprint")))
    platform = _require(_first(env, WA_NS, "PlatformSettingsSection"), "PlatformSettingsSection")
    settings = _require(_first(platform, WA_NS, "PlatformSettings"), "PlatformSettings")
    ovf.provision_guest_agent = _require(_findtext(settings, WA_NS, "ProvisionGuestAgent"), "ProvisionGuestAgent")
    ovf.kms_server_hostname = _findtext(settings, WA_NS, "KmsServerHostname")
    pre = _findtext(settings, WA_NS, "PreprovisionedVm")
    ovf.preprovisioned_vm = pre is not None and pre.strip().lower() == "true"
    ovf.preprovisioned_vm_type = _findtext(settings, WA_NS, "PreprovisionedVMType")
    return ovf


def redact_password(text: str) -> str:
    """The copy kept on disk: every UserPassword's content replaced by ``*``."""
    text = _PASSWORD.sub(lambda m: m.group(1) + "*" + m.group(4), text)
    return _UPSTREAM_PASSWORD.sub("<UserPassword>*<", text)
