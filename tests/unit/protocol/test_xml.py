"""The hardened XML parser: hostile and broken documents are refused with XmlError."""

import pytest

from guestagent.errors import XmlError
from guestagent.protocol import xml

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><GoalState><Incarnation>&x;</Incarnation></GoalState>"""
LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><lolz>&lol3;</lolz>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?><!DOCTYPE GoalState SYSTEM "http://127.0.0.1:9/evil.dtd"><GoalState/>"""
PARAM_ENTITY = b"""<?xml version="1.0"?><!doctype x [<!entity % p SYSTEM "http://127.0.0.1:9/p">%p;]><x/>"""


@pytest.mark.parametrize("doc", [XXE, LAUGHS, EXTERNAL_DTD, PARAM_ENTITY], ids=["xxe", "laughs", "dtd", "param"])
def test_dtd_and_entities_are_refused(doc):
    with pytest.raises(XmlError, match="DTD or entity"):
        xml.parse(doc)


def test_oversize_is_refused_before_parsing():
    doc = b"<a>" + b"x" * 200 + b"</a>"
    with pytest.raises(XmlError, match="too large"):
        xml.parse(doc, max_size=100)
    big = b"<a>" + b"<b>x</b>" * (xml.MAX_SIZE // 8 + 1) + b"</a>"
    with pytest.raises(XmlError, match="too large"):
        xml.parse(big)


@pytest.mark.parametrize("doc", [b"", b"   ", b"<a><b></a>", b"<a>", b"not xml", b"<a>\x00</a>"])
def test_malformed(doc):
    with pytest.raises(XmlError):
        xml.parse(doc, what="Goal state")


def test_undefined_entity_is_an_error_not_an_expansion():
    with pytest.raises(XmlError):
        xml.parse("<a>&undefined;</a>")


def test_lookups_by_local_name_anywhere_first_match():
    root = xml.parse('\ufeff<?xml version="1.0" encoding="utf-8"?><r xmlns="urn:x" xmlns:p="urn:p"><a><B>1</B></a>'
                     '<B>2</B><p:C k="v" p:z="w">t<i>u</i></p:C></r>'.encode())
    assert xml.findtext(root, "B") == "1"
    assert [xml.text(e) for e in xml.findall(root, "B")] == ["1", "2"]
    c = xml.find(root, "C")
    assert xml.text(c) == "tu"
    assert xml.attr(c, "k") == "v" and xml.attr(c, "z") == "w" and xml.attr(c, "nope", "d") == "d"
    assert xml.find(root, "missing") is None and xml.findtext(root, "missing", "x") == "x"
    assert xml.find(None, "B") is None and xml.findall(None, "B") == []


def test_escape():
    assert xml.escape("a<b>&c") == "a&lt;b&gt;&amp;c"
