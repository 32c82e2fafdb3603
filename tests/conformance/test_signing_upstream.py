"""Upstream's signing samples (tests/data/signing) against the native verifier and the shipped Microsoft root.

The signed VMAccess package itself is not among the samples in ../shared (only its signatures and the
wrong root are), so these tests prove the parts that do not need the zip: the real Microsoft signature
parses, its certificates chain to the Microsoft Root Certificate Authority 2011 the agent ships (the
failure is then the digest of the content, not the chain), and upstream's "incorrect" root is refused as
the wrong signer. (Checked by hand with the package from upstream's repository: valid against the shipped
root, "message digest mismatch" for the modified zip, exactly where ``openssl cms -verify`` agrees.)
"""

from __future__ import annotations

from guestagent.exthandler.extensions import signing
from guestagent.protocol import signatures as sig


def _verify(tmp_path, signature_file, root_pem: bytes) -> str:
    content = tmp_path / "not-the-package.zip"
    content.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    try:
        sig.verify_detached(str(content), sig.decode_signature(signature_file.read_text()), sig.load_roots(root_pem))
    except sig.SignatureError as e:
        return str(e)
    return "valid"


def test_the_microsoft_signature_chains_to_the_shipped_root(upstream, tmp_path):
    root = open(signing.ROOT_DATA, "rb").read()
    assert _verify(tmp_path, upstream / "signing" / "vm_access_signature.txt", root) == (
        "the package does not match the signature (message digest mismatch)")


def test_upstreams_incorrect_root_is_a_wrong_signer(upstream, tmp_path):
    wrong = (upstream / "signing" / "incorrect_microsoft_root_cert.pem").read_bytes()
    assert "does not chain to the trusted root" in _verify(tmp_path, upstream / "signing" / "vm_access_signature.txt",
                                                           wrong)


def test_upstreams_invalid_signature_is_refused(upstream, tmp_path):
    root = open(signing.ROOT_DATA, "rb").read()
    assert _verify(tmp_path, upstream / "signing" / "invalid_signature.txt", root) != "valid"
