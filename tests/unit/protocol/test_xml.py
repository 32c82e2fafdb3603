"""The hardened XML parser: hostile and broken documents are refused with XmlError."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestagent.errors import XmlError
from guestagent.protocol import xml

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><GoalState><Incarnation>&x;</Incarnation></GoalState>"""
LAUGHS = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><lolz>&lol3;</lolz>"""
EXTERNAL_DTD = b"""<?xml version="1.0"?><!DOCTYPE GoalState SYSTEM "http://127.0.0.1:9/evil.dtd"><GoalState/>"""
PARAM_ENTITY = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p">%p;]><x/>"""
BOMB = b"""<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY a "aaaaaaaaaa">""" + b"".join(
    f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(9)) + b"]><lolz>&j;</lolz>"
UNPARSED = b"""<?xml version="1.0"?><!DOCTYPE r [<!NOTATION n SYSTEM "x"><!ENTITY u SYSTEM "http://127.0.0.1:9/u" NDATA n>
]><r/>"""
HOSTILE = [XXE, LAUGHS, BOMB, EXTERNAL_DTD, UNPARSED, PARAM_ENTITY]
HOSTILE_IDS = ["xxe", "laughs", "bomb", "dtd", "unparsed", "param"]


@pytest.mark.parametrize("doc", HOSTILE, ids=HOSTILE_IDS)
def test_dtd_and_entities_are_refused(doc):
    with pytest.raises(XmlError, match="Goal state contains a DTD or entity declaration"):
        xml.parse(doc, what="Goal state")


def test_a_lowercase_doctype_is_no_declaration_and_refused_as_malformed():
    # XML names are case-sensitive: "<!doctype" declares nothing, libxml2 stops at it.
    with pytest.raises(XmlError, match="malformed"):
        xml.parse(PARAM_ENTITY.replace(b"DOCTYPE", b"doctype").replace(b"ENTITY", b"entity"))


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


# --- the DOCTYPE rule holds in any encoding and before anything in the DTD is read ----------------------

@pytest.mark.parametrize("doc", HOSTILE, ids=HOSTILE_IDS)
def test_utf16_documents_with_a_dtd_are_refused(doc):
    # No byte pattern can see "<!DOCTYPE" in UTF-16: the parser refuses it as it meets it.
    encoded = doc.decode().replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="utf-16"?>').encode("utf-16")
    assert b"<!DOCTYPE" not in encoded
    with pytest.raises(XmlError, match="DTD or entity"):
        xml.parse(encoded)


def test_bomb_is_refused_fast_and_expands_nothing():
    start = time.perf_counter()
    with pytest.raises(XmlError, match="DTD or entity"):
        xml.parse(BOMB)
    assert time.perf_counter() - start < 0.5


def test_external_entity_is_never_fetched():
    # A listening socket on loopback: the parser must refuse before any connection to it.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(0.2)
        port = srv.getsockname()[1]
        doc = (f'<?xml version="1.0"?><!DOCTYPE r SYSTEM "http://127.0.0.1:{port}/x.dtd">'
               f'<r>&e;</r>').encode()
        with pytest.raises(XmlError):
            xml.parse(doc)
        with pytest.raises(socket.timeout):
            srv.accept()


def test_documents_up_to_the_limit_parse_and_depth_is_capped():
    doc = b"<a>" + b"<b>x</b>" * 20000 + b"</a>"
    assert len(xml.findall(xml.parse(doc, max_size=len(doc)), "b")) == 20000
    with pytest.raises(XmlError, match="too large"):
        xml.parse(doc, max_size=len(doc) - 1)
    deep = b"<a>" * xml.MAX_DEPTH + b"</a>" * xml.MAX_DEPTH
    assert len(list(xml.parse(deep).iter())) == xml.MAX_DEPTH
    with pytest.raises(XmlError, match="nested too deeply"):
        xml.parse(b"<a>" + deep + b"</a>")


def test_element_count_is_capped(monkeypatch):
    monkeypatch.setattr(xml, "MAX_ELEMENTS", 1000)
    assert len(xml.parse(b"<a>" + b"<b/>" * 999 + b"</a>")) == 999
    with pytest.raises(XmlError, match="too many elements"):
        xml.parse(b"<a>" + b"<b/>" * 1000 + b"</a>", what="SharedConfig")


def test_a_document_of_the_size_limit_made_of_tiny_elements_is_refused_quickly():
    # 2.6 million empty elements would be a ~200 MB tree in the small ext-handler: refused at the cap.
    start = time.perf_counter()
    with pytest.raises(XmlError, match="too many elements"):
        xml.parse(b"<a>" + b"<b/>" * (xml.MAX_SIZE // 4 - 2) + b"</a>")
    assert time.perf_counter() - start < 10


def test_shared_empty_attributes_cannot_be_changed_through_one_element():
    root = xml.parse("<a><b/><c/></a>")
    with pytest.raises(TypeError):
        root[0].attrib["x"] = "1"  # type: ignore[index]
    assert xml.attr(root[1], "x") is None and dict(root.attrib) == {} and len(root[0]) == 0


@pytest.mark.parametrize("doc", [b"<a>x</a><b/>", b"<a b='1' b='2'/>", b"<a>&#0;</a>", b"<p:a/>",
                                 b'<?xml version="1.0" encoding="bogus"?><a/>',
                                 b"<a q:x='1'/>", b"\xff\xfe<\x00", b"<a>\xff</a>"],
                         ids=["two-roots", "dup-attr", "nul-ref", "unbound-prefix", "bad-encoding", "unbound-attr",
                              "truncated-utf16", "bad-utf8"])
def test_more_malformed_documents_have_a_clear_error(doc):
    with pytest.raises(XmlError, match=r"Goal state is malformed: .+"):
        xml.parse(doc, what="Goal state")


def test_bom_and_encodings():
    body = '<?xml version="1.0" encoding="utf-8"?><a k="é">ü</a>'
    for doc in [body, "\ufeff" + body, body.encode(), b"\xef\xbb\xbf" + body.encode(),
                body.replace("utf-8", "utf-16").encode("utf-16"),
                body.replace("utf-8", "iso-8859-1").encode("latin-1"),
                body.replace("utf-8", "utf-16")]:  # text is parsed as the characters it is
        root = xml.parse(doc)
        assert (root.tag, xml.text(root), xml.attr(root, "k")) == ("a", "ü", "é")
    multibyte = '<?xml version="1.0" encoding="shift_jis"?><a>日本</a>'.encode("shift_jis")  # expat could not
    assert xml.text(xml.parse(multibyte)) == "日本"


def test_namespaces_comments_pis_and_cdata():
    root = xml.parse(b'<?xml version="1.0"?><?pi x?><r xmlns="urn:d" xmlns:p="urn:p" p:a="1" b="2">'
                     b'x<!-- c -->y<?pi inner?><p:e xml:lang="en">1</p:e>t<![CDATA[<&>]]><e/></r><!-- after -->')
    assert root.tag == "{urn:d}r"
    assert root.attrib == {"{urn:p}a": "1", "b": "2"}  # xmlns declarations are not attributes
    assert [e.tag for e in root.iter()] == ["{urn:d}r", "{urn:p}e", "{urn:d}e"]
    assert xml.local_name(root[0]) == "e" and xml.attr(root[0], "lang") == "en"
    assert root.text == "xy" and root[0].tail == "t<&>" and xml.text(root) == "xy1t<&>"
    assert [e.tag for e in xml.findall(root, "e")] == ["{urn:p}e", "{urn:d}e"]
    assert len(root) == 2 and [c.tag for c in root] == ["{urn:p}e", "{urn:d}e"] and root.get("b") == "2"


def test_text_and_tails_in_document_order():
    root = xml.parse("<a>1<b>2<c>3</c>4</b>5<d/>6</a>")
    assert list(root.itertext()) == ["1", "2", "3", "4", "5", "6"]
    assert xml.text(xml.find(root, "b")) == "234"  # an element's own tail is not its text
    assert xml.text(xml.find(root, "d")) == "" and xml.findtext(root, "d") == ""


def _shape(el):
    return (el.tag, dict(el.attrib), el.text, el.tail, [_shape(c) for c in el])


def test_same_trees_as_elementtree_on_upstream_samples(upstream):
    """Every upstream XML sample parses to the tree ElementTree builds (comments/PIs dropped)."""
    import xml.etree.ElementTree as ET

    samples = sorted(upstream.rglob("*.xml"))
    assert len(samples) > 20
    compared = 0
    for path in samples:
        data = path.read_bytes()
        try:
            expected = ET.fromstring(data)
        except ET.ParseError:
            with pytest.raises(XmlError):
                xml.parse(data)
            continue
        if b"<!DOCTYPE" in data:
            with pytest.raises(XmlError, match="DTD"):
                xml.parse(data)
            continue
        ours = xml.parse(data)
        expected.tail = None
        assert _shape(ours) == _shape(expected), path
        compared += 1
    assert compared > 20


def test_the_parser_is_lxml_and_no_other():
    code = ("import sys; from guestagent.protocol import xml; xml.parse('<a xmlns=\"urn:x\"><b>1</b></a>'); "
            "print(sorted(m for m in sys.modules if m.startswith(('lxml', 'xml', 'pyexpat'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[3]).stdout
    assert out.strip() == "['lxml', 'lxml._elementpath', 'lxml.etree']"
