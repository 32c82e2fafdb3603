"""Tenant certificates, PFX bundles and CMS envelopes, built the way the platform builds them.

Everything here is written from the standards (RFC 5652 CMS, RFC 7292 PKCS#12) with asn1crypto for
the structures and cryptography for the primitives, independently of the agent's decrypting side, so
the two check each other. Heavy imports happen inside functions: the fabric module must stay cheap
to import for callers that never touch certificates.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

TENANT_CERT_NAME = "TenantEncryptionCert"
CRP_CA_NAME = "CRP"
CIPHERS = ("AES128_CBC", "DES_EDE3_CBC")
PFX_ITERATIONS = 2000


class FabricCryptoError(ValueError):
    """A certificate the agent sent (or a scenario named) cannot be used."""


@dataclass
class TenantCert:
    """One certificate the fabric hands out, optionally with its private key (DER)."""

    name: str
    cert_der: bytes
    key_der: Optional[bytes] = None

    @property
    def thumbprint(self) -> str:
        return hashlib.sha1(self.cert_der).hexdigest().upper()

    @property
    def cert_pem(self) -> str:
        return _pem("CERTIFICATE", self.cert_der)

    @property
    def key_pem(self) -> Optional[str]:
        return _pem("PRIVATE KEY", self.key_der) if self.key_der else None

    @property
    def ssh_public_key(self) -> str:
        """OpenSSH form of the certificate's public key (what the agent derives from ``<thumb>.crt``)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        cert = x509.load_der_x509_certificate(self.cert_der)
        return cert.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                              serialization.PublicFormat.OpenSSH).decode()


def _pem(label: str, der: bytes) -> str:
    b64 = base64.b64encode(der).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def _make_cert(name: str, with_key: bool):
    """A self-signed RSA-2048 certificate shaped like the CRP-generated ones."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if name == TENANT_CERT_NAME:
        subject = x509.Name([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "Windows Azure CRP Certificate Generator")])
    elif name == CRP_CA_NAME:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "CRP"),
                             x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "AzureRT"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Microsoft Corporation"),
                             x509.NameAttribute(NameOID.LOCALITY_NAME, "Redmond"),
                             x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "WA"),
                             x509.NameAttribute(NameOID.COUNTRY_NAME, "US")])
    else:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=730))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_der = cert.public_bytes(serialization.Encoding.DER)
    key_der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()) if with_key else None
    return TenantCert(name, cert_der, key_der)


def make_tenant_certs(key_pair_names: Iterable[str] = (), cache_dir: Optional[Path] = None) -> List[TenantCert]:
    """The tenant set: CRP encryption cert (with key), a CRP CA-like cert (no key), one cert+key per
    SSH key pair the ovf-env references. With ``cache_dir`` the material survives restarts (0600 files)
    so a DVD built earlier and a fabric started later agree on thumbprints."""
    wanted = [(TENANT_CERT_NAME, True), (CRP_CA_NAME, False)] + [(n, True) for n in key_pair_names
                                                                 if n not in (TENANT_CERT_NAME, CRP_CA_NAME)]
    out = []
    for name, with_key in wanted:
        cached = _load_cached(cache_dir, name) if cache_dir else None
        if cached is None:
            cached = _make_cert(name, with_key)
            if cache_dir:
                _save_cached(cache_dir, cached)
        out.append(cached)
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _load_cached(cache_dir: Path, name: str) -> Optional[TenantCert]:
    crt, key = cache_dir / f"{_safe(name)}.crt.der", cache_dir / f"{_safe(name)}.key.der"
    if not crt.is_file():
        return None
    return TenantCert(name, crt.read_bytes(), key.read_bytes() if key.is_file() else None)


def _save_cached(cache_dir: Path, cert: TenantCert) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for suffix, data in ((".crt.der", cert.cert_der), (".key.der", cert.key_der)):
        if data is None:
            continue
        target = cache_dir / f"{_safe(cert.name)}{suffix}"
        fd = os.open(str(target) + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(str(target) + ".tmp", target)


# ---------------------------------------------------------------- PKCS#12 (RFC 7292)

def _p12_kdf(password: bytes, salt: bytes, purpose: int, iterations: int, size: int) -> bytes:
    """RFC 7292 appendix B.2 key derivation with SHA-1 (u=20, v=64)."""
    v = 64

    def stretch(data: bytes) -> bytes:
        if not data:
            return b""
        n = v * ((len(data) + v - 1) // v)
        return (data * (n // len(data) + 1))[:n]

    d = bytes([purpose]) * v
    i = bytearray(stretch(salt) + stretch(password))
    out = b""
    while len(out) < size:
        a = hashlib.sha1(d + bytes(i)).digest()
        for _ in range(iterations - 1):
            a = hashlib.sha1(a).digest()
        out += a
        b = int.from_bytes((a * (v // len(a) + 1))[:v], "big") + 1
        for j in range(0, len(i), v):
            block = (int.from_bytes(i[j:j + v], "big") + b) % (1 << (v * 8))
            i[j:j + v] = block.to_bytes(v, "big")
    return out[:size]


def _bmp_password(password: str) -> bytes:
    return password.encode("utf-16-be") + b"\x00\x00"


def _pbe_3des(data: bytes, password: bytes, salt: bytes, iterations: int) -> bytes:
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    key = _p12_kdf(password, salt, 1, iterations, 24)
    iv = _p12_kdf(password, salt, 2, iterations, 8)
    padder = padding.PKCS7(64).padder()
    padded = padder.update(data) + padder.finalize()
    enc = Cipher(_triple_des(key), modes.CBC(iv)).encryptor()
    return enc.update(padded) + enc.finalize()


def _triple_des(key: bytes):
    try:  # cryptography >= 43 moved 3DES to the decrepit module
        from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    except ImportError:  # pragma: no cover - older cryptography
        from cryptography.hazmat.primitives.ciphers.algorithms import TripleDES
    return TripleDES(key)


def build_pfx(certs: Sequence[TenantCert], password: str = "") -> bytes:
    """PFX with every cert (in a 3DES-encrypted SafeContents) and every key (3DES shrouded key bags),
    empty password, SHA-1 MAC with 2000 iterations — the shape of the platform's bundles."""
    from asn1crypto import algos, cms, core, keys, pkcs12, x509

    pw = _bmp_password(password)

    def attrs(cert: TenantCert, key_id: bytes):
        items = [pkcs12.Attribute({"type": "local_key_id", "values": [key_id]})]
        if cert.name == TENANT_CERT_NAME:
            items.append(pkcs12.Attribute({"type": "friendly_name", "values": [cert.name]}))
        return pkcs12.Attributes(items)

    cert_bags, key_bags = [], []
    for cert in certs:
        key_id = hashlib.sha1(cert.cert_der).digest()
        cert_bags.append(pkcs12.SafeBag({
            "bag_id": "cert_bag",
            "bag_value": pkcs12.CertBag({"cert_id": "x509", "cert_value": x509.Certificate.load(cert.cert_der)}),
            "bag_attributes": attrs(cert, key_id)}))
        if cert.key_der:
            salt = os.urandom(8)
            enc = _pbe_3des(cert.key_der, pw, salt, PFX_ITERATIONS)
            key_bags.append(pkcs12.SafeBag({
                "bag_id": "pkcs8_shrouded_key_bag",
                "bag_value": keys.EncryptedPrivateKeyInfo({
                    "encryption_algorithm": algos.EncryptionAlgorithm({
                        "algorithm": "pkcs12_sha1_tripledes_3key",
                        "parameters": algos.Pbes1Params({"salt": salt, "iterations": PFX_ITERATIONS})}),
                    "encrypted_data": enc}),
                "bag_attributes": attrs(cert, key_id)}))

    salt = os.urandom(8)
    certs_plain = pkcs12.SafeContents(cert_bags).dump()
    encrypted_certs = cms.ContentInfo({
        "content_type": "encrypted_data",
        "content": cms.EncryptedData({
            "version": "v0",
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": algos.EncryptionAlgorithm({
                    "algorithm": "pkcs12_sha1_tripledes_3key",
                    "parameters": algos.Pbes1Params({"salt": salt, "iterations": PFX_ITERATIONS})}),
                "encrypted_content": _pbe_3des(certs_plain, pw, salt, PFX_ITERATIONS)}})})
    keys_plain = cms.ContentInfo({"content_type": "data",
                                  "content": core.OctetString(pkcs12.SafeContents(key_bags).dump())})
    auth_safe = pkcs12.AuthenticatedSafe([encrypted_certs, keys_plain]).dump()

    mac_salt = os.urandom(8)
    mac_key = _p12_kdf(pw, mac_salt, 3, PFX_ITERATIONS, 20)
    digest = hmac.new(mac_key, auth_safe, hashlib.sha1).digest()
    pfx = pkcs12.Pfx({
        "version": "v3",
        "auth_safe": cms.ContentInfo({"content_type": "data", "content": core.OctetString(auth_safe)}),
        "mac_data": pkcs12.MacData({
            "mac": algos.DigestInfo({"digest_algorithm": {"algorithm": "sha1", "parameters": core.Null()},
                                     "digest": digest}),
            "mac_salt": mac_salt, "iterations": PFX_ITERATIONS})})
    return pfx.dump()


# ---------------------------------------------------------------- CMS EnvelopedData (RFC 5652)

def load_transport_cert(header_value: str) -> bytes:
    """The agent's ``x-ms-guest-agent-public-x509-cert`` header → certificate DER (PEM accepted too)."""
    text = (header_value or "").strip()
    if not text:
        raise FabricCryptoError("missing x-ms-guest-agent-public-x509-cert header")
    if "-----BEGIN" in text:
        text = "".join(line for line in text.splitlines() if line and not line.startswith("-----"))
    try:
        der = base64.b64decode("".join(text.split()), validate=True)
        from asn1crypto import x509

        x509.Certificate.load(der).native  # noqa: B018 - forces a full parse
    except Exception as exc:
        raise FabricCryptoError(f"transport certificate is not a base64 DER X.509 certificate: {exc}") from None
    return der


def envelope(content: bytes, recipient_der: bytes, cipher: str = "AES128_CBC", rid: str = "ski",
             padding_mode: Optional[str] = None) -> bytes:
    """CMS EnvelopedData of ``content`` for the certificate ``recipient_der``.

    cipher: ``AES128_CBC`` (aes-128-cbc, RSA-OAEP by default) or ``DES_EDE3_CBC`` (des-ede3-cbc, RSA PKCS#1
    v1.5 by default). rid: ``ski`` (RecipientInfo v2, subjectKeyIdentifier) or ``issuer_serial`` (v0)."""
    from asn1crypto import algos, cms, x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives import padding as sympad
    from cryptography.hazmat.primitives.asymmetric import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if cipher not in CIPHERS:
        raise FabricCryptoError(f"unsupported x-ms-cipher-name {cipher!r} (expected one of {', '.join(CIPHERS)})")
    cert = x509.Certificate.load(recipient_der)
    if cert.public_key.algorithm != "rsa":
        raise FabricCryptoError(f"transport certificate key is {cert.public_key.algorithm}, RSA required")
    pub = serialization.load_der_public_key(cert.public_key.dump())
    padding_mode = padding_mode or ("oaep" if cipher == "AES128_CBC" else "pkcs1")

    if cipher == "AES128_CBC":
        cek, iv = os.urandom(16), os.urandom(16)
        algo, block = algorithms.AES(cek), 128
        enc_alg = algos.EncryptionAlgorithm({"algorithm": "aes128_cbc", "parameters": iv})
    else:
        cek, iv = os.urandom(24), os.urandom(8)
        algo, block = _triple_des(cek), 64
        enc_alg = algos.EncryptionAlgorithm({"algorithm": "tripledes_3key", "parameters": iv})
    padder = sympad.PKCS7(block).padder()
    encryptor = Cipher(algo, modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()

    if padding_mode == "oaep":
        wrapped = pub.encrypt(cek, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
        # RSAES-OAEP with all-default (SHA-1/MGF1-SHA-1) parameters: an empty SEQUENCE, as the platform sends
        kt_alg = cms.KeyEncryptionAlgorithm.load(bytes.fromhex("300d06092a864886f70d0101073000"))
    else:
        wrapped = pub.encrypt(cek, padding.PKCS1v15())
        kt_alg = {"algorithm": "rsaes_pkcs1v15"}

    if rid == "ski":
        ski = cert.key_identifier or hashlib.sha1(cert.public_key["public_key"].contents[1:]).digest()
        recipient = cms.KeyTransRecipientInfo({"version": "v2", "rid": cms.RecipientIdentifier(
            name="subject_key_identifier", value=ski), "key_encryption_algorithm": kt_alg, "encrypted_key": wrapped})
        version = "v2"
    else:
        recipient = cms.KeyTransRecipientInfo({"version": "v0", "rid": cms.RecipientIdentifier(
            name="issuer_and_serial_number", value=cms.IssuerAndSerialNumber(
                {"issuer": cert.issuer, "serial_number": cert.serial_number})),
            "key_encryption_algorithm": kt_alg, "encrypted_key": wrapped})
        version = "v0"
    info = cms.ContentInfo({"content_type": "enveloped_data", "content": cms.EnvelopedData({
        "version": version,
        "recipient_infos": [cms.RecipientInfo(name="ktri", value=recipient)],
        "encrypted_content_info": {"content_type": "data", "content_encryption_algorithm": enc_alg,
                                   "encrypted_content": ciphertext}})})
    return info.dump()


def wrap64(data: bytes) -> str:
    """Base64 wrapped at 64 columns, as in the platform's Certificates document."""
    b64 = base64.b64encode(data).decode()
    return "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64))


def protect_settings(settings_json: bytes, tenant: TenantCert) -> str:
    """Protected settings as CRP sends them: CMS v0 by issuer+serial, PKCS#1 v1.5, des-ede3-cbc."""
    return base64.b64encode(envelope(settings_json, tenant.cert_der, "DES_EDE3_CBC", rid="issuer_serial",
                                     padding_mode="pkcs1")).decode()
