"""Account operations on the tmp root's /etc/passwd: the stand-in for useradd/chpasswd/userdel, which would
change this host outside a sandbox. The sudoers file goes through the real osutil code."""

from __future__ import annotations

from guestagent.osutil import system, users


class Accounts:
    """useradd/set_password/del_account on the tmp root's /etc/passwd; sudoers via the real osutil code."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.passwords: dict[str, str] = {}
        self.fail_password = False

    users = staticmethod(users.users)

    def _lines(self) -> list[str]:
        return (system.read_text("/etc/passwd", default="") or "").splitlines()

    def useradd(self, name, expiration=None, comment=None):
        self.calls.append(("useradd", name, expiration, comment))
        if users.get_user(name) is not None:
            return False
        uid = 1000 + len(self._lines())
        system.write_file("/etc/passwd", "\n".join([*self._lines(), f"{name}:x:{uid}:{uid}:{comment or ''}:"
                                                                  f"/home/{name}:/bin/sh"]) + "\n")
        return True

    def set_password(self, name, password, crypt_id="6", salt_len=10):
        self.calls.append(("set_password", name, crypt_id, salt_len))
        if self.fail_password:
            raise RuntimeError("chpasswd failed")
        self.passwords[name] = password

    def conf_sudoer(self, name, nopasswd=False, sudoers_dir="/etc/sudoers.d"):
        self.calls.append(("conf_sudoer", name))
        users.conf_sudoer(name, nopasswd, sudoers_dir)

    def del_account(self, name, sudoers_dir="/etc/sudoers.d"):
        self.calls.append(("del_account", name))
        system.write_file("/etc/passwd", "\n".join(x for x in self._lines() if not x.startswith(name + ":")) + "\n")
        users.remove_sudoer(name, sudoers_dir)
