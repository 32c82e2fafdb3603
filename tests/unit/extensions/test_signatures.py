"""The native package-signature verifier against the fabric's independently written signer, the helper
interpreter the ext-handler uses, the signingInfo check, and the root certificate written at start."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys

import pytest

from guestagent.exthandler.extensions import signing
from guestagent.fabric.signing import PackageSigner
from guestagent.protocol import signatures as sig

PACKAGE = b"PK\x03\x04 a handler package" * 100


@pytest.fixture(scope="module")
def signer():
    return PackageSigner()


@pytest.fixture
def package(tmp_path):
    path = tmp_path / "Pub.Ext__1.0.0.zip"
    path.write_bytes(PACKAGE)
    return path


def verify(package, encoded: str, root_pem: str) -> str:
    try:
        sig.verify_detached(str(package), sig.decode_signature(encoded), sig.load_roots(root_pem.encode()))
        return "valid"
    except sig.SignatureError as e:
        return str(e)


def test_cases(signer, package):
    root = signer.root_pem()
    assert verify(package, signer.encoded_signature(PACKAGE, "valid"), root) == "valid"
    assert verify(package, signer.encoded_signature(PACKAGE, "tampered"), root) == (
        "the package does not match the signature (message digest mismatch)")
    assert "does not chain to the trusted root" in verify(package, signer.encoded_signature(PACKAGE, "wrong_signer"),
                                                          root)
    assert verify(package, "not base64!", root) == "the signature is not valid base64"
    assert verify(package, base64.b64encode(b"\x30\x03\x02\x01\x00").decode(), root).startswith(
        "the signature cannot be parsed")
    # the Microsoft root does not accept the fabric's signature
    ms = open(signing.ROOT_DATA).read()
    assert "does not chain" in verify(package, signer.encoded_signature(PACKAGE, "valid"), ms)


def test_the_helper_interpreter(signer, package, tmp_path):
    root = tmp_path / "root.pem"
    root.write_text(signer.root_pem())
    for mode, ok in (("valid", True), ("tampered", False)):
        res = subprocess.run([sys.executable, "-m", "guestagent.protocol.signatures", str(package), str(root)],
                             input=signer.encoded_signature(PACKAGE, mode), capture_output=True, text=True, check=True)
        assert json.loads(res.stdout)["ok"] is ok


def test_signing_info():
    manifest = {"signingInfo": {"type": "customscript", "publisher": "microsoft.azure.extensions", "version": "2.1.10"}}
    signing.validate_signing_info(manifest, "Microsoft.Azure.Extensions.CustomScript", "2.1.10", "/tmp/x", "WARNING")
    for info, problem in (
            (None, "HandlerManifest.json does not contain 'signingInfo'"),
            ({"type": "CustomScript", "publisher": "Microsoft.Azure.Extensions"},
             "HandlerManifest.json does not contain attribute 'signingInfo.version'"),
            ({"type": "CustomScript", "publisher": "Microsoft.Azure.Extensions", "version": "2.1.9"},
             "expected extension version '2.1.10' does not match downloaded package version '2.1.9'")):
        with pytest.raises(signing.PackageValidationError) as e:
            signing.validate_signing_info({"signingInfo": info} if info else {}, "Microsoft.Azure.Extensions.CustomScript",
                                          "2.1.10", "/tmp/x", "WARNING")
        assert e.value.msg == problem


def test_the_root_certificate_is_written_as_upstream(tmp_root):
    signing.write_root_certificate("/var/lib/waagent")
    path = tmp_root / "var" / "lib" / "waagent" / "microsoft_root_certificate.pem"
    text = path.read_text()
    assert text.startswith("-----BEGIN CERTIFICATE-----\nMIIF7TCCA9WgAwIBAgIQP4vItfyfspZDtWnWbELhRDANBgkqhkiG9w0BAQsFADCB")
    assert text.endswith("-----END CERTIFICATE-----") and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(text.encode())
    assert cert.subject.rfc4514_string() == ("CN=Microsoft Root Certificate Authority 2011,O=Microsoft Corporation,"
                                             "L=Redmond,ST=Washington,C=US")
