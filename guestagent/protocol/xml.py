"""The one XML parser for documents from the network: the interpreter's expat, hardened, plus lookups.

Fabric documents never need a DTD, so any DOCTYPE or ENTITY declaration is refused outright (that
closes XXE, external DTD fetches and entity-expansion bombs in one rule). The rule is enforced twice:
a byte scan before parsing, and expat handlers that abort on a DOCTYPE, an entity declaration or an
external entity reference (the scan cannot see a declaration in UTF-16). Entities are never
resolved, the network is never touched, documents above :data:`MAX_SIZE` are refused before parsing,
nesting deeper than :data:`MAX_DEPTH` is refused, comments and processing instructions are dropped.

expat is linked into the interpreter (``pyexpat``); lxml would cost the long-running ext-handler
~5.5 MB of resident memory and ElementTree ~1.5 MB, so the tree is a small :class:`Element` of our
own with the ElementTree attributes the lookups need (``tag`` as ``{namespace}local``, ``attrib``,
``text``, ``tail``). Lookups go by local tag name anywhere below a node, first match wins, as
upstream does.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Iterator, Mapping, Optional, Union
from xml.parsers import expat

from guestagent.errors import XmlError

#: Largest document accepted (bytes after decoding the transport encoding).
MAX_SIZE = 10 * 1024 * 1024
#: Deepest element nesting accepted (libxml2's default limit, which the lxml parser had).
MAX_DEPTH = 256
#: Most elements accepted in one document: a tree of this many costs ~20 MB; the largest real fabric
#: documents (SharedConfig of big deployments, manifests with hundreds of versions) have a few thousand.
MAX_ELEMENTS = 250_000

_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)
_BOM = b"\xef\xbb\xbf"
_DTD_REFUSED = "contains a DTD or entity declaration, which is not allowed"
# Shared by every element without attributes / children (most of them): ~120 bytes saved per element.
_NO_ATTRIBUTES: Mapping[str, str] = MappingProxyType({})


class Element:
    """One parsed element, shaped like ElementTree's: ``tag`` is ``{namespace}local`` or ``local``."""

    __slots__ = ("_children", "attrib", "tag", "tail", "text")

    def __init__(self, tag: str, attrib: Optional[Mapping[str, str]] = None) -> None:
        self.tag = tag
        self.attrib: Mapping[str, str] = attrib if attrib else _NO_ATTRIBUTES
        self.text: Optional[str] = None
        self.tail: Optional[str] = None
        self._children: Union[list, tuple] = ()

    def __repr__(self) -> str:
        return f"<Element {self.tag!r} at {id(self):#x}>"

    def __iter__(self) -> Iterator[Element]:
        return iter(self._children)

    def __len__(self) -> int:
        return len(self._children)

    def __getitem__(self, index: int) -> Element:
        return self._children[index]

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        return self.attrib.get(key, default)

    def iter(self) -> Iterator[Element]:
        """This element and every element below it, in document order (no recursion)."""
        stack = [self]
        while stack:
            el = stack.pop()
            yield el
            stack.extend(reversed(el._children))

    def itertext(self) -> Iterator[str]:
        """All text below this element in document order (its own tail excluded)."""
        stack: list = [self]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                yield item
                continue
            if item.text:
                yield item.text
            for child in reversed(item._children):
                if child.tail:
                    stack.append(child.tail)
                stack.append(child)


class _Builder:
    """expat handlers → a tree of :class:`Element`; every DTD construct aborts the parse."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.root: Optional[Element] = None
        self.stack: list = []
        self.count = 0

    def start(self, name: str, attrs: dict) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise XmlError(f"{self.what} is nested too deeply (limit {MAX_DEPTH} levels)")
        self.count += 1
        if self.count > MAX_ELEMENTS:
            raise XmlError(f"{self.what} has too many elements (limit {MAX_ELEMENTS})")
        el = Element(_qualified(name), {_qualified(k): v for k, v in attrs.items()} if attrs else None)
        if self.stack:
            parent = self.stack[-1]
            if parent._children:
                parent._children.append(el)
            else:
                parent._children = [el]
        else:
            self.root = el
        self.stack.append(el)

    def end(self, name: str) -> None:
        self.stack.pop()

    def data(self, text: str) -> None:
        if not self.stack:
            return
        parent = self.stack[-1]
        if parent._children:
            last = parent._children[-1]
            last.tail = text if last.tail is None else last.tail + text
        else:
            parent.text = text if parent.text is None else parent.text + text

    def refuse(self, *args) -> None:
        raise XmlError(f"{self.what} {_DTD_REFUSED}")


def _qualified(name: str) -> str:
    # expat reports "namespace}local" (our separator); ElementTree's spelling is "{namespace}local".
    return "{" + name if "}" in name else name


def _parse_hardened(raw: bytes, what: str, encoding: Optional[str]) -> Element:
    builder = _Builder(what)
    parser = expat.ParserCreate(encoding, "}")
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = builder.refuse
    parser.EntityDeclHandler = builder.refuse
    parser.UnparsedEntityDeclHandler = builder.refuse
    parser.NotationDeclHandler = builder.refuse
    parser.ExternalEntityRefHandler = builder.refuse
    try:
        parser.Parse(raw, True)
    except (expat.ExpatError, ValueError, LookupError) as e:
        raise XmlError(f"{what} is malformed: {e}") from None
    if builder.root is None:
        raise XmlError(f"{what} has no root element")
    return builder.root


def parse(data: Union[str, bytes], max_size: int = MAX_SIZE, what: str = "XML document") -> Element:
    """Parse ``data`` into an :class:`Element`; raise :class:`XmlError` for anything hostile or broken.

    Text (``str``) is parsed as the characters it is, whatever its XML declaration names; bytes are
    decoded as their declaration (or BOM) says, UTF-8 by default.
    """
    encoding = "utf-8" if isinstance(data, str) else None
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    if len(raw) > max_size:
        raise XmlError(f"{what} is too large: {len(raw)} bytes (limit {max_size})")
    if not raw.strip():
        raise XmlError(f"{what} is empty")
    if _DECLARATION.search(raw):
        raise XmlError(f"{what} {_DTD_REFUSED}")
    return _parse_hardened(raw, what, encoding)


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
