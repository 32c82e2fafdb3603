"""Upstream's real certificate samples decrypt natively to exactly the thumbprints upstream expects.

Expected values come from the samples themselves (hibernate ``Certificates.json``) and from upstream's
own tests (wire/certs.xml → F6AB… with key + 8979…; rotation → C0ED…; wire/encrypted.enc with
wire/sample.pem → ``]aPPEv}uNg1FPnl?``). Skips when ../shared is absent.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509

from guestagent.errors import CryptError
from guestagent.osutil import sshkeys
from guestagent.protocol import certificates as certs
from tests.conftest import cert_lifetime

WIRE_EXPECTED = [{"thumbprint": "F6ABAA61098A301EBB8A571C3C7CF77F355F7FA9", "hasPrivateKey": True},
                 {"thumbprint": "8979F1AC8C4215827BF3B5A403E6137B504D02A4", "hasPrivateKey": False}]
ROTATED = [{"thumbprint": "C0EDFF1B408001B0FD14F8F615E567F7833822D0", "hasPrivateKey": True},
           {"thumbprint": "8979F1AC8C4215827BF3B5A403E6137B504D02A4", "hasPrivateKey": False}]


def _lib(tmp_path: Path, key: Path, cert: Path) -> Path:
    lib = tmp_path / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    shutil.copy(key, lib / certs.TRANSPORT_PRV_FILE)
    shutil.copy(cert, lib / certs.TRANSPORT_CERT_FILE)
    return lib


def _sorted(summary) -> list[dict]:
    return sorted(summary, key=lambda s: s["thumbprint"])


def _cases(upstream: Path):
    wire = (upstream / "wire" / "trans_prv", upstream / "wire" / "trans_cert")
    hib = (upstream / "hibernate" / "TransportPrivate.pem", upstream / "hibernate" / "TransportCert.pem")
    rot = (upstream / "tenant_certificate_rotation" / "TransportPrivate.pem",
           upstream / "tenant_certificate_rotation" / "TransportCert.pem")
    yield "wire/certs.xml", wire, WIRE_EXPECTED
    yield "wire/certs_no_format_specified.xml", wire, WIRE_EXPECTED
    for gs in sorted((upstream / "hibernate").glob("goal_state_*/Certificates.xml")):
        expected = json.loads((gs.parent / "Certificates.json").read_text())
        yield str(gs.relative_to(upstream)), hib, expected
    yield "tenant_certificate_rotation/Certificates-incarnation-3.xml", rot, WIRE_EXPECTED
    yield "tenant_certificate_rotation/Certificates-incarnation-4.xml", rot, ROTATED


def test_upstream_certificate_bundles_decrypt(upstream, tmp_path, capsys):
    cases = list(_cases(upstream))
    assert sum("hibernate" in name for name, _, _ in cases) >= 2
    timings = []
    for i, (name, (key, cert), expected) in enumerate(cases):
        lib = _lib(tmp_path / str(i), key, cert)
        start = time.perf_counter()
        summary = certs.process_certificates((upstream / name).read_text(), str(lib))
        timings.append((name, time.perf_counter() - start))
        assert summary.error is None, name
        assert _sorted(s.to_json() for s in summary) == _sorted(expected), name
        for item in expected:
            assert (lib / f"{item['thumbprint']}.crt").is_file()
            prv = lib / f"{item['thumbprint']}.prv"
            assert prv.is_file() == item["hasPrivateKey"], name
            if item["hasPrivateKey"]:
                assert stat.S_IMODE(prv.stat().st_mode) == 0o600
    with capsys.disabled():
        print("\n  certificate bundle decrypt+split: " +
              ", ".join(f"{Path(n).parent.name or 'wire'}/{Path(n).name} {t * 1000:.0f} ms" for n, t in timings))


def test_upstream_bad_bundles(upstream, tmp_path):
    lib = _lib(tmp_path, upstream / "wire" / "trans_prv", upstream / "wire" / "trans_cert")
    summary = certs.process_certificates((upstream / "wire" / "incorrect-certs.xml").read_text(), str(lib))
    assert summary == [] and summary.decrypt_failed and "no recipient" in summary.error
    summary = certs.process_certificates((upstream / "wire" / "certs_format_not_pfx.xml").read_text(), str(lib))
    assert summary == [] and summary.error is None
    assert not list(lib.glob("*.crt")) and not list(lib.glob("*.prv"))
    # the hibernate bundle is not addressed to the wire transport certificate
    summary = certs.process_certificates((upstream / "hibernate" / "goal_state_1" / "Certificates.xml").read_text(),
                                         str(lib))
    assert summary.decrypt_failed


def _protected(text: str) -> list[tuple[str, str]]:
    pattern = (r'protectedSettingsCertThumbprint\\?"\s*:\s*\\?"([A-F0-9]+)\\?"\s*,\s*'
               r'\\?"protectedSettings\\?"\s*:\s*\\?"([A-Za-z0-9+/=]{100,})')
    return re.findall(pattern, text)


def test_upstream_protected_settings(upstream, tmp_path):
    hib = _lib(tmp_path / "hib", upstream / "hibernate" / "TransportPrivate.pem",
               upstream / "hibernate" / "TransportCert.pem")
    certs.process_certificates((upstream / "hibernate" / "goal_state_2" / "Certificates.xml").read_text(), str(hib))
    found = _protected((upstream / "hibernate" / "goal_state_2" / "VmSettings.json").read_text())
    assert len(found) == 2
    decrypted = [json.loads(certs.decrypt_protected_settings(b64, thumb, str(hib))) for thumb, b64 in found]
    assert {"commandToExecute": "date"} in decrypted
    # wire/ext_conf samples name F6AB… but are addressed to another serial: openssl smime -recip refuses too
    wire = _lib(tmp_path / "wire", upstream / "wire" / "trans_prv", upstream / "wire" / "trans_cert")
    certs.process_certificates((upstream / "wire" / "certs.xml").read_text(), str(wire))
    (thumb, b64), *_ = _protected((upstream / "wire" / "ext_conf_multiple_extensions.xml").read_text())
    with pytest.raises(CryptError, match="no recipient"):
        certs.decrypt_protected_settings(b64, thumb, str(wire))


def test_upstream_encrypted_secret(upstream, tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    blob = (upstream / "wire" / "encrypted.enc").read_text()
    shutil.copy(upstream / "wire" / "sample.pem", lib / certs.TRANSPORT_PRV_FILE)
    assert certs.decrypt_jit_password(blob, str(lib)) == "]aPPEv}uNg1FPnl?"
    shutil.copy(upstream / "wire" / "trans_prv", lib / certs.TRANSPORT_PRV_FILE)
    with pytest.raises(CryptError):
        certs.decrypt_jit_password(blob, str(lib))
    with pytest.raises(CryptError):
        certs.decrypt_jit_password("abc@123", str(lib))


def test_upstream_public_keys(upstream):
    wire = upstream / "wire"
    for prv, pub in (("trans_prv", "trans_pub"), ("rsa-key.pem", "rsa-key.pub.pem"), ("ec-key.pem", "ec-key.pub.pem")):
        assert sshkeys.pem_public_key_from_private_key((wire / prv).read_bytes()) == (wire / pub).read_text()
    assert sshkeys.pem_public_key_from_cert((wire / "trans_cert").read_bytes()) == (wire / "trans_pub").read_text()
    assert sshkeys.ssh_public_key_from_cert((wire / "trans_cert").read_bytes()) == \
        sshkeys.ssh_public_key_from_private_key((wire / "trans_prv").read_bytes())


def test_our_transport_cert_matches_the_sample_shape(upstream, tmp_path):
    certs.ensure_transport_cert(str(tmp_path))
    ours = x509.load_pem_x509_certificate((tmp_path / certs.TRANSPORT_CERT_FILE).read_bytes())
    for sample_path in (upstream / "hibernate" / "TransportCert.pem", upstream / "wire" / "trans_cert"):
        sample = x509.load_pem_x509_certificate(sample_path.read_bytes())
        assert ours.subject == sample.subject and ours.issuer == sample.issuer
        assert cert_lifetime(ours) == cert_lifetime(sample)
        ski = sample.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        assert ski == x509.SubjectKeyIdentifier.from_public_key(sample.public_key()).digest  # RFC 5280 method 1
    sample = x509.load_pem_x509_certificate((upstream / "hibernate" / "TransportCert.pem").read_bytes())
    assert ours.signature_algorithm_oid == sample.signature_algorithm_oid
    assert [(e.oid, e.critical) for e in ours.extensions] == [(e.oid, e.critical) for e in sample.extensions]
