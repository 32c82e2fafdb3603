"""User accounts, passwords and the agent's sudoers file (spec 05 §4, §7, §12).

Accounts are read from ``/etc/passwd`` under the osutil root (so file-effect tests need no real
users) and changed only with the distribution's own tools (useradd, chpasswd, userdel). The password
hash travels to ``chpasswd -e`` on stdin — never on a command line, never in a log.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple, Optional

from guestagent import log
from guestagent.errors import CommandError, OSUtilError
from guestagent.osutil import password as passwords
from guestagent.osutil import system

LOCKED_ROOT = "root:*LOCK*:14600::::::"
#: What useradd (shadow's is_valid_user_name, Debian's default) and Azure both accept, at most 32
#: characters: the name becomes a path (/home/<name>), a sudoers line and a command argument.
_USERNAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}")
#: Never provisioned whatever the configuration (upstream only refuses to set their password).
RESERVED_USERS = ("root",)


def username_error(name: str) -> Optional[str]:
    """Why ``name`` may not be the provisioned user (None when it may)."""
    if name in RESERVED_USERS:
        return "a reserved system account"
    if not _USERNAME.fullmatch(name) or ".." in name:
        return ("expected at most 32 letters, digits, '.', '_' or '-', starting with a letter or '_', "
                "no '..'")
    return None


DEFAULT_UID_MIN = 100


class UserEntry(NamedTuple):
    name: str
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str


def get_user(name: str) -> Optional[UserEntry]:
    for line in (system.read_text("/etc/passwd", default="", errors="replace") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 7 and parts[0] == name:
            try:
                return UserEntry(parts[0], int(parts[2]), int(parts[3]), parts[4], parts[5], parts[6])
            except ValueError:
                return None
    return None


def users() -> list[UserEntry]:
    out = []
    for line in (system.read_text("/etc/passwd", default="", errors="replace") or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 7 and parts[2].isdigit() and parts[3].isdigit():
            out.append(UserEntry(parts[0], int(parts[2]), int(parts[3]), parts[4], parts[5], parts[6]))
    return out


def uid_min() -> int:
    for line in (system.read_text("/etc/login.defs", default="", errors="replace") or "").splitlines():
        if line.startswith("UID_MIN"):
            try:
                return int(line.split()[1])
            except (IndexError, ValueError):
                break
    return DEFAULT_UID_MIN


def is_sys_user(name: str, allow_reset_sys_user: bool = False, regular_users: tuple[str, ...] = ()) -> bool:
    """Below UID_MIN; ``regular_users`` never are (the distro record's: CoreOS's ``core``)."""
    if allow_reset_sys_user or name in regular_users:
        return False
    entry = get_user(name)
    return entry is not None and entry.uid < uid_min()


def useradd(name: str, expiration: Optional[str] = None, comment: Optional[str] = None) -> bool:
    """Create the account with its home directory; False if it already existed."""
    if get_user(name) is not None:
        log.info("User {0} already exists, skip useradd", name)
        return False
    argv = ["useradd", "-m", name]
    if expiration is not None:
        argv += ["-e", expiration]
    if comment is not None:
        argv += ["-c", comment]
    try:
        system.run(argv, timeout=120)
    except CommandError as e:
        raise OSUtilError(f"Failed to create user account:{name}", inner=e)
    return True


def set_password(name: str, password: str, crypt_id: str = "6", salt_len: int = 10,
                 allow_reset_sys_user: bool = False, regular_users: tuple[str, ...] = ()) -> str:
    """Hash per Provisioning.PasswordCryptId/SaltLength and store it; returns the scheme id used."""
    log.register_secret(password)
    if is_sys_user(name, allow_reset_sys_user, regular_users):
        raise OSUtilError(f"User {name} is a system user, will not set password.")
    hashed = passwords.hash_password(password, crypt_id, salt_len)
    log.register_secret(hashed)
    try:
        if system.which("chpasswd"):
            system.run(["chpasswd", "-e"], input=f"{name}:{hashed}\n", secrets=[password, hashed], timeout=60)
        else:
            system.run(["usermod", "-p", hashed, name], secrets=[password, hashed], timeout=60)
    except CommandError as e:
        raise OSUtilError(f"Failed to set password for {name}", inner=e)
    return crypt_id


def shadow_hash(name: str, password_path: str = "/etc/shadow") -> Optional[str]:
    for line in (system.read_text(password_path, default="", errors="replace") or "").splitlines():
        parts = line.split(":")
        if len(parts) > 1 and parts[0] == name:
            return parts[1]
    return None


def _sudoers_file(sudoers_dir: str) -> str:
    return os.path.join(sudoers_dir, "waagent")


def conf_sudoer(name: str, nopasswd: bool = False, sudoers_dir: str = "/etc/sudoers.d") -> None:
    """Append ``<user> ALL=(ALL) [NOPASSWD: ]ALL`` to sudoers.d/waagent once; mode 0440."""
    if not system.path(sudoers_dir).is_dir():
        system.mkdir(sudoers_dir, mode=0o750)
        sudoers = os.path.join(os.path.dirname(os.path.normpath(sudoers_dir)), "sudoers")
        system.append_file(sudoers, f"\n#includedir {sudoers_dir}\n")
    line = f"{name} ALL=(ALL) NOPASSWD: ALL" if nopasswd else f"{name} ALL=(ALL) ALL"
    target = _sudoers_file(sudoers_dir)
    content = system.read_text(target, default="") or ""
    if line not in content:
        if content and not content.endswith("\n"):
            content += "\n"
        content += line + "\n"
    system.write_file(target, content, mode=0o440)


def remove_sudoer(name: str, sudoers_dir: str = "/etc/sudoers.d") -> None:
    target = _sudoers_file(sudoers_dir)
    if not system.path(target).is_file():
        return
    try:
        kept = [x for x in (system.read_text(target) or "").split("\n") if name not in x]
        system.write_file(target, "\n".join(kept), mode=0o440)
    except OSError as e:
        raise OSUtilError(f"Failed to remove sudoer: {e}")


def del_root_password(password_path: str = "/etc/shadow") -> None:
    """Lock root: drop ``root:`` lines and put ``root:*LOCK*:14600::::::`` first."""
    try:
        target = system.path(password_path)
        mode = target.stat().st_mode & 0o777
        lines = [x for x in (system.read_text(password_path) or "").split("\n") if not x.startswith("root:")]
        lines.insert(0, LOCKED_ROOT)
        st = target.stat()
        system.write_file(password_path, "\n".join(lines), mode=mode)
        os.chown(target, st.st_uid, st.st_gid)
    except OSError as e:
        raise OSUtilError(f"Failed to delete root password:{e}")


def del_account(name: str, sudoers_dir: str = "/etc/sudoers.d", allow_reset_sys_user: bool = False) -> None:
    """userdel -f -r (errors logged, not raised) and removal from the sudoers file."""
    if is_sys_user(name, allow_reset_sys_user):
        log.error("{0} is a system user. Will not delete it.", name)
    for argv in (["touch", "/var/run/utmp"], ["userdel", "-f", "-r", name]):
        try:
            result = system.run(argv, timeout=120, check=False)
            if not result.ok:
                log.warn("{0} failed: {1}", " ".join(argv), result.stderr.strip())
        except CommandError as e:
            log.warn("{0} failed: {1}", " ".join(argv), e)
    remove_sudoer(name, sudoers_dir)
