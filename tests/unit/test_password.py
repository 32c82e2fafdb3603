"""Password hashing per Provisioning.PasswordCryptId / PasswordCryptSaltLength (spec 05 §4).

Every hash is checked against ``openssl passwd`` run with the same salt — an independent implementation.
"""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest

from guestagent import log
from guestagent.errors import OSUtilError, ProvisionError
from guestagent.osutil import password

OPENSSL_FLAG = {"1": "-1", "5": "-5", "6": "-6"}
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI not installed")


def _openssl(crypt_id: str, salt: str, word: str) -> str:
    return subprocess.run(["openssl", "passwd", OPENSSL_FLAG[crypt_id], "-salt", salt, "-stdin"], input=word + "\n",
                          capture_output=True, text=True, check=True).stdout.strip()


@needs_openssl
@pytest.mark.parametrize("crypt_id", ["1", "5", "6"])
@pytest.mark.parametrize("word", ["P@ssw0rd!", "pässwörd ünïcode", "x" * 200])
def test_hash_matches_openssl(crypt_id, word):
    salt = password.gen_salt(8)
    ours = password.hash_password(word, crypt_id, salt=salt)
    assert ours == _openssl(crypt_id, salt, word)


@needs_openssl
@pytest.mark.parametrize("crypt_id", ["1", "5", "6"])
def test_every_backend_agrees(crypt_id):
    salt = password.gen_salt(8)
    expected = _openssl(crypt_id, salt, "Backend-Test-1")
    backends = [password.libcrypt_crypt, password.backend()]
    module = password._module_backend()
    if module is not None:
        backends.append(module[0])
    for crypt in backends:
        assert password.hash_password("Backend-Test-1", crypt_id, salt=salt, crypt=crypt) == expected
    assert password.backend_name() in ("crypt_r", "crypt", "libcrypt")


def test_verify_password():
    hashed = password.hash_password("Right-Password", "5", 8)
    assert password.verify_password("Right-Password", hashed)
    assert not password.verify_password("Wrong-Password", hashed)
    assert not password.verify_password("Right-Password", "!" + hashed)
    assert not password.verify_password("Right-Password", "")


def test_random_salt_and_length():
    first = password.hash_password("secret-one", "6", 10)
    second = password.hash_password("secret-one", "6", 10)
    assert first != second
    _, scheme, salt, digest = first.split("$")
    assert scheme == "6" and len(salt) == 10 and all(c in password.SALT_ALPHABET for c in salt) and digest
    assert len(password.hash_password("secret-one", "5", 3).split("$")[2]) == 3


@pytest.mark.parametrize("bad_id", ["2a", "7", "", "y", "6$x", "md5"])
def test_unknown_crypt_id_is_a_clear_provision_error(bad_id):
    with pytest.raises(ProvisionError, match="PasswordCryptId"):
        password.hash_password("whatever-pass", bad_id)
    with pytest.raises(OSUtilError):  # users.set_password's callers catch osutil errors
        password.hash_password("whatever-pass", bad_id)


def test_bad_salt_and_password():
    for salt_len in (0, -1, "10"):
        with pytest.raises(ProvisionError, match="SaltLength"):
            password.hash_password("whatever-pass", "6", salt_len)
    with pytest.raises(ProvisionError, match="salt"):
        password.hash_password("whatever-pass", "6", salt="$bad$")
    with pytest.raises(ProvisionError, match="NUL"):
        password.hash_password("bad\0pass", "6")
    with pytest.raises(ProvisionError, match="does not support"):
        password.hash_password("whatever-pass", "6", crypt=lambda word, setting: None)
    with pytest.raises(ProvisionError, match="does not support"):  # libxcrypt's failure token
        password.hash_password("whatever-pass", "6", crypt=lambda word, setting: "*0")


def test_password_never_reaches_the_log():
    stream = io.StringIO()
    log.add_appender("test", log.StreamAppender(log.VERBOSE, stream))
    try:
        password.hash_password("Very-Secret-Pw-42", "6")
        log.info("setting password Very-Secret-Pw-42 for user")
    finally:
        log.remove_appender("test")
    assert "Very-Secret-Pw-42" not in stream.getvalue()
