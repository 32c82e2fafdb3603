"""The one XML parser for documents from the network: hardened lxml plus tag-name lookups.

Fabric documents never need a DTD, so any DOCTYPE or ENTITY declaration is refused outright (that
closes XXE, external DTD fetches and entity-expansion bombs in one rule); entities are never
resolved, the network is never touched and documents above :data:`MAX_SIZE` are refused before
parsing. Lookups go by local tag name anywhere below a node, first match wins, as upstream does.
"""

from __future__ import annotations

import re
from typing import Optional, Union

from guestagent.errors import XmlError

#: Largest document accepted (bytes after decoding the transport encoding).
MAX_SIZE = 10 * 1024 * 1024

_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_BOM = b"\xef\xbb\xbf"

_parser = None


def _get_parser():
    global _parser
    if _parser is None:
        from lxml import etree

        _parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                                  huge_tree=False, remove_comments=True, remove_pis=True)
    return _parser


def parse(data: Union[str, bytes], max_size: int = MAX_SIZE, what: str = "XML document"):
    """Parse ``data`` into an lxml element; raise :class:`XmlError` for anything hostile or broken."""
    from lxml import etree

    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    if len(raw) > max_size:
        raise XmlError(f"{what} is too large: {len(raw)} bytes (limit {max_size})")
    if not raw.strip():
        raise XmlError(f"{what} is empty")
    if _DECLARATION.search(raw):
        raise XmlError(f"{what} contains a DTD or entity declaration, which is not allowed")
    try:
        root = etree.fromstring(raw, parser=_get_parser())
    except (etree.XMLSyntaxError, ValueError) as e:
        raise XmlError(f"{what} is malformed: {e}") from None
    if root is None:
        raise XmlError(f"{what} has no root element")
    return root


def local_name(el) -> str:
    tag = el.tag
    if not isinstance(tag, str):
        return ""
    return tag.rsplit("}", 1)[-1]


def find(node, tag: str):
    """First element named ``tag`` (local name) at or below ``node``, or None."""
    if node is None:
        return None
    for el in node.iter():
        if local_name(el) == tag:
            return el
    return None


def findall(node, tag: str) -> list:
    if node is None:
        return []
    return [el for el in node.iter() if local_name(el) == tag]


def text(node) -> Optional[str]:
    """The element's text content (all text below it, like upstream's gettext), or None for no node."""
    if node is None:
        return None
    return "".join(node.itertext())


def findtext(node, tag: str, default: Optional[str] = None) -> Optional[str]:
    found = find(node, tag)
    if found is None:
        return default
    return text(found)


def attr(node, name: str, default: Optional[str] = None) -> Optional[str]:
    if node is None:
        return default
    for key, value in node.attrib.items():
        if key == name or key.rsplit("}", 1)[-1] == name:
            return value
    return default


def escape(value: str) -> str:
    """Escape ``&``, ``<`` and ``>`` for element text (what upstream's health report escapes)."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
