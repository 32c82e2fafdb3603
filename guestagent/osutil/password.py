"""Password hashing with the system's crypt(3) semantics (spec 05 §4, design §5).

Python 3.13 removed the ``crypt`` module. We keep one maintained path on every interpreter: the
stdlib module where it exists (<3.13), the ``crypt-r`` package (its drop-in successor) on 3.13+, and
libcrypt itself through ctypes as the last resort — all three call the same libxcrypt, so the hash
``/etc/shadow`` gets is the one ``login``/``sshd`` verify.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import secrets
import string
import threading
import warnings
from typing import Callable, Optional

from guestagent.errors import OSUtilError

SALT_ALPHABET = string.ascii_letters + string.digits
#: crypt ids libxcrypt accepts with a plain ``$<id>$<salt>`` setting (yescrypt/gost/bcrypt need
#: encoded parameters, which upstream cannot produce either).
KNOWN_CRYPT_IDS = frozenset({"1", "5", "6"})
#: Large enough for glibc's and libxcrypt's ``struct crypt_data``.
_CRYPT_DATA_SIZE = 256 * 1024

_backend: Optional[Callable[[str, str], Optional[str]]] = None
_backend_name = ""
_lock = threading.Lock()


def _libcrypt_backend() -> Callable[[str, str], Optional[str]]:
    name = ctypes.util.find_library("crypt") or "libcrypt.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError as e:
        raise OSUtilError(f"No crypt implementation available (libcrypt: {e})") from None
    fn = lib.crypt_r
    fn.restype = ctypes.c_char_p
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]

    def crypt_r(password: str, setting: str) -> Optional[str]:
        data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
        out = fn(password.encode("utf-8"), setting.encode("ascii"), data)
        return out.decode("ascii") if out else None

    return crypt_r


def _load_backend() -> tuple[Callable[[str, str], Optional[str]], str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt as std_crypt  # type: ignore[import-not-found]
        return std_crypt.crypt, "crypt"
    except ImportError:
        pass
    try:
        import crypt_r  # type: ignore[import-not-found]

        return crypt_r.crypt, "crypt_r"
    except ImportError:
        pass
    return _libcrypt_backend(), "libcrypt"


def _crypt(password: str, setting: str) -> Optional[str]:
    global _backend, _backend_name
    with _lock:
        if _backend is None:
            _backend, _backend_name = _load_backend()
        fn = _backend
    return fn(password, setting)


def backend_name() -> str:
    _crypt("x", "$6$probe")
    return _backend_name


def make_salt(length: int) -> str:
    """``length`` random characters of ``[A-Za-z0-9]`` (upstream's alphabet; a CSPRNG, not ``random``)."""
    if length < 1:
        raise OSUtilError(f"Invalid password salt length {length} (Provisioning.PasswordCryptSaltLength)")
    return "".join(secrets.choice(SALT_ALPHABET) for _ in range(length))


def hash_password(password: str, crypt_id: str = "6", salt_len: int = 10,
                  crypt: Optional[Callable[[str, str], Optional[str]]] = None) -> str:
    """``crypt(password, "$<id>$<salt>")``. An id libcrypt does not honour is an error rather than a
    silently weaker (DES) or failed ("*0") hash."""
    crypt_id = str(crypt_id).strip()
    if crypt_id not in KNOWN_CRYPT_IDS:
        raise OSUtilError(f"Unsupported password crypt id '{crypt_id}' (Provisioning.PasswordCryptId); "
                          f"supported: {', '.join(sorted(KNOWN_CRYPT_IDS))}")
    setting = f"${crypt_id}${make_salt(salt_len)}"
    result = (crypt or _crypt)(password, setting)
    if not result or not result.startswith(f"${crypt_id}$") or result.startswith("*"):
        raise OSUtilError(f"crypt(3) cannot produce a '${crypt_id}$' hash on this system")
    return result


def verify_password(password: str, hashed: str,
                    crypt: Optional[Callable[[str, str], Optional[str]]] = None) -> bool:
    """True if ``hashed`` (a crypt(3) string from /etc/shadow) is the hash of ``password``."""
    if not hashed or hashed[0] in "!*":
        return False
    result = (crypt or _crypt)(password, hashed)
    return bool(result) and secrets.compare_digest(result, hashed)


def libcrypt_crypt(password: str, setting: str) -> Optional[str]:
    """The ctypes path, exposed so tests prove it agrees with the other backends."""
    return _libcrypt_backend()(password, setting)
