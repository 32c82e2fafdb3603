"""The transport certificate and the tenant certificates the WireServer sends (spec 01 §6–§8, 03 §9).

The WireServer encrypts the Certificates document (a PFX inside CMS), JIT passwords and protected
settings to certificates the VM owns. This module makes the transport key pair, decrypts those
blobs natively (see :mod:`guestagent.protocol.cms`) and lays the tenant certificates out in the lib
dir with upstream's names: ``<THUMBPRINT>.crt`` and ``<THUMBPRINT>.prv``. Certificate processing
never raises to the goal-state code: it logs and returns an empty list that carries the error, so
the caller can report it and carry on as upstream does.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from guestagent import log
from guestagent.errors import CryptError
from guestagent.osutil import system
from guestagent.protocol import xml

TRANSPORT_PRV_FILE = "TransportPrivate.pem"
TRANSPORT_CERT_FILE = "TransportCert.pem"
CERTS_XML_FILE = "Certificates.xml"
P7M_FILE = "Certificates.p7m"
PEM_FILE = "Certificates.pem"
PFX_FORMAT = "Pkcs7BlobWithPfxContents"
TRANSPORT_SUBJECT = "LinuxTransport"
TRANSPORT_VALIDITY_DAYS = 730
TRANSPORT_KEY_BITS = 2048
#: Largest base64 blob accepted for a certificate bundle, a password or protected settings.
MAX_BLOB = 8 * 1024 * 1024


@dataclass(frozen=True)
class CertSummary:
    """One entry of the certificate summary (history file ``Certificates.json``)."""

    thumbprint: str
    has_private_key: bool

    def to_json(self) -> dict:
        return {"thumbprint": self.thumbprint, "hasPrivateKey": self.has_private_key}


class CertificateList(list):
    """The summary list; empty with ``error`` set when processing failed (never raised).

    ``decrypt_failed`` tells the caller that retrying with the other cipher (``DES_EDE3_CBC``) may help.
    """

    def __init__(self, items: Any = (), error: Optional[str] = None, decrypt_failed: bool = False):
        super().__init__(items)
        self.error = error
        self.decrypt_failed = decrypt_failed


def summary_json(summary: list[CertSummary]) -> str:
    """``Certificates.json`` as upstream writes it to the goal-state history."""
    return json.dumps([s.to_json() for s in summary], indent=4)


@dataclass(frozen=True)
class CertificatesDocument:
    """The ``CertificateFile`` response; ``data`` is None when there is no ``Data`` element."""

    incarnation: Optional[str]
    format: Optional[str]
    data: Optional[str]

    @property
    def is_pfx(self) -> bool:
        return not self.format or self.format == PFX_FORMAT


def parse_certificates_xml(xml_text: str) -> CertificatesDocument:
    root = xml.parse(xml_text, what="Certificates document")
    return CertificatesDocument(incarnation=xml.findtext(root, "Incarnation"), format=xml.findtext(root, "Format"),
                                data=xml.findtext(root, "Data"))


def thumbprint(cert_der: bytes) -> str:
    """SHA-1 of the DER certificate, upper-case hex without separators (as the fabric names them)."""
    import hashlib  # here: _hashlib maps libcrypto (~3 MB resident) into whoever imports it

    return hashlib.sha1(cert_der).hexdigest().upper()


def b64decode(text: str, what: str) -> bytes:
    """Strict base64 (whitespace and line breaks allowed) → bytes, or CryptError."""
    if text is None:
        raise CryptError(f"{what} is missing")
    compact = "".join(text.split())
    if not compact:
        raise CryptError(f"{what} is empty")
    if len(compact) > MAX_BLOB:
        raise CryptError(f"{what} is too large ({len(compact)} characters)")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise CryptError(f"{what} is not valid base64") from None


def _lib(lib_dir: str, name: str) -> str:
    return os.path.join(lib_dir, name)


# --------------------------------------------------------------------------- transport certificate

def _transport_pair_usable(lib_dir: str) -> bool:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(system.read_bytes(_lib(lib_dir, TRANSPORT_PRV_FILE)), None)
        cert = x509.load_pem_x509_certificate(system.read_bytes(_lib(lib_dir, TRANSPORT_CERT_FILE)))
    except (OSError, ValueError, TypeError):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


def generate_transport_pair() -> tuple[bytes, bytes]:
    """A fresh (private key PEM PKCS#8, certificate PEM) pair shaped like ``openssl req -x509``'s."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=TRANSPORT_KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TRANSPORT_SUBJECT)])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())  # RFC 5280 method 1
    cert = (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=TRANSPORT_VALIDITY_DAYS))
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def ensure_transport_cert(lib_dir: str, regenerate: bool = True) -> None:
    """Write ``TransportPrivate.pem`` (0600) and ``TransportCert.pem``.

    Upstream regenerates on every protocol detection; ``regenerate=False`` keeps an existing pair whose
    key matches its certificate. Errors are logged, not raised (as upstream): the next request that
    needs the pair fails with its own clear error.
    """
    try:
        if not regenerate and _transport_pair_usable(lib_dir):
            return
        key_pem, cert_pem = generate_transport_pair()
        system.write_file(_lib(lib_dir, TRANSPORT_PRV_FILE), key_pem, mode=0o600)
        system.write_file(_lib(lib_dir, TRANSPORT_CERT_FILE), cert_pem, mode=0o644)
    except Exception as e:  # upstream only logs a failed generation
        log.error("Failed to create {0} and {1} certificates: {2}", _lib(lib_dir, TRANSPORT_PRV_FILE),
                  _lib(lib_dir, TRANSPORT_CERT_FILE), e)


def transport_cert_header(lib_dir: str) -> str:
    """Value of ``x-ms-guest-agent-public-x509-cert``: the PEM body lines joined (base64 DER)."""
    try:
        pem = system.read_text(_lib(lib_dir, TRANSPORT_CERT_FILE))
    except OSError as e:
        raise CryptError(f"cannot read the transport certificate: {e}") from None
    body = "".join(line.strip() for line in pem.split("\n") if "----" not in line)
    if not body:
        raise CryptError("the transport certificate file is empty")
    return body


def _read_transport(lib_dir: str, with_cert: bool = True) -> tuple[bytes, Optional[bytes]]:
    try:
        key = system.read_bytes(_lib(lib_dir, TRANSPORT_PRV_FILE))
    except OSError as e:
        raise CryptError(f"cannot read the transport private key: {e.strerror or e}") from None
    cert = None
    if with_cert and system.exists(_lib(lib_dir, TRANSPORT_CERT_FILE)):
        cert = system.read_bytes(_lib(lib_dir, TRANSPORT_CERT_FILE))
    return key, cert


# --------------------------------------------------------------------------- Certificates document

@dataclass(frozen=True)
class _Split:
    """The files one PFX turns into, computed completely before anything is written."""

    crt: dict  # thumbprint -> PEM bytes, in PFX order
    prv: dict  # thumbprint -> PEM bytes
    pem: bytes  # Certificates.pem


def decrypt_certificates(data_b64: str, lib_dir: str) -> bytes:
    """The PFX inside a Certificates ``Data`` value, decrypted with the transport pair."""
    from guestagent.protocol import cms

    key_pem, cert_pem = _read_transport(lib_dir)
    return cms.decrypt_cms(b64decode(data_b64, "Certificates Data"), key_pem, cert_pem)


def split_pfx(pfx_der: bytes) -> _Split:
    """Every certificate and key of the PFX as PEM, keys named after the certificate they belong to."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from guestagent.protocol import cms

    contents = cms.parse_pfx(pfx_der)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    by_public_key: dict[bytes, list[str]] = {}
    crt: dict[str, bytes] = {}
    for der in contents.certificates:
        try:
            cert = x509.load_der_x509_certificate(der)
            public = cert.public_key().public_bytes(*spki)
        except (ValueError, TypeError) as e:
            raise CryptError(f"a certificate in the PFX cannot be loaded: {e}") from None
        thumb = thumbprint(der)
        if thumb not in crt:
            crt[thumb] = cert.public_bytes(serialization.Encoding.PEM)
            by_public_key.setdefault(public, []).append(thumb)
    prv: dict[str, bytes] = {}
    key_pems = []
    for key in contents.keys:
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        key_pems.append(key_pem)
        owners = by_public_key.get(key.public_key().public_bytes(*spki))
        if not owners:
            raise CryptError("Found a private key with no matching cert/thumbprint")
        for thumb in owners:
            prv[thumb] = key_pem
    return _Split(crt=crt, prv=prv, pem=b"".join(key_pems) + b"".join(crt.values()))


def _p7m(lib_dir: str, data: str) -> str:
    p7m = _lib(lib_dir, P7M_FILE)
    return ("MIME-Version:1.0\n"
            f'Content-Disposition: attachment; filename="{p7m}"\n'
            f'Content-Type: application/x-pkcs7-mime; name="{p7m}"\n'
            "Content-Transfer-Encoding: base64\n"
            "\n"
            f"{data}")


def process_certificates(xml_text: str, lib_dir: str) -> CertificateList:
    """Handle a Certificates response (01 §7.2–7.4): files in ``lib_dir`` and the summary.

    Never raises: on any error it logs as upstream does and returns an empty list with ``error`` set.
    Nothing but ``Certificates.xml``/``.p7m`` is written unless the whole bundle decrypted and split.
    """
    try:
        system.write_file(_lib(lib_dir, CERTS_XML_FILE), xml_text, mode=0o644)
        doc = parse_certificates_xml(xml_text)
        if doc.data is None:
            log.info("The Data element of the Certificates response is empty")
            return CertificateList()
        if not doc.is_pfx:
            log.warn("The Certificates format is not {0}; skipping. Format is {1}", PFX_FORMAT, doc.format)
            return CertificateList()
        system.write_file(_lib(lib_dir, P7M_FILE), _p7m(lib_dir, doc.data), mode=0o644)
        try:
            pfx = decrypt_certificates(doc.data, lib_dir)
        except CryptError as e:
            log.error("Error fetching the goal state certificates: {0}", e)
            return CertificateList(error=str(e), decrypt_failed=True)
        split = split_pfx(pfx)
        for thumb, pem in split.crt.items():
            system.write_file(_lib(lib_dir, f"{thumb}.crt"), pem, mode=0o644)
        for thumb, pem in split.prv.items():
            system.write_file(_lib(lib_dir, f"{thumb}.prv"), pem, mode=0o600)
        system.write_file(_lib(lib_dir, PEM_FILE), split.pem, mode=0o600)
        summary = CertificateList(CertSummary(t, t in split.prv) for t in split.crt)
        for item in summary:
            log.info("Downloaded certificate {0}", item.to_json())
        return summary
    except Exception as e:  # certificate errors never stop the goal state (01 §7.4)
        log.error("Error fetching the goal state certificates: {0}", e)
        return CertificateList(error=str(e))


# --------------------------------------------------------------------------- secrets

def _register_json_secrets(value: Any) -> None:
    if isinstance(value, dict):
        for item in value.values():
            _register_json_secrets(item)
    elif isinstance(value, list):
        for item in value:
            _register_json_secrets(item)
    elif isinstance(value, str) and len(value) >= 8:
        log.register_secret(value)


def decrypt_protected_settings(b64: str, thumbprint: str, lib_dir: str) -> str:
    """Protected settings (03 §9) → JSON text, with ``<thumb>.prv``/``<thumb>.crt`` from the lib dir.

    The agent itself never needs this (extensions decrypt their own settings); the extension test kit
    and diagnostics do. The plaintext and its string values are registered as log secrets.
    """
    from guestagent.protocol import cms

    thumb = (thumbprint or "").strip().upper()
    if not thumb or not all(c in "0123456789ABCDEF" for c in thumb):
        raise CryptError(f"invalid certificate thumbprint {thumbprint!r}")
    try:
        key_pem = system.read_bytes(_lib(lib_dir, f"{thumb}.prv"))
        cert_pem = system.read_bytes(_lib(lib_dir, f"{thumb}.crt"))
    except OSError as e:
        raise CryptError(f"certificate {thumb} is not available: {e.strerror or e}") from None
    plain = cms.decrypt_cms(b64decode(b64, "protectedSettings"), key_pem, cert_pem)
    try:
        text = plain.decode("utf-8")
        log.register_secret(text)
        _register_json_secrets(json.loads(text))
    except (UnicodeDecodeError, ValueError):
        raise CryptError("decrypted protected settings are not JSON") from None
    return text


def decrypt_jit_password(b64: str, lib_dir: str) -> str:
    """A RemoteAccess ``Password`` (01 §8): CMS to the transport key, UTF-16 plaintext.

    A BOM selects the byte order and is dropped; without one the native order is used (as
    Python's ``utf-16`` codec does). The password is registered as a log secret.
    """
    from guestagent.protocol import cms

    key_pem, _ = _read_transport(lib_dir, with_cert=False)
    plain = cms.decrypt_cms(b64decode(b64, "JIT password"), key_pem, None)
    try:
        password = plain.decode("utf-16")
    except UnicodeDecodeError:
        raise CryptError("decrypted JIT password is not UTF-16") from None
    log.register_secret(password)
    return password


# --------------------------------------------------------------------------- isolation

#: The long-running ext-handler keeps its memory small by decrypting certificate bundles in a
#: short-lived interpreter: cryptography and asn1crypto cost ~9 MB of RSS that would otherwise stay
#: resident for the life of the process, for work done once per new goal state.
ISOLATE_ENV = "GUESTAGENT_CERTS_IN_PROCESS"


def process_certificates_isolated(xml_text: str, lib_dir: str) -> CertificateList:
    """:func:`process_certificates` in a child interpreter (same files, same log lines).

    Falls back to in-process work when the child cannot run; never raises."""
    if os.environ.get(ISOLATE_ENV) == "1" or "cryptography" in sys.modules:
        return process_certificates(xml_text, lib_dir)
    file_appender = log.file_appender()
    argv = [sys.executable, "-m", "guestagent.protocol.certificates", lib_dir,
            threading.current_thread().name, log.get_prefix() or "",
            file_appender.path if file_appender else "", str(file_appender.level if file_appender else log.INFO),
            os.fspath(system.get_root())]
    try:
        result = system.run(argv, input=xml_text, timeout=120, check=False, log=False)
        data = json.loads(result.stdout.strip().splitlines()[-1]) if result.ok else None
    except Exception as e:  # the child could not run: do the work here rather than lose the certificates
        log.warn("Certificates could not be processed in a child interpreter ({0}); processing in-process", e)
        return process_certificates(xml_text, lib_dir)
    if data is None:
        log.warn("Certificates child interpreter failed (exit {0}): {1}; processing in-process",
                 result.returncode, result.stderr.strip()[-500:])
        return process_certificates(xml_text, lib_dir)
    return CertificateList((CertSummary(t, bool(k)) for t, k in data["certs"]), error=data["error"],
                           decrypt_failed=bool(data["decrypt_failed"]))


class CertificatesJob:
    """The tenant certificates of one goal state, decrypted off the main thread.

    The helper interpreter (certificates.process_certificates_isolated) costs ~0.4 s per new goal state;
    a disable, or an update whose certificates are already on disk, must not pay it (issue 5 item 11).
    ``work`` never raises (certificate errors never fail a goal state); ``on_done`` runs in the worker.
    """

    def __init__(self, work: Callable[[], list], on_done: Optional[Callable[[list], None]] = None,
                 thread_name: Optional[str] = None):
        self.result: list = []
        self.finished_at: Optional[float] = None
        self.history_folder: Optional[str] = None  # where its Certificates.json goes (set by the caller)
        self._work, self._on_done = work, on_done
        self._done = threading.Event()
        # the caller's thread name: the helper's log lines read as upstream's ("ExtHandler ... Downloaded ...")
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=thread_name or threading.current_thread().name)

    def start(self) -> CertificatesJob:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self._work()
            if self._on_done is not None:
                self._on_done(self.result)
        except Exception as e:  # work() already contains its errors; this is the last line of defence
            log.error("Error processing the goal state certificates: {0}", e)
        finally:
            self.finished_at = time.monotonic()
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """True when finished (at once when it already was)."""
        return self._done.wait(timeout)


def _child_main(argv: list[str]) -> int:
    lib_dir, thread, prefix, log_file, level, root = argv
    threading.current_thread().name = thread
    log.set_prefix(prefix or None)
    if log_file:
        log.add_appender("file", log.FileAppender(int(level), log_file))
    system.set_root(root)
    summary = process_certificates(sys.stdin.read(), lib_dir)
    print(json.dumps({"certs": [[s.thumbprint, s.has_private_key] for s in summary], "error": summary.error,
                      "decrypt_failed": summary.decrypt_failed}))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(_child_main(sys.argv[1:]))
