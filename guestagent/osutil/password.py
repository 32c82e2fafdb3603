"""Password hashes for ``usermod -p`` (spec 05 §4): ``crypt(password, "$<id>$<salt>")``.

``Provisioning.PasswordCryptId`` picks the scheme and ``Provisioning.PasswordCryptSaltLength`` the
number of random ``[A-Za-z0-9]`` salt characters, as upstream. Python 3.13 dropped the ``crypt``
module, so the backend is, in order: the ``crypt_r`` package (what pyproject installs on 3.13+), the
standard ``crypt`` module (3.9–3.12), then the system libcrypt through ctypes. All three call the same
C ``crypt``, so a hash is the same whichever is used.

Only the schemes whose salt is a plain character string are accepted: 1 (MD5), 5 (SHA-256) and
6 (SHA-512). Upstream also lists 2a (Blowfish), but the ``$2a$<salt>`` it builds is not a valid bcrypt
setting (that needs a cost field and a 22-character salt), so libcrypt rejects it and provisioning
fails later; here it is refused up front with a clear error.
"""

from __future__ import annotations

import string
import threading
import warnings
from typing import Callable, Optional

from guestagent import log
from guestagent.errors import OSUtilError, ProvisionError

SUPPORTED_CRYPT_IDS = ("1", "5", "6")
SALT_ALPHABET = string.ascii_letters + string.digits
DEFAULT_CRYPT_ID = "6"
DEFAULT_SALT_LENGTH = 10

#: Large enough for glibc's and libxcrypt's ``struct crypt_data``.
_CRYPT_DATA_SIZE = 256 * 1024

_backend: Optional[Callable[[str, str], Optional[str]]] = None
_backend_name = ""
_ctypes_lock = threading.Lock()


class PasswordCryptError(ProvisionError, OSUtilError):
    """A password cannot be hashed as configured: a provisioning error raised from osutil, so callers
    catching either class see it."""


def _ctypes_backend() -> Callable[[str, str], Optional[str]]:
    """The C library's ``crypt_r`` (libxcrypt or glibc), or ``crypt`` serialized by a lock."""
    import ctypes
    import ctypes.util

    names = [n for n in ("crypt", ctypes.util.find_library("crypt")) if n]
    lib = None
    for name in ("libcrypt.so.2", "libcrypt.so.1", *names):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise PasswordCryptError("no crypt implementation found (crypt_r, crypt module or libcrypt)")
    if hasattr(lib, "crypt_r"):
        reentrant = lib.crypt_r
        reentrant.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
        reentrant.restype = ctypes.c_char_p

        def crypt_r(word: str, setting: str) -> Optional[str]:
            data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
            out = reentrant(word.encode("utf-8"), setting.encode("utf-8"), data)
            return out.decode("utf-8", errors="replace") if out else None

        return crypt_r
    func = lib.crypt
    func.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    func.restype = ctypes.c_char_p

    def crypt(word: str, setting: str) -> Optional[str]:
        with _ctypes_lock:
            out = func(word.encode("utf-8"), setting.encode("utf-8"))
        return out.decode("utf-8", errors="replace") if out else None

    return crypt


def _module_backend() -> Optional[tuple[Callable[[str, str], Optional[str]], str]]:
    try:
        import crypt_r  # type: ignore[import-not-found]

        return crypt_r.crypt, "crypt_r"
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt  # type: ignore[import-not-found]

        return crypt.crypt, "crypt"
    except ImportError:
        return None


def backend() -> Callable[[str, str], Optional[str]]:
    global _backend, _backend_name
    with _ctypes_lock:
        if _backend is None:
            _backend, _backend_name = _module_backend() or (_ctypes_backend(), "libcrypt")
        return _backend


def backend_name() -> str:
    """Which implementation hashes: ``crypt_r``, ``crypt`` or ``libcrypt``."""
    backend()
    return _backend_name


def libcrypt_crypt(word: str, setting: str) -> Optional[str]:
    """The ctypes path, exposed so tests prove it agrees with the module backends."""
    return _ctypes_backend()(word, setting)


def gen_salt(length: int) -> str:
    """``length`` random ``[A-Za-z0-9]`` characters from a CSPRNG (upstream's alphabet)."""
    import secrets  # here: secrets → hmac → hashlib maps libcrypto; the ext-handler rarely needs it

    return "".join(secrets.choice(SALT_ALPHABET) for _ in range(length))


make_salt = gen_salt


def verify_password(word: str, hashed: str, crypt: Optional[Callable[[str, str], Optional[str]]] = None) -> bool:
    """True if ``hashed`` (a crypt(3) string as in /etc/shadow) is the hash of ``word``."""
    if not hashed or hashed[0] in "!*":
        return False
    import secrets

    result = (crypt or backend())(word, hashed)
    return bool(result) and secrets.compare_digest(result, hashed)


def hash_password(password: str, crypt_id: str = DEFAULT_CRYPT_ID, salt_len: int = DEFAULT_SALT_LENGTH,
                  salt: Optional[str] = None, crypt: Optional[Callable[[str, str], Optional[str]]] = None) -> str:
    """``crypt(password, "$<crypt_id>$<salt>")``; ``salt`` only for tests (default: random)."""
    crypt_id = str(crypt_id).strip()
    if crypt_id not in SUPPORTED_CRYPT_IDS:
        raise PasswordCryptError(f"Provisioning.PasswordCryptId={crypt_id!r} is not supported; "
                                 f"use one of {', '.join(SUPPORTED_CRYPT_IDS)} (1 = MD5, 5 = SHA-256, 6 = SHA-512)")
    if salt is None:
        if not isinstance(salt_len, int) or salt_len < 1:
            raise PasswordCryptError(f"Provisioning.PasswordCryptSaltLength={salt_len!r} must be a positive integer")
        salt = gen_salt(salt_len)
    elif not salt or any(c not in SALT_ALPHABET for c in salt):
        raise PasswordCryptError("a password salt must be non-empty and made of [A-Za-z0-9]")
    if "\0" in password:
        raise PasswordCryptError("a password cannot contain a NUL character")
    log.register_secret(password)
    try:
        result = (crypt or backend())(password, f"${crypt_id}${salt}")
    except (OSError, ValueError) as e:
        raise PasswordCryptError(f"crypt failed for scheme {crypt_id}: {type(e).__name__}") from None
    if not result or result.startswith("*") or not result.startswith(f"${crypt_id}$"):
        raise PasswordCryptError(f"crypt does not support scheme {crypt_id} on this system")
    return result
