"""sshd_config, authorized keys, key pairs and host keys (spec 05 §5).

Public keys derived from tenant certificates come from :mod:`guestagent.osutil.sshkeys`
(cryptography, no ``openssl``/``ssh-keygen -i`` round trip); host keys are made and fingerprinted
by the system's ``ssh-keygen`` because sshd must read them.
"""

from __future__ import annotations

import glob
import os
from typing import Optional

from guestagent import log
from guestagent.errors import CommandError, CryptError, OSUtilError, ProvisionError
from guestagent.osutil import pathguard, sshkeys, system, users

SSH_HOME_CONTEXT = "unconfined_u:object_r:ssh_home_t:s0"
HOST_KEY_TYPES = ("rsa", "dsa", "ecdsa", "ed25519")


# --- sshd_config -----------------------------------------------------------------------------------
def set_ssh_config(lines: list[str], name: str, value: str) -> list[str]:
    """Upstream's edit rule: replace every ``<name>…`` line outside Match blocks; else insert before
    the first Match of the block still open at the end, or before the last line."""
    found = False
    match_start = -1
    for i, line in enumerate(lines):
        if line.startswith(name) and match_start == -1:
            lines[i] = f"{name} {value}"
            found = True
        elif line.lower().startswith("match"):
            if line.lower().startswith("match all"):
                match_start = -1
            elif match_start == -1:
                match_start = i
    if not found:
        at = match_start if match_start != -1 else max(len(lines) - 1, 0)
        lines.insert(at, f"{name} {value}")
    return lines


def conf_sshd(sshd_config: str, disable_password: bool, client_alive_interval: int) -> None:
    option = "no" if disable_password else "yes"
    target = system.path(sshd_config)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    lines = (system.read_text(sshd_config) or "").split("\n")
    set_ssh_config(lines, "PasswordAuthentication", option)
    set_ssh_config(lines, "ChallengeResponseAuthentication", option)
    set_ssh_config(lines, "ClientAliveInterval", str(client_alive_interval))
    system.write_file(sshd_config, "\n".join(lines), mode=mode)
    log.info("{0} SSH password-based authentication methods.", "Disabled" if disable_password else "Enabled")
    log.info("Configured SSH client probing to keep connections alive.")


# --- helpers ---------------------------------------------------------------------------------------
def norm_path(p: str, home_dir: str) -> str:
    return os.path.normpath(p.replace("$HOME", home_dir))


def _owner(username: str) -> tuple[int, int]:
    entry = users.get_user(username)
    if entry is None:
        raise OSUtilError(f"User {username} does not exist")
    return entry.uid, entry.gid


def _mkdir_for(username: str, directory: str) -> None:
    target = system.path(directory)
    if not target.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        os.chmod(target, 0o700)
        os.chown(target, *_owner(username))


def _selinux_context(p: str) -> None:
    if system.which("getenforce") is None:
        return
    try:
        system.run(["chcon", SSH_HOME_CONTEXT, str(system.path(p))], timeout=30)
    except CommandError as e:
        log.warn("chcon {0} failed: {1}", p, e)


def _append(p: str, line: str, username: str) -> None:
    target = system.path(p)
    existing = target.read_text(encoding="utf-8", errors="replace") if target.is_file() else ""
    if existing and not existing.endswith("\n"):
        existing += "\n"
    system.write_file(p, existing + line + ("" if line.endswith("\n") else "\n"), mode=0o644)


# --- public keys and key pairs ---------------------------------------------------------------------
def deploy_ssh_pubkey(username: str, path: Optional[str], fingerprint: Optional[str], value: Optional[str],
                      lib_dir: str, home_dir: str) -> str:
    """Append one authorized key (by value, or from ``<lib>/<FP>.crt``); returns the file path."""
    if path is None:
        raise OSUtilError("Public key path is None")
    path = pathguard.within(os.path.join(home_dir, username), norm_path(path, home_dir))
    _mkdir_for(username, os.path.dirname(path))
    if value is not None:
        if not value.startswith("ssh-"):
            raise OSUtilError(f"Bad public key: {value[:64]}")
        _append(path, value, username)
    elif fingerprint is not None:
        crt = pathguard.join(lib_dir, fingerprint + ".crt")
        if not system.path(crt).is_file():
            raise OSUtilError(f"Can't find {fingerprint}.crt")
        try:
            cert_pem = system.read_bytes(crt)
            pem = sshkeys.pem_public_key_from_cert(cert_pem)
            line = sshkeys.ssh_public_key_from_cert(cert_pem)
        except CryptError as e:
            raise OSUtilError(f"Invalid certificate {fingerprint}.crt", inner=e)
        system.write_file(pathguard.join(lib_dir, fingerprint + ".pub"), pem, mode=0o600)
        _append(path, line, username)
    else:
        raise OSUtilError("SSH public key Fingerprint and Value are None")
    _selinux_context(path)
    os.chown(system.path(path), *_owner(username))
    os.chmod(system.path(path), 0o644)
    return path


def deploy_ssh_keypair(username: str, path: str, fingerprint: str, lib_dir: str, home_dir: str) -> str:
    """Copy ``<lib>/<FP>.prv`` to ``path`` and its PEM public key to ``path.pub`` (upstream's modes:
    0644 key, 0600 .pub; not chowned)."""
    if path is None or fingerprint is None:
        raise OSUtilError("SSH key pair Path or Fingerprint is None")
    path = pathguard.within(os.path.join(home_dir, username), norm_path(path, home_dir))
    _mkdir_for(username, os.path.dirname(path))
    prv = pathguard.join(lib_dir, fingerprint + ".prv")
    if not system.path(prv).is_file():
        raise OSUtilError(f"Can't find {fingerprint}.prv")
    key_pem = system.read_bytes(prv)
    try:
        pub = sshkeys.pem_public_key_from_private_key(key_pem)
    except CryptError as e:
        raise OSUtilError(f"Invalid private key {fingerprint}.prv", inner=e)
    system.write_file(path, key_pem, mode=0o644)
    system.write_file(path + ".pub", pub, mode=0o600)
    _selinux_context(path + ".pub")
    _selinux_context(path)
    return path


# --- host keys -------------------------------------------------------------------------------------
def host_key_glob(ssh_dir: str) -> str:
    return os.path.join(ssh_dir, "ssh_host_*key*")


def delete_host_keys(ssh_dir: str) -> list[str]:
    removed = []
    for p in glob.glob(str(system.path(host_key_glob(ssh_dir)))):
        if os.path.isfile(p) or os.path.islink(p):
            os.remove(p)
            removed.append(p)
    return removed


def regenerate_host_keys(ssh_dir: str, key_type: str) -> None:
    """Delete every host key; ``auto`` → ``ssh-keygen -A``, else one key of ``key_type``."""
    delete_host_keys(ssh_dir)
    if key_type == "auto":
        argv = ["ssh-keygen", "-A"]
        if str(system.get_root()) != "/":
            # -A always writes <prefix>/etc/ssh/ssh_host_*; the prefix is the osutil root.
            argv += ["-f", str(system.get_root())]
    else:
        if key_type not in HOST_KEY_TYPES:
            raise ProvisionError(f"Unsupported SSH host key type '{key_type}' (Provisioning.SshHostKeyPairType)")
        argv = ["ssh-keygen", "-N", "", "-t", key_type, "-f",
                str(system.path(os.path.join(ssh_dir, f"ssh_host_{key_type}_key")))]
    try:
        system.run(argv, timeout=120)
    except CommandError as e:
        raise ProvisionError(f"Failed to generate ssh host key: {e}")


def host_key_thumbprint(ssh_dir: str, key_type: str) -> str:
    """``ssh-keygen -lf <pub>`` field 2 without colons (e.g. ``SHA256abc…``)."""
    key_type = "rsa" if key_type == "auto" else key_type
    pub = system.path(os.path.join(ssh_dir, f"ssh_host_{key_type}_key.pub"))
    try:
        result = system.run(["ssh-keygen", "-lf", str(pub)], timeout=60, check=False)
    except CommandError as e:
        raise ProvisionError(f"Failed to generate ssh host key: ret=None, out= {e}")
    fields = result.stdout.split()
    if result.returncode != 0 or len(fields) < 2:
        raise ProvisionError(f"Failed to generate ssh host key: ret={result.returncode}, "
                             f"out= {(result.stdout + result.stderr).strip()}")
    return fields[1].replace(":", "")


def restart_ssh_service(argv: Optional[tuple[str, ...]]) -> None:
    """The distro's sshd reload (None: upstream does nothing there); failures only logged."""
    if not argv:
        return
    try:
        result = system.run(list(argv), timeout=120, check=False)
        if not result.ok:
            first = (result.stderr.strip().splitlines() or [""])[0]
            log.info("sshd reload ({0}) returned {1}: {2}", " ".join(argv), result.returncode, first)
    except CommandError as e:
        log.warn("{0} failed: {1}", " ".join(argv), e)
