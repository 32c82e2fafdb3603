"""The one XML parser for documents from the network: lxml (libxml2), hardened, plus lookups.

Fabric documents never need a DTD, so a DOCTYPE is refused the moment the parser meets it, before
anything in it is read (that closes XXE, external DTD fetches and entity-expansion bombs in one
rule; it holds in any encoding). Besides: entities are never resolved, the network and DTDs are never
loaded, libxml2's own limits stay on (``huge_tree`` off), documents above :data:`MAX_SIZE` are
refused before parsing, nesting deeper than :data:`MAX_DEPTH` and more than :data:`MAX_ELEMENTS`
elements are refused while parsing, comments and processing instructions are dropped.

libxml2 parses into a small typed :class:`Element` tree of ours (a parser *target*: the caps and the
DOCTYPE refusal act during the parse, and the tree is plain Python with the ElementTree attributes the
lookups need: ``tag`` as ``{namespace}local``, ``attrib``, ``text``, ``tail``). Lookups go by local
tag name anywhere below a node, first match wins, as upstream does.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Iterator, Mapping, Optional, Union

from guestagent.errors import XmlError

if TYPE_CHECKING:
    from lxml.etree import _Element as _LxmlElement

#: Largest document accepted (bytes after decoding the transport encoding).
MAX_SIZE = 10 * 1024 * 1024
#: Deepest element nesting accepted (libxml2's own limit without ``huge_tree`` is one level more).
MAX_DEPTH = 256
#: Most elements accepted in one document: a tree of this many costs ~20 MB; the largest real fabric
#: documents (SharedConfig of big deployments, manifests with hundreds of versions) have a few thousand.
MAX_ELEMENTS = 250_000

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
    """libxml2's parse events → a tree of :class:`Element`; a DOCTYPE or a cap exceeded aborts the parse."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.root: Optional[Element] = None
        self.stack: list = []
        self.count = 0

    def start(self, tag: str, attrib: Mapping[str, str]) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise XmlError(f"{self.what} is nested too deeply (limit {MAX_DEPTH} levels)")
        self.count += 1
        if self.count > MAX_ELEMENTS:
            raise XmlError(f"{self.what} has too many elements (limit {MAX_ELEMENTS})")
        el = Element(tag, dict(attrib) if attrib else None)
        if self.stack:
            parent = self.stack[-1]
            if parent._children:
                parent._children.append(el)
            else:
                parent._children = [el]
        else:
            self.root = el
        self.stack.append(el)

    def end(self, tag: str) -> None:
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

    def doctype(self, name: Optional[str], public_id: Optional[str], system_url: Optional[str]) -> None:
        raise XmlError(f"{self.what} {_DTD_REFUSED}")

    def close(self) -> Optional[Element]:
        return self.root


def _checked(data: Union[str, bytes], max_size: int, what: str) -> tuple[bytes, Optional[str]]:
    # Text is parsed as the characters it is: its UTF-8 bytes, whatever encoding its declaration names.
    encoding = "utf-8" if isinstance(data, str) else None
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > max_size:
        raise XmlError(f"{what} is too large: {len(raw)} bytes (limit {max_size})")
    if not raw.strip():
        raise XmlError(f"{what} is empty")
    return raw, encoding


def _run(data: Union[str, bytes], max_size: int, what: str, target: Optional[_Builder]):
    """Parse with the options every document gets. Without a ``target`` lxml builds its own tree with
    every node kind kept (comments, processing instructions and CDATA sections apart from text)."""
    from lxml import etree  # local: importing this module (e.g. in the certificates helper) maps no libxml2

    raw, encoding = _checked(data, max_size, what)
    plain = target is None
    parser = etree.XMLParser(target=target, encoding=encoding, resolve_entities=False, no_network=True,
                             load_dtd=False, dtd_validation=False, huge_tree=False, remove_comments=not plain,
                             remove_pis=not plain, strip_cdata=not plain, collect_ids=False)
    try:
        result = etree.fromstring(raw, parser)
    except (etree.XMLSyntaxError, ValueError, LookupError) as e:
        raise XmlError(f"{what} is malformed: {e}") from None
    # With a target, libxml2 reports an unbound namespace prefix without stopping: malformed all the same.
    errors = parser.error_log.filter_from_errors()
    if errors:
        raise XmlError(f"{what} is malformed: {errors[0].message}")
    if result is None:
        raise XmlError(f"{what} has no root element")
    return result


def parse(data: Union[str, bytes], max_size: int = MAX_SIZE, what: str = "XML document") -> Element:
    """Parse ``data`` into an :class:`Element`; raise :class:`XmlError` for anything hostile or broken.

    Text (``str``) is parsed as the characters it is, whatever its XML declaration names; bytes are
    decoded as their declaration (or BOM) says, UTF-8 by default.
    """
    return _run(data, max_size, what, _Builder(what))


def parse_tree(data: Union[str, bytes], max_size: int = MAX_SIZE, what: str = "XML document") -> _LxmlElement:
    """lxml's own tree of a document :func:`parse` accepts, every node kind kept: for the one reader that
    must tell a text node from a CDATA section or a comment (ovf-env.xml, read as upstream's minidom does)."""
    parse(data, max_size, what)
    return _run(data, max_size, what, None)


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
