"""SSH public keys derived from the tenant certificates and keys the fabric delivers (spec 05 §5.2/§5.3).

Upstream converts with ``openssl x509 -pubkey`` then ``ssh-keygen -i -m PKCS8``; the same OpenSSH line
comes straight out of ``cryptography`` without two subprocesses. ``cryptography`` is imported lazily.
"""

from __future__ import annotations

from typing import Any

from guestagent.errors import CryptError


def _load_cert(cert_pem: bytes) -> Any:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError as e:
        raise CryptError(f"cannot load the certificate: {e}") from None


def _load_key(key_pem: bytes) -> Any:
    from cryptography.hazmat.primitives import serialization

    try:
        return serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CryptError(f"cannot load the private key: {str(e).splitlines()[0] if str(e) else e}") from None


def _openssh(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    try:
        raw = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    except (ValueError, TypeError) as e:
        raise CryptError(f"the key type cannot be written in OpenSSH format: {e}") from None
    return raw.decode("ascii")


def _pem(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def ssh_public_key_from_cert(cert_pem: bytes) -> str:
    """The OpenSSH line (``ssh-rsa AAAA…``, no comment, no newline) of a certificate's public key."""
    return _openssh(_load_cert(cert_pem).public_key())


def ssh_public_key_from_private_key(key_pem: bytes) -> str:
    """The OpenSSH line (no comment, no newline) of an unencrypted PEM private key."""
    return _openssh(_load_key(key_pem).public_key())


def pem_public_key_from_cert(cert_pem: bytes) -> str:
    """The PEM public key (``BEGIN PUBLIC KEY``) of a certificate — upstream's ``<FP>.pub``."""
    return _pem(_load_cert(cert_pem).public_key())


def pem_public_key_from_private_key(key_pem: bytes) -> str:
    """The PEM public key of a private key — upstream's key-pair ``<Path>.pub`` (05 §5.3, PEM not OpenSSH)."""
    return _pem(_load_key(key_pem).public_key())
