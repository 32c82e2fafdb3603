"""Test-only encryption side: builds CMS envelopes, PFX files and Certificates documents.

Written with asn1crypto + cryptography primitives, independently of guestagent.protocol.cms, so that
tests can make the shapes openssl cannot (several private keys in one PFX, broken padding, truncated
or foreign messages). The static ``*.der``/``*.pfx`` files beside this module come from the openssl
CLI (``make_vectors.sh``).
"""

from __future__ import annotations

import base64
import datetime
import os
from pathlib import Path

from asn1crypto import algos, cms, keys, pkcs12
from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

HERE = Path(__file__).resolve().parent
PFX_FORMAT = "Pkcs7BlobWithPfxContents"

_CIPHERS = {  # name -> (asn1crypto algorithm id, key bytes, block bytes)
    "aes128": ("aes128_cbc", 16, 16),
    "aes192": ("aes192_cbc", 24, 16),
    "aes256": ("aes256_cbc", 32, 16),
    "tripledes": ("tripledes_3key", 24, 8),
}


def read(name: str) -> bytes:
    return (HERE / name).read_bytes()


def thumbprints() -> dict[str, str]:
    return dict(line.split() for line in (HERE / "thumbprints.txt").read_text().splitlines() if line.strip())


def make_pair(cn: str, bits: int = 2048, ski: bool = True):
    """(key, cert) self-signed, like a tenant certificate."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + datetime.timedelta(days=30)))
    if ski:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return key, builder.sign(key, hashes.SHA256())


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def cert_pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _encrypt_cbc(name: str, key: bytes, iv: bytes, data: bytes) -> bytes:
    if name == "tripledes":
        try:
            from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
        except ImportError:
            TripleDES = algorithms.TripleDES
        algo = TripleDES(key)
    else:
        algo = algorithms.AES(key)
    enc = Cipher(algo, modes.CBC(iv)).encryptor()
    return enc.update(data) + enc.finalize()


def envelope(plaintext: bytes, recipient_cert, cipher: str = "aes128", oaep: bool = False, by_ski: bool = True,
             pad: bool = True, cek: bytes | None = None, trim: int = 0) -> bytes:
    """A DER CMS EnvelopedData of ``plaintext`` to ``recipient_cert`` (a cryptography Certificate).

    ``pad=False`` encrypts ``plaintext`` as given (the caller makes broken padding); ``trim`` cuts
    bytes off the end of the encrypted content.
    """
    oid, key_len, block = _CIPHERS[cipher]
    cek = cek if cek is not None else os.urandom(key_len)
    iv = os.urandom(block)
    if pad:
        n = block - len(plaintext) % block
        plaintext = plaintext + bytes([n]) * n
    encrypted = _encrypt_cbc("tripledes" if cipher == "tripledes" else "aes", cek, iv, plaintext)
    encrypted = encrypted[:len(encrypted) - trim]
    public = recipient_cert.public_key()
    if oaep:
        wrapped = public.encrypt(cek, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None))
        kea = {"algorithm": "rsaes_oaep", "parameters": algos.RSAESOAEPParams({
            "hash_algorithm": {"algorithm": "sha1"},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha1"}}})}
    else:
        wrapped = public.encrypt(cek, padding.PKCS1v15())
        kea = {"algorithm": "rsaes_pkcs1v15"}
    if by_ski:
        ski = recipient_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        rid = cms.RecipientIdentifier(name="subject_key_identifier", value=ski)
        version = "v2"
    else:
        rid = cms.RecipientIdentifier(name="issuer_and_serial_number", value=cms.IssuerAndSerialNumber({
            "issuer": ax509.Name.load(recipient_cert.issuer.public_bytes()),
            "serial_number": recipient_cert.serial_number}))
        version = "v0"
    ktri = cms.KeyTransRecipientInfo({"version": version, "rid": rid, "key_encryption_algorithm": kea,
                                      "encrypted_key": wrapped})
    enveloped = cms.EnvelopedData({
        "version": "v2" if by_ski else "v0",
        "recipient_infos": [cms.RecipientInfo(name="ktri", value=ktri)],
        "encrypted_content_info": {
            "content_type": "data",
            "content_encryption_algorithm": {"algorithm": oid, "parameters": iv},
            "encrypted_content": encrypted}})
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


def build_pfx(private_keys, certs, nested: bool = False) -> bytes:
    """A PFX with plain (unencrypted) key and certificate bags and no MAC — any number of keys;
    ``nested`` puts the bags inside a safeContentsBag."""
    bags = []
    for key in private_keys:
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        bags.append(pkcs12.SafeBag({"bag_id": "key_bag", "bag_value": keys.PrivateKeyInfo.load(der)}))
    for cert in certs:
        der = cert.public_bytes(serialization.Encoding.DER)
        bags.append(pkcs12.SafeBag({"bag_id": "cert_bag", "bag_value": pkcs12.CertBag({
            "cert_id": "x509", "cert_value": ax509.Certificate.load(der)})}))
    if nested:
        bags = [pkcs12.SafeBag({"bag_id": "safe_contents", "bag_value": pkcs12.SafeContents(bags)})]
    safe = pkcs12.SafeContents(bags).dump()
    auth = pkcs12.AuthenticatedSafe([cms.ContentInfo({"content_type": "data", "content": safe})]).dump()
    return pkcs12.Pfx({"version": 3, "auth_safe": {"content_type": "data", "content": auth}}).dump()


def certificates_xml(der: bytes | None, fmt: str | None = PFX_FORMAT, incarnation: int = 1) -> str:
    """A Certificates response in the fabric's shape (base64 wrapped at 64 columns)."""
    parts = ['<?xml version="1.0" encoding="utf-8"?>',
             '<CertificateFile xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
             'xsi:noNamespaceSchemaLocation="certificates10.xsd">',
             "  <Version>2012-11-30</Version>", f"  <Incarnation>{incarnation}</Incarnation>"]
    if fmt is not None:
        parts.append(f"  <Format>{fmt}</Format>")
    if der is not None:
        b64 = base64.b64encode(der).decode()
        parts.append("  <Data>" + "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64)) + "</Data>")
    parts.append("</CertificateFile>")
    return "\n".join(parts) + "\n"
