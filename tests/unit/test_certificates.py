"""Transport certificate, CMS/PFX decryption, certificate files and secrets (spec 01 §6–§8, 03 §9).

Static vectors in tests/data/certs come from the openssl CLI (make_vectors.sh); the hostile and
multi-key shapes come from tests/data/certs/vectors.py. Both encryption sides are independent of the
code under test.
"""

from __future__ import annotations

import base64
import datetime
import importlib.util
import io
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from guestagent import log
from guestagent.errors import CryptError
from guestagent.osutil import sshkeys
from guestagent.protocol import certificates as certs
from guestagent.protocol import cms
from tests.conftest import cert_lifetime

_spec = importlib.util.spec_from_file_location(
    "certs_vectors", Path(__file__).resolve().parents[1] / "data" / "certs" / "vectors.py")
vectors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vectors)

PASSWORD = "J1t-P@ssw0rd!"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")


@pytest.fixture
def captured():
    stream = io.StringIO()
    log.add_appender("test", log.StreamAppender(log.VERBOSE, stream))
    yield stream
    log.remove_appender("test")


@pytest.fixture(scope="module")
def recipient():
    """A transport-like (key, cert) pair made by the test side."""
    return vectors.make_pair("LinuxTransport")


@pytest.fixture
def lib(tmp_path):
    """A lib dir holding the openssl-made transport pair."""
    d = tmp_path / "waagent"
    d.mkdir()
    (d / certs.TRANSPORT_PRV_FILE).write_bytes(vectors.read("transport.key"))
    (d / certs.TRANSPORT_CERT_FILE).write_bytes(vectors.read("transport.crt"))
    return d


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _key_secrets(*key_pems: bytes) -> list[str]:
    """Body lines of PEM keys: none may ever appear in a log."""
    return [line for pem in key_pems for line in pem.decode().splitlines() if "-----" not in line]


# --------------------------------------------------------------------------- transport certificate

def test_transport_cert_has_the_upstream_shape(tmp_path):
    certs.ensure_transport_cert(str(tmp_path))
    key_file, cert_file = tmp_path / "TransportPrivate.pem", tmp_path / "TransportCert.pem"
    assert _mode(key_file) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    key = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert key.key_size == 2048
    assert cert.subject.rfc4514_string() == cert.issuer.rfc4514_string() == "CN=LinuxTransport"
    assert cert_lifetime(cert) == datetime.timedelta(days=730)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski.digest == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.public_key().public_bytes(*spki) == cert.public_key().public_bytes(*spki)
    header = certs.transport_cert_header(str(tmp_path))
    assert base64.b64decode(header) == cert.public_bytes(serialization.Encoding.DER)


@needs_openssl
def test_openssl_encrypts_to_our_transport_cert_by_ski(tmp_path):
    """The fabric addresses the bundle by SKI (openssl -keyid): our cert must make that work."""
    certs.ensure_transport_cert(str(tmp_path))
    plain = os.urandom(100)
    out = subprocess.run(["openssl", "cms", "-encrypt", "-binary", "-outform", "DER", "-aes128", "-keyid",
                          "-recip", str(tmp_path / "TransportCert.pem")], input=plain, capture_output=True,
                         check=True).stdout
    assert cms.decrypt_cms(out, (tmp_path / "TransportPrivate.pem").read_bytes(),
                           (tmp_path / "TransportCert.pem").read_bytes()) == plain


def test_transport_cert_regenerate_or_keep(tmp_path):
    certs.ensure_transport_cert(str(tmp_path))
    first = (tmp_path / "TransportCert.pem").read_bytes()
    certs.ensure_transport_cert(str(tmp_path), regenerate=False)
    assert (tmp_path / "TransportCert.pem").read_bytes() == first
    certs.ensure_transport_cert(str(tmp_path))
    second = (tmp_path / "TransportCert.pem").read_bytes()
    assert second != first
    # a key that does not belong to the certificate is replaced even without regenerate
    (tmp_path / "TransportCert.pem").write_bytes(vectors.read("tenant.crt"))
    certs.ensure_transport_cert(str(tmp_path), regenerate=False)
    assert (tmp_path / "TransportCert.pem").read_bytes() not in (second, vectors.read("tenant.crt"))


def test_transport_cert_failure_is_logged_not_raised(tmp_path, captured):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    certs.ensure_transport_cert(str(blocker / "lib"))
    assert "ERROR" in captured.getvalue() and "TransportPrivate.pem" in captured.getvalue()
    with pytest.raises(CryptError, match="transport certificate"):
        certs.transport_cert_header(str(tmp_path))


# --------------------------------------------------------------------------- CMS

@pytest.mark.parametrize("name", ["pfx-aes128-oaep-ski.der", "pfx-3des-pkcs1-ski.der",
                                  "pfx-aes256-pkcs1-issuer.der", "pfx-aes192-oaep-issuer.der"])
@pytest.mark.parametrize("with_cert", [True, False])
def test_openssl_envelopes_decrypt(name, with_cert):
    key = vectors.read("transport.key")
    cert = vectors.read("transport.crt") if with_cert else None
    pfx = cms.decrypt_cms(vectors.read(name), key, cert)
    contents = cms.parse_pfx(pfx)
    expected = vectors.thumbprints()
    assert sorted(certs.thumbprint(c) for c in contents.certificates) == sorted([expected["tenant"], expected["ca"]])
    assert len(contents.keys) == 1 and contents.mac_verified


@pytest.mark.parametrize("cipher", ["aes128", "aes192", "aes256", "tripledes"])
@pytest.mark.parametrize("oaep", [False, True])
@pytest.mark.parametrize("by_ski", [False, True])
def test_every_cipher_padding_and_recipient_kind(recipient, cipher, oaep, by_ski):
    key, cert = recipient
    for size in (0, 1, 15, 16, 17, 1000):
        plain = os.urandom(size)
        der = vectors.envelope(plain, cert, cipher=cipher, oaep=oaep, by_ski=by_ski)
        assert cms.decrypt_cms(der, vectors.key_pem(key), vectors.cert_pem(cert)) == plain
        assert cms.decrypt_cms(der, vectors.key_pem(key), None) == plain


def test_hostile_cms_gives_clear_errors(recipient):
    key, cert = recipient
    kp, cp = vectors.key_pem(key), vectors.cert_pem(cert)
    good = vectors.envelope(b"secret-plaintext-value", cert)
    for bad, match in [(b"", "empty"), (b"\x00garbage" * 10, "not valid DER"),
                       (good[:len(good) // 2], "not valid DER"), (good[:-5], "not valid DER")]:
        with pytest.raises(CryptError, match=match):
            cms.decrypt_cms(bad, kp, cp)
    for cut in range(1, len(good), 37):  # truncated anywhere: always CryptError, never another exception
        with pytest.raises(CryptError):
            cms.decrypt_cms(good[:cut], kp, cp)
    other_key, other_cert = vectors.make_pair("someone else")
    with pytest.raises(CryptError, match="no recipient"):
        cms.decrypt_cms(good, vectors.key_pem(other_key), vectors.cert_pem(other_cert))
    for oaep in (False, True):  # wrong key without a certificate: unwrap or padding fails cleanly
        with pytest.raises(CryptError, match="wrong key"):
            cms.decrypt_cms(vectors.envelope(b"x" * 40, cert, oaep=oaep), vectors.key_pem(other_key), None)
    for tail in (b"\x00", b"\x11", b"\x03\x03\x02"):
        der = vectors.envelope(b"A" * (16 - len(tail)) + tail, cert, pad=False)
        with pytest.raises(CryptError, match="bad padding"):
            cms.decrypt_cms(der, kp, cp)
    with pytest.raises(CryptError, match="whole number"):
        cms.decrypt_cms(vectors.envelope(b"A" * 20, cert, trim=3), kp, cp)
    with pytest.raises(CryptError, match="enveloped_data"):
        from asn1crypto import cms as acms
        cms.decrypt_cms(acms.ContentInfo({"content_type": "data", "content": b"hello"}).dump(), kp, cp)
    with pytest.raises(CryptError, match="private key"):
        cms.decrypt_cms(good, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", cp)
    with pytest.raises(CryptError, match="expected 16"):  # a 3DES-sized CEK on an AES-128 message
        cms.decrypt_cms(vectors.envelope(b"x", cert, cek=os.urandom(24)), kp, cp)


# --------------------------------------------------------------------------- PFX

def test_pfx_variants():
    expected = vectors.thumbprints()
    for name in ("tenant.pfx", "tenant-aes.pfx"):
        contents = cms.parse_pfx(vectors.read(name))
        assert contents.mac_verified
        assert {certs.thumbprint(c) for c in contents.certificates} == {expected["tenant"], expected["ca"]}
        assert vectors.key_pem(contents.keys[0]) == serialization.load_pem_private_key(
            vectors.read("tenant.key"), None).private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption())
    one, two = vectors.make_pair("one"), vectors.make_pair("two")
    for nested in (False, True):
        contents = cms.parse_pfx(vectors.build_pfx([one[0], two[0]], [two[1]], nested=nested))
        assert len(contents.keys) == 2 and len(contents.certificates) == 1 and not contents.mac_verified
    with pytest.raises(CryptError, match="RC2"):
        cms.parse_pfx(vectors.read("tenant-rc2.pfx"))
    for bad in (b"", b"not a pfx", vectors.read("tenant.pfx")[:500]):
        with pytest.raises(CryptError):
            cms.parse_pfx(bad)


# --------------------------------------------------------------------------- Certificates document

def _tenant_bundle(lib: Path, pfx: bytes, **kw) -> str:
    transport = x509.load_pem_x509_certificate((lib / certs.TRANSPORT_CERT_FILE).read_bytes())
    return vectors.certificates_xml(vectors.envelope(pfx, transport, **kw))


def _cert_files(lib: Path) -> set[str]:
    return {p.name for p in lib.iterdir() if p.suffix in (".crt", ".prv", ".pem") and not p.name.startswith("Transport")}


def test_process_certificates_writes_upstream_files(lib, captured):
    expected = vectors.thumbprints()
    xml_text = _tenant_bundle(lib, vectors.read("tenant.pfx"), oaep=True)
    summary = certs.process_certificates(xml_text, str(lib))
    assert summary.error is None
    assert {(s.thumbprint, s.has_private_key) for s in summary} == {(expected["tenant"], True), (expected["ca"], False)}
    assert json.loads(certs.summary_json(summary)) == [s.to_json() for s in summary]
    tenant, ca = expected["tenant"], expected["ca"]
    assert _cert_files(lib) == {f"{tenant}.crt", f"{tenant}.prv", f"{ca}.crt", "Certificates.pem"}
    assert _mode(lib / f"{tenant}.prv") == 0o600 and _mode(lib / "Certificates.pem") == 0o600
    assert (lib / "Certificates.xml").read_text() == xml_text
    p7m = (lib / "Certificates.p7m").read_text()
    assert p7m.startswith(f'MIME-Version:1.0\nContent-Disposition: attachment; filename="{lib}/Certificates.p7m"\n')
    assert "Content-Transfer-Encoding: base64\n\n" in p7m
    crt = x509.load_pem_x509_certificate((lib / f"{tenant}.crt").read_bytes())
    assert crt.fingerprint(hashes.SHA1()).hex().upper() == tenant
    prv = serialization.load_pem_private_key((lib / f"{tenant}.prv").read_bytes(), None)
    assert prv.public_key().public_numbers() == crt.public_key().public_numbers()
    pem = (lib / "Certificates.pem").read_text()
    assert pem.count("BEGIN CERTIFICATE") == 2 and pem.count("BEGIN PRIVATE KEY") == 1
    text = captured.getvalue()
    assert f"Downloaded certificate {{'thumbprint': '{tenant}', 'hasPrivateKey': True}}" in text
    assert "PRIVATE KEY" not in text
    for secret in _key_secrets(vectors.read("tenant.key"), (lib / f"{tenant}.prv").read_bytes()):
        assert secret not in text


def test_process_certificates_several_keys(lib, recipient):
    (k1, c1), (k2, c2) = vectors.make_pair("one"), vectors.make_pair("two")
    _, c3 = recipient
    pfx = vectors.build_pfx([k2, k1], [c1, c2, c3])
    summary = certs.process_certificates(_tenant_bundle(lib, pfx, cipher="tripledes"), str(lib))
    thumbs = [certs.thumbprint(c.public_bytes(serialization.Encoding.DER)) for c in (c1, c2, c3)]
    assert [(s.thumbprint, s.has_private_key) for s in summary] == list(zip(thumbs, (True, True, False)))
    for thumb, key in ((thumbs[0], k1), (thumbs[1], k2)):
        loaded = serialization.load_pem_private_key((lib / f"{thumb}.prv").read_bytes(), None)
        assert loaded.private_numbers() == key.private_numbers()


def test_no_data_and_other_formats_are_not_errors(lib, upstream, captured):
    summary = certs.process_certificates(vectors.certificates_xml(None), str(lib))
    assert summary == [] and summary.error is None
    assert "The Data element of the Certificates response is empty" in captured.getvalue()
    fixture = (upstream / "wire" / "certs_format_not_pfx.xml").read_text()
    summary = certs.process_certificates(fixture, str(lib))
    assert summary == [] and summary.error is None
    assert "Format is CertificatesNonPfxPackage" in captured.getvalue()
    assert _cert_files(lib) == set() and not (lib / "Certificates.p7m").exists()
    no_format = _tenant_bundle(lib, vectors.read("tenant.pfx")).replace(f"<Format>{vectors.PFX_FORMAT}</Format>", "")
    assert len(certs.process_certificates(no_format, str(lib))) == 2


def test_hostile_certificates_documents_lose_nothing(lib, captured):
    k_only, _ = vectors.make_pair("orphan")
    _, c_only = vectors.make_pair("lonely")
    _, other_cert = vectors.make_pair("LinuxTransport")
    good = _tenant_bundle(lib, vectors.read("tenant.pfx"))
    cases = {
        "garbage base64": vectors.certificates_xml(None).replace("</Incarnation>", "</Incarnation><Data>@@@!!</Data>"),
        "not DER": vectors.certificates_xml(b"garbage" * 20),
        "truncated": good.replace(good[good.index("<Data>") + 100:good.index("</Data>")], ""),
        "wrong transport": vectors.certificates_xml(vectors.envelope(vectors.read("tenant.pfx"), other_cert)),
        "not a pfx": _tenant_bundle(lib, b"hello, not a pfx"),
        "key without cert": _tenant_bundle(lib, vectors.build_pfx([k_only], [c_only])),
        "malformed xml": "<CertificateFile><Data>abc</CertificateFile>",
        "doctype": '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><CertificateFile><Data>&e;</Data></CertificateFile>',
    }
    for what, xml_text in cases.items():
        summary = certs.process_certificates(xml_text, str(lib))
        assert summary == [] and summary.error, what
        assert _cert_files(lib) == set(), what
    assert captured.getvalue().count("Error fetching the goal state certificates") == len(cases)
    assert certs.process_certificates(cases["wrong transport"], str(lib)).decrypt_failed
    assert certs.process_certificates(good, str(lib / "missing" / "\0bad")).error  # unwritable: still no raise


# --------------------------------------------------------------------------- protected settings, JIT

def test_protected_settings(tmp_path, captured):
    thumb = vectors.thumbprints()["tenant"]
    (tmp_path / f"{thumb}.crt").write_bytes(vectors.read("tenant.crt"))
    (tmp_path / f"{thumb}.prv").write_bytes(vectors.read("tenant.key"))
    b64 = base64.b64encode(vectors.read("protected-3des.der")).decode()
    text = certs.decrypt_protected_settings(b64, thumb.lower(), str(tmp_path))
    settings = json.loads(text)
    assert settings["commandToExecute"] == "echo s3cr3t-protected-value"
    log.info("running {0} with {1}", settings["commandToExecute"], text)
    assert "s3cr3t" not in captured.getvalue() and "a2V5LWtleS1rZXk=" not in captured.getvalue()
    with pytest.raises(CryptError, match="invalid certificate thumbprint"):
        certs.decrypt_protected_settings(b64, "../../etc/shadow", str(tmp_path))
    with pytest.raises(CryptError, match="not available"):
        certs.decrypt_protected_settings(b64, "AB" * 20, str(tmp_path))
    with pytest.raises(CryptError, match="not valid base64"):
        certs.decrypt_protected_settings("%%%", thumb, str(tmp_path))
    tenant = x509.load_pem_x509_certificate(vectors.read("tenant.crt"))
    not_json = base64.b64encode(vectors.envelope(b"\xff\xfe not json", tenant, by_ski=False)).decode()
    with pytest.raises(CryptError, match="not JSON"):
        certs.decrypt_protected_settings(not_json, thumb, str(tmp_path))


@pytest.mark.parametrize("name", ["jit-bom.der", "jit-bom-be.der", "jit-nobom.der"])
def test_jit_password(lib, captured, name):
    b64 = base64.b64encode(vectors.read(name)).decode()
    assert certs.decrypt_jit_password(b64, str(lib)) == PASSWORD
    log.info("password is {0}", PASSWORD)
    assert PASSWORD not in captured.getvalue()


def test_jit_password_errors(lib, tmp_path):
    transport = x509.load_pem_x509_certificate((lib / certs.TRANSPORT_CERT_FILE).read_bytes())
    odd = base64.b64encode(vectors.envelope(b"abc", transport)).decode()
    with pytest.raises(CryptError, match="UTF-16"):
        certs.decrypt_jit_password(odd, str(lib))
    with pytest.raises(CryptError, match="transport private key"):
        certs.decrypt_jit_password(odd, str(tmp_path / "nowhere"))
    with pytest.raises(CryptError, match="empty"):
        certs.decrypt_jit_password(" \n", str(lib))


# --------------------------------------------------------------------------- SSH keys

def test_ssh_keys_from_certificate_and_key(tmp_path):
    line = sshkeys.ssh_public_key_from_cert(vectors.read("tenant.crt"))
    assert line.startswith("ssh-rsa AAAA") and "\n" not in line
    assert sshkeys.ssh_public_key_from_private_key(vectors.read("tenant.key")) == line
    pem = sshkeys.pem_public_key_from_cert(vectors.read("tenant.crt"))
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert sshkeys.pem_public_key_from_private_key(vectors.read("tenant.key")) == pem
    if shutil.which("ssh-keygen"):  # upstream's own conversion of <FP>.pub
        (tmp_path / "k.pub").write_text(pem)
        out = subprocess.run(["ssh-keygen", "-i", "-m", "PKCS8", "-f", str(tmp_path / "k.pub")],
                             capture_output=True, text=True, check=True).stdout
        assert out.strip() == line
    for bad in (b"", b"garbage"):
        with pytest.raises(CryptError):
            sshkeys.ssh_public_key_from_cert(bad)
        with pytest.raises(CryptError):
            sshkeys.ssh_public_key_from_private_key(bad)


def test_ssh_keys_other_key_types():
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    for key in (ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()):
        line = sshkeys.ssh_public_key_from_private_key(vectors.key_pem(key))
        assert line.split()[0] in ("ecdsa-sha2-nistp256", "ssh-ed25519")


def test_importing_the_modules_is_cheap():
    code = ("import sys; import guestagent.protocol.certificates, guestagent.protocol.cms, guestagent.osutil.sshkeys; "
            "print(any(m.split('.')[0] in ('cryptography', 'asn1crypto', 'lxml') for m in sys.modules))")
    out = subprocess.run([os.sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "False"
