"""CMS EnvelopedData and PKCS#12 (PFX) decoding without an ``openssl`` subprocess.

The WireServer addresses the certificate bundle (and JIT passwords) to the transport certificate,
usually by subject key identifier — which ``cryptography``'s own PKCS#7 helper refuses — and a
tenant PFX may hold several private keys, while ``cryptography``'s PKCS#12 loader returns only one.
So both containers are walked here with asn1crypto and only the primitives (RSA, AES, 3DES, HMAC)
come from ``cryptography``. Both libraries are imported inside the functions: importing this module
costs nothing for processes that never decrypt.

Every failure is a :class:`CryptError` with a message that says which layer broke; no plaintext or
key material ever goes into a message.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any, Optional

from guestagent.errors import CryptError

_AES_KEY_BYTES = {16, 24, 32}


def _load(spec: Any, der: bytes, what: str) -> Any:
    """Parse ``der`` with an asn1crypto spec, forcing the lazy parse so that truncation shows here."""
    try:
        obj = spec.load(der)
        obj.native  # noqa: B018 - walks the whole structure; asn1crypto parses lazily
        return obj
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise CryptError(f"{what} is not valid DER: {type(e).__name__}: {_short(e)}") from None


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


# --------------------------------------------------------------------------- block ciphers

def _block_cipher(name: str, key: bytes):
    from cryptography.hazmat.primitives.ciphers import algorithms

    if name == "aes":
        if len(key) not in _AES_KEY_BYTES:
            raise CryptError(f"AES key of {len(key)} bytes is invalid")
        return algorithms.AES(key)
    if name == "tripledes":
        try:
            from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
        except ImportError:  # cryptography < 43 keeps it among the primitives
            TripleDES = algorithms.TripleDES
        return TripleDES(key)
    if name == "rc2":
        try:
            from cryptography.hazmat.decrepit.ciphers.algorithms import RC2

            return RC2(key)
        except (ImportError, ValueError):
            raise CryptError(f"RC2 with a {len(key) * 8}-bit key is not supported") from None
    raise CryptError(f"content cipher {name!r} is not supported")


def cbc_decrypt(cipher_name: str, key: bytes, iv: bytes, data: bytes) -> bytes:
    """Decrypt CBC and remove PKCS#7 padding, checking every padding byte."""
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    algorithm = _block_cipher(cipher_name, key)
    block = algorithm.block_size // 8
    if len(iv) != block:
        raise CryptError(f"{cipher_name} IV has {len(iv)} bytes, expected {block}")
    if not data or len(data) % block:
        raise CryptError(f"encrypted content of {len(data)} bytes is not a whole number of {block}-byte blocks")
    decryptor = Cipher(algorithm, modes.CBC(iv)).decryptor()
    plain = decryptor.update(data) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= block or plain[-pad:] != bytes([pad]) * pad:
        raise CryptError("bad padding after decryption (wrong key or corrupted data)")
    return plain[:-pad]


# --------------------------------------------------------------------------- CMS EnvelopedData

def _load_private_key(private_key_pem: bytes):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        try:  # our own transport key: skip the slow RSA consistency check (cryptography >= 39)
            return load_pem_private_key(private_key_pem, password=None, unsafe_skip_rsa_key_validation=True)
        except TypeError:
            return load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as e:
        raise CryptError(f"cannot load the private key: {_short(e)}") from None


def _recipient_matches(rid: Any, cert: Any) -> bool:
    """True if a RecipientIdentifier names ``cert`` (a cryptography Certificate)."""
    from cryptography import x509

    if rid.name == "subject_key_identifier":
        try:
            ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        except x509.ExtensionNotFound:
            ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
        return bytes(rid.chosen.native) == ski
    if rid.name == "issuer_and_serial_number":
        from asn1crypto import x509 as ax509

        issuer = ax509.Name.load(cert.issuer.public_bytes())
        return rid.chosen["serial_number"].native == cert.serial_number and rid.chosen["issuer"] == issuer
    return False


def _unwrap_key(private_key: Any, ktri: Any) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise CryptError("only RSA key transport is supported")
    algorithm = ktri["key_encryption_algorithm"]
    name = algorithm["algorithm"].native
    encrypted_key = ktri["encrypted_key"].native
    if name == "rsaes_pkcs1v15":
        pad = padding.PKCS1v15()
    elif name == "rsaes_oaep":
        params = algorithm["parameters"]
        hash_name = params["hash_algorithm"]["algorithm"].native if params.native else "sha1"
        mgf_hash = params["mask_gen_algorithm"]["parameters"]["algorithm"].native if params.native else "sha1"
        hash_classes = {"sha1": hashes.SHA1, "sha224": hashes.SHA224, "sha256": hashes.SHA256,
                        "sha384": hashes.SHA384, "sha512": hashes.SHA512}
        if hash_name not in hash_classes or mgf_hash not in hash_classes:
            raise CryptError(f"RSA-OAEP with {hash_name}/{mgf_hash} is not supported")
        label = params["p_source_algorithm"]["parameters"].native if params.native else b""
        pad = padding.OAEP(mgf=padding.MGF1(hash_classes[mgf_hash]()), algorithm=hash_classes[hash_name](),
                           label=label or None)
    else:
        raise CryptError(f"key transport algorithm {name!r} is not supported")
    try:
        return private_key.decrypt(encrypted_key, pad)
    except ValueError:
        raise CryptError("the content key cannot be decrypted with this private key (wrong key?)") from None


def decrypt_cms(der: bytes, private_key_pem: bytes, cert_pem: Optional[bytes] = None) -> bytes:
    """Decrypt a DER CMS EnvelopedData addressed to ``private_key_pem``.

    With ``cert_pem`` the recipient is chosen by that certificate (SKI or issuer+serial, as
    ``openssl cms -decrypt -recip``); without it every key-transport recipient is tried with the key
    (as ``openssl cms -decrypt -inkey`` alone does).
    """
    from asn1crypto import cms

    if not der:
        raise CryptError("the CMS message is empty")
    info = _load(cms.ContentInfo, bytes(der), "CMS message")
    if info["content_type"].native != "enveloped_data":
        raise CryptError(f"CMS content type is {info['content_type'].native!r}, expected enveloped_data")
    enveloped = info["content"]
    private_key = _load_private_key(private_key_pem)
    cert = None
    if cert_pem is not None:
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as e:
            raise CryptError(f"cannot load the recipient certificate: {_short(e)}") from None
    candidates = []
    for recipient in enveloped["recipient_infos"]:
        if recipient.name != "ktri":
            continue
        if cert is None or _recipient_matches(recipient.chosen["rid"], cert):
            candidates.append(recipient.chosen)
    if not candidates:
        raise CryptError("no recipient of the CMS message matches the certificate" if cert is not None
                         else "the CMS message has no key-transport recipient")
    content_info = enveloped["encrypted_content_info"]
    encrypted = content_info["encrypted_content"].native
    if not encrypted:
        raise CryptError("the CMS message carries no encrypted content")
    algorithm = content_info["content_encryption_algorithm"]
    try:
        cipher = algorithm.encryption_cipher
        iv = algorithm.encryption_iv
    except ValueError as e:
        raise CryptError(f"content encryption algorithm not supported: {_short(e)}") from None
    if cipher not in ("aes", "tripledes") or algorithm.encryption_mode != "cbc":
        raise CryptError(f"content encryption {algorithm['algorithm'].native!r} is not supported")
    last: Optional[CryptError] = None
    for ktri in candidates:
        try:
            key = _unwrap_key(private_key, ktri)
            expected = algorithm.key_length
            if len(key) != expected:
                raise CryptError(f"content key has {len(key)} bytes, expected {expected} (wrong key?)")
            return cbc_decrypt(cipher, key, iv, encrypted)
        except CryptError as e:
            last = e
    assert last is not None
    raise last


# --------------------------------------------------------------------------- PKCS#12

def pkcs12_kdf(password: bytes, salt: bytes, purpose: int, iterations: int, size: int,
               hash_name: str = "sha1") -> bytes:
    """RFC 7292 appendix B.2 key derivation (purpose 1 = key, 2 = IV, 3 = MAC key).
    ``password`` is already BMPString-encoded with its two-byte terminator (or empty)."""
    v = hashlib.new(hash_name).block_size

    def stretch(data: bytes) -> bytes:
        if not data:
            return b""
        n = v * ((len(data) + v - 1) // v)
        return (data * (n // len(data) + 1))[:n]

    d = bytes([purpose]) * v
    i = bytearray(stretch(salt) + stretch(password))
    out = b""
    while len(out) < size:
        a = hashlib.new(hash_name, d + bytes(i)).digest()
        for _ in range(iterations - 1):
            a = hashlib.new(hash_name, a).digest()
        out += a
        b = int.from_bytes(stretch(a), "big") + 1
        for j in range(0, len(i), v):
            block = (int.from_bytes(i[j:j + v], "big") + b) % (1 << (v * 8))
            i[j:j + v] = block.to_bytes(v, "big")
    return out[:size]


def _pbe_decrypt(algorithm: Any, data: bytes, password: str, bmp: bytes) -> bytes:
    kdf = algorithm.kdf
    try:
        if kdf == "pkcs12_kdf":
            salt, rounds = algorithm.kdf_salt, algorithm.kdf_iterations
            cipher = algorithm.encryption_cipher
            key = pkcs12_kdf(bmp, salt, 1, rounds, algorithm.key_length)
            if cipher == "rc4":
                raise CryptError("RC4-protected PFX bags are not supported")
            iv = pkcs12_kdf(bmp, salt, 2, rounds, algorithm.encryption_block_size)
            if cipher == "tripledes" and len(key) == 16:
                key = key + key[:8]
            return cbc_decrypt(cipher, key, iv, data)
        if kdf == "pbkdf2":
            key = hashlib.pbkdf2_hmac(algorithm.kdf_hmac, password.encode("utf-8"), algorithm.kdf_salt,
                                      algorithm.kdf_iterations, algorithm.key_length)
            return cbc_decrypt(algorithm.encryption_cipher, key, algorithm.encryption_iv, data)
    except (ValueError, NotImplementedError) as e:
        raise CryptError(f"PFX encryption algorithm not supported: {_short(e)}") from None
    raise CryptError(f"PFX key derivation {kdf!r} is not supported")


@dataclass
class PfxContents:
    """What a PFX holds, in bag order: private keys (cryptography objects) and certificates (DER)."""

    keys: list = field(default_factory=list)
    certificates: list[bytes] = field(default_factory=list)
    mac_verified: bool = False


def _password_candidates(password: str) -> list[bytes]:
    """An empty PFX password is ambiguous (absent vs. empty BMPString); try both like OpenSSL."""
    bmp = password.encode("utf-16-be") + b"\x00\x00"
    return [bmp, b""] if password == "" else [bmp]


def _verify_mac(pfx: Any, content: bytes, candidates: list[bytes]) -> Optional[bytes]:
    mac_data = pfx["mac_data"]
    if not mac_data.native:
        return None
    digest_name = mac_data["mac"]["digest_algorithm"]["algorithm"].native
    if digest_name not in ("sha1", "sha224", "sha256", "sha384", "sha512"):
        return None
    salt, rounds = mac_data["mac_salt"].native, mac_data["iterations"].native
    expected = mac_data["mac"]["digest"].native
    for bmp in candidates:
        key = pkcs12_kdf(bmp, salt, 3, rounds, hashlib.new(digest_name).digest_size, digest_name)
        if hmac.compare_digest(hmac.new(key, content, digest_name).digest(), expected):
            return bmp
    return None


def _walk_bags(bags: Any, password: str, bmp: bytes, out: PfxContents, depth: int = 0) -> None:
    from asn1crypto import pkcs12
    from cryptography.hazmat.primitives.serialization import load_der_private_key

    if depth > 4:
        raise CryptError("PFX safe contents are nested too deeply")
    for bag in bags:
        kind = bag["bag_id"].native
        value = bag["bag_value"]
        if kind in ("key_bag", "pkcs8_shrouded_key_bag"):
            if kind == "key_bag":
                key_der = value.untag().dump()  # the bag value carries an explicit [0] tag
            else:
                key_der = _pbe_decrypt(value["encryption_algorithm"], value["encrypted_data"].native, password, bmp)
            try:
                out.keys.append(load_der_private_key(key_der, password=None))
            except (ValueError, TypeError) as e:
                raise CryptError(f"PFX private key cannot be loaded: {_short(e)}") from None
        elif kind == "cert_bag":
            if value["cert_id"].native == "x509":
                out.certificates.append(value["cert_value"].parsed.dump())
        elif kind == "safe_contents":
            nested = _load(pkcs12.SafeContents, value.untag().dump(), "PFX nested safe contents")
            _walk_bags(nested, password, bmp, out, depth + 1)


def parse_pfx(der: bytes, password: str = "") -> PfxContents:
    """Every private key and certificate of a PKCS#12 file (all of them, unlike a one-key loader).

    The MAC selects the password encoding; a PFX whose MAC does not verify is still read (upstream
    converts with ``-nomacver`` first), the decryption padding then decides.
    """
    from asn1crypto import cms, pkcs12

    pfx = _load(pkcs12.Pfx, bytes(der), "PFX")
    auth = pfx["auth_safe"]
    if auth["content_type"].native != "data":
        raise CryptError(f"PFX integrity mode {auth['content_type'].native!r} is not supported")
    content = auth["content"].native
    if not isinstance(content, bytes):
        raise CryptError("PFX authenticated safe is not a data octet string")
    safe = _load(pkcs12.AuthenticatedSafe, content, "PFX authenticated safe")
    candidates = _password_candidates(password)
    verified = _verify_mac(pfx, content, candidates)
    if verified is not None:
        candidates = [verified]
    last: Optional[CryptError] = None
    for bmp in candidates:
        out = PfxContents(mac_verified=verified is not None)
        try:
            for info in safe:
                kind = info["content_type"].native
                if kind == "data":
                    bags = _load(pkcs12.SafeContents, info["content"].native, "PFX safe contents")
                elif kind == "encrypted_data":
                    enc = info["content"]["encrypted_content_info"]
                    if not isinstance(enc, cms.EncryptedContentInfo) or not enc["encrypted_content"].native:
                        raise CryptError("PFX encrypted safe contents are empty")
                    plain = _pbe_decrypt(enc["content_encryption_algorithm"], enc["encrypted_content"].native,
                                         password, bmp)
                    bags = _load(pkcs12.SafeContents, plain, "PFX decrypted safe contents")
                else:
                    raise CryptError(f"PFX safe contents of type {kind!r} are not supported")
                _walk_bags(bags, password, bmp, out)
            return out
        except CryptError as e:
            last = e
    assert last is not None
    raise last
