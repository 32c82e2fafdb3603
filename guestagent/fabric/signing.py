"""Package signing as the platform does it: a detached CMS SignedData (RFC 5652 §5) over the handler zip,
by a code-signing certificate under a root, sent base64 as the goal state's ``encodedSignature``.

The fabric has its own root ("GuestAgent Fabric Signing Root") and, to play a wrong signer, a second,
untrusted one; the agent trusts the fabric's root only through its test-only setting
(``GUESTAGENT_TEST_SIGNING_ROOT``). Written from the RFC with asn1crypto and cryptography, independently
of the agent's verifier (guestagent.protocol.signatures), so the two check each other.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

#: Scenario values of an extension's ``signature``.
MODES = ("valid", "tampered", "wrong_signer")
ROOT_FILE = "signing-root.pem"
_ID_DATA = "1.2.840.113549.1.7.1"


@dataclass
class _Signer:
    root_der: bytes
    leaf_der: bytes
    leaf_key_der: bytes
    intermediate_der: bytes


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GuestAgent Fabric"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _cert(subject: str, issuer: str, public_key, issuer_key, ca: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime(2020, 1, 1)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=3650 * 3))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _make_signer(root_name: str) -> _Signer:
    """root → intermediate "PCA" → code-signing leaf, as Microsoft's chain is shaped."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    root_key, pca_key, leaf_key = (rsa.generate_private_key(public_exponent=65537, key_size=2048)
                                   for _ in range(3))
    root = _cert(root_name, root_name, root_key.public_key(), root_key, True)
    pca = _cert(f"{root_name} Code Signing PCA", root_name, pca_key.public_key(), root_key, True)
    leaf = _cert("GuestAgent Fabric Publisher", f"{root_name} Code Signing PCA", leaf_key.public_key(), pca_key,
                 False)
    der = serialization.Encoding.DER
    return _Signer(root.public_bytes(der), leaf.public_bytes(der),
                   leaf_key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
                   pca.public_bytes(der))


def sign_detached(content: bytes, signer: _Signer) -> bytes:
    """DER ContentInfo(SignedData) without the content: SHA-256, signed attributes (content type, message
    digest), RSA PKCS#1 v1.5 over the DER SET OF those attributes; the leaf and the PCA in the bag."""
    from asn1crypto import algos, cms
    from asn1crypto import x509 as ax509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    leaf = ax509.Certificate.load(signer.leaf_der)
    attrs = cms.CMSAttributes([
        cms.CMSAttribute({"type": "content_type", "values": [_ID_DATA]}),
        cms.CMSAttribute({"type": "message_digest", "values": [hashlib.sha256(content).digest()]}),
    ])
    to_sign = attrs.dump()  # standalone, the attributes encode as the SET OF the signature covers (RFC 5652 §5.4)
    if to_sign[:1] != b"\x31":
        raise ValueError("signed attributes did not encode as a SET OF")
    key = serialization.load_der_private_key(signer.leaf_key_der, None)
    signature = key.sign(to_sign, padding.PKCS1v15(), hashes.SHA256())
    signer_info = cms.SignerInfo({
        "version": "v1",
        "sid": cms.SignerIdentifier({"issuer_and_serial_number": cms.IssuerAndSerialNumber(
            {"issuer": leaf.issuer, "serial_number": leaf.serial_number})}),
        "digest_algorithm": algos.DigestAlgorithm({"algorithm": "sha256"}),
        "signed_attrs": attrs,
        "signature_algorithm": algos.SignedDigestAlgorithm({"algorithm": "rsassa_pkcs1v15"}),
        "signature": signature,
    })
    signed = cms.SignedData({
        "version": "v1",
        "digest_algorithms": [algos.DigestAlgorithm({"algorithm": "sha256"})],
        "encap_content_info": {"content_type": _ID_DATA},
        "certificates": [leaf, ax509.Certificate.load(signer.intermediate_der)],
        "signer_infos": [signer_info],
    })
    return cms.ContentInfo({"content_type": "signed_data", "content": signed}).dump()


#: The identities, made once per process (six RSA keys: too slow to make while a request waits).
_IDENTITIES: Dict[str, _Signer] = {}
_IDENTITIES_LOCK = threading.Lock()


def _identity(which: str) -> _Signer:
    with _IDENTITIES_LOCK:
        if which not in _IDENTITIES:
            _IDENTITIES[which] = _make_signer("GuestAgent Fabric Signing Root" if which == "trusted"
                                              else "GuestAgent Untrusted Signing Root")
        return _IDENTITIES[which]


class PackageSigner:
    """The fabric's signing identities and the signatures of the packages it serves; the trusted root is
    written to ``<state_dir>/signing-root.pem`` when there is a state dir."""

    def __init__(self, state_dir: Optional[Path] = None):
        self.state_dir = state_dir
        self._lock = threading.Lock()
        self._cache: Dict[Tuple[str, bytes], str] = {}
        self._root_written = False

    def prepare(self) -> None:
        """Make the identities (and write the root) now, not while the agent's request waits."""
        self._signer("trusted")
        _identity("untrusted")

    def _signer(self, which: str) -> _Signer:
        signer = _identity(which)
        if which == "trusted" and self.state_dir is not None and not self._root_written:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.state_dir / (ROOT_FILE + ".tmp")
            tmp.write_text(root_pem(signer))
            tmp.replace(self.state_dir / ROOT_FILE)
            self._root_written = True
        return signer

    def root_pem(self) -> str:
        with self._lock:
            return root_pem(self._signer("trusted"))

    def encoded_signature(self, package: bytes, mode: str) -> str:
        """base64 signature of ``package`` for a scenario ``signature`` mode: ``valid``; ``tampered`` (the
        served zip is not the one signed); ``wrong_signer`` (a root the agent does not trust)."""
        if mode not in MODES:
            raise ValueError(f"unknown signature mode {mode!r}")
        key = (mode, hashlib.sha256(package).digest())
        with self._lock:
            if key not in self._cache:
                signer = self._signer("untrusted" if mode == "wrong_signer" else "trusted")
                content = package + b"\0" if mode == "tampered" else package
                self._cache[key] = base64.b64encode(sign_detached(content, signer)).decode("ascii")
            return self._cache[key]


def root_pem(signer: _Signer) -> str:
    b64 = base64.b64encode(signer.root_der).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"
