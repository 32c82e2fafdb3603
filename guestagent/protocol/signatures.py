"""Extension package signatures, verified natively: a detached CMS SignedData (RFC 5652) over the zip.

What upstream 2.15 asks of ``openssl cms -verify -binary -purpose any -no_check_time -CAfile <root>``, done
with asn1crypto (the structures) and cryptography (the primitives): every SignerInfo's certificate is found
in the signature's certificate bag, its signed attributes carry the content type and the digest of the zip,
its signature over those attributes verifies, and its certificate chains (through the bag) to a trusted
root, each link's signature checked and each issuer a CA. Validity periods and key usages are not checked,
as upstream does not (``-no_check_time``, ``-purpose any``).

Run as ``python -m guestagent.protocol.signatures ZIP ROOT_PEM`` (base64 signature on stdin) it prints one
JSON line ``{"ok": bool, "error": str}``: the ext-handler verifies in that short-lived interpreter so the
crypto libraries never stay resident in it (see certificates.ISOLATE_ENV).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sys
from typing import Optional

from asn1crypto import cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import SignatureAlgorithmOID

MAX_SIGNATURE_BYTES = 1024 * 1024
MAX_CHAIN = 10
_HASHES = {"sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384,
           "sha512": hashes.SHA512}
_CHUNK = 1 << 20


class SignatureError(ValueError):
    """The package is not signed as it must be; the message says what failed."""


def decode_signature(encoded: str) -> bytes:
    """The goal state's base64 ``encodedSignature`` as DER."""
    try:
        der = base64.b64decode("".join(encoded.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the signature is not valid base64") from None
    if not der or len(der) > MAX_SIGNATURE_BYTES:
        raise SignatureError(f"the signature is empty or larger than {MAX_SIGNATURE_BYTES} bytes")
    return der


def load_roots(pem: bytes) -> list:
    """Every certificate of a PEM bundle (the trusted roots)."""
    roots, marker = [], b"-----BEGIN CERTIFICATE-----"
    for block in pem.split(marker)[1:]:
        roots.append(x509.load_pem_x509_certificate(marker + block))
    if not roots:
        raise SignatureError("no root certificate found")
    return roots


def verify_detached(content_path: str, signature_der: bytes, roots: list) -> None:
    """Raise SignatureError unless ``signature_der`` signs the file ``content_path`` under one of ``roots``."""
    try:
        info = cms.ContentInfo.load(signature_der, strict=True)
        if info["content_type"].native != "signed_data":
            raise SignatureError(f"the signature is a CMS {info['content_type'].native}, not signed data")
        signed = info["content"]
        content_type = signed["encap_content_info"]["content_type"].dotted
        bag = [c.chosen for c in signed["certificates"] or [] if c.name == "certificate"]
        signers = list(signed["signer_infos"])
        if not signers:
            raise SignatureError("the signature has no signer")
        digests: dict = {}
        for signer in signers:
            cert = _signer_certificate(signer, bag)
            name = signer["digest_algorithm"]["algorithm"].native
            if name not in _HASHES:
                raise SignatureError(f"unsupported digest algorithm {name}")
            _verify_chain(cert, bag, roots)  # first, as openssl does: a wrong signer reads as such
            if name not in digests:
                digests[name] = _file_digest(content_path, name)
            _verify_signer(signer, cert, content_type, digests[name], _HASHES[name]())
    except SignatureError:
        raise
    except (ValueError, TypeError, KeyError, UnsupportedAlgorithm) as e:
        raise SignatureError(f"the signature cannot be parsed: {type(e).__name__}: {e}") from None


def _signer_certificate(signer: cms.SignerInfo, bag: list) -> x509.Certificate:
    sid = signer["sid"]
    for cert in bag:
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            if cert.issuer == ias["issuer"] and cert.serial_number == ias["serial_number"].native:
                return _to_crypto(cert)
        elif cert.key_identifier == sid.chosen.native:
            return _to_crypto(cert)
    raise SignatureError("the signer's certificate is not in the signature")


def _to_crypto(cert: asn1_x509.Certificate) -> x509.Certificate:
    return x509.load_der_x509_certificate(cert.dump())


def _file_digest(path: str, name: str) -> bytes:
    h = hashlib.new(name)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return h.digest()
            h.update(chunk)


def _verify_signer(signer: cms.SignerInfo, cert: x509.Certificate, content_type: str, digest: bytes,
                   hash_alg: hashes.HashAlgorithm) -> None:
    attrs = signer["signed_attrs"]
    if not attrs:
        raise SignatureError("the signer has no signed attributes")  # a detached package signature always has them
    found: dict = {}
    for attr in attrs:
        found.setdefault(attr["type"].native, attr["values"])
    if "message_digest" not in found or "content_type" not in found:
        raise SignatureError("the signed attributes lack the message digest or the content type")
    if found["content_type"][0].dotted != content_type:
        raise SignatureError("the signed content type does not match the signature's content type")
    if found["message_digest"][0].native != digest:
        raise SignatureError("the package does not match the signature (message digest mismatch)")
    signed_bytes = b"\x31" + attrs.dump()[1:]  # DER of the SET OF, not of the [0] IMPLICIT field
    algorithm = signer["signature_algorithm"]["algorithm"].native
    try:
        _verify_with(cert.public_key(), signer["signature"].native, signed_bytes, hash_alg, algorithm)
    except InvalidSignature:
        raise SignatureError("the signer's signature does not verify") from None


def _verify_with(key: object, signature: bytes, data: bytes, hash_alg: hashes.HashAlgorithm,
                 algorithm: str) -> None:
    if isinstance(key, rsa.RSAPublicKey) and "pss" not in algorithm:
        key.verify(signature, data, padding.PKCS1v15(), hash_alg)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(hash_alg))
    else:
        raise SignatureError(f"unsupported signature algorithm {algorithm}")


def _verify_chain(cert: x509.Certificate, bag: list, roots: list) -> None:
    """Walk issuers (roots first, then the bag) until a trusted root has signed the current certificate."""
    pool = [_to_crypto(c) for c in bag]
    current = cert
    for _ in range(MAX_CHAIN):
        for root in roots:
            if current == root or (current.issuer == root.subject and _signed_by(current, root)):
                return
        issuer = next((c for c in pool if c.subject == current.issuer and c != current and _is_ca(c)
                       and _signed_by(current, c)), None)
        if issuer is None:
            raise SignatureError(f"the signer's certificate does not chain to the trusted root "
                                 f"(no trusted issuer for '{current.issuer.rfc4514_string()}')")
        current = issuer
    raise SignatureError("the certificate chain is too long")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        hash_alg = cert.signature_hash_algorithm
        if hash_alg is None or cert.signature_algorithm_oid == SignatureAlgorithmOID.RSASSA_PSS:
            return False  # PSS parameters are not readable with cryptography 38; no code-signing CA uses them
        _verify_with(issuer.public_key(), cert.signature, cert.tbs_certificate_bytes, hash_alg, "pkcs1v15")
        return True
    except (InvalidSignature, SignatureError, UnsupportedAlgorithm):
        return False


def main(argv: list) -> int:
    """``ZIP ROOT_PEM`` with the base64 signature on stdin → one JSON line."""
    content_path, root_path = argv[0], argv[1]
    error: Optional[str] = None
    try:
        with open(root_path, "rb") as f:
            roots = load_roots(f.read())
        verify_detached(content_path, decode_signature(sys.stdin.read()), roots)
    except (SignatureError, OSError, ValueError) as e:
        error = str(e)
    print(json.dumps({"ok": error is None, "error": error or ""}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
