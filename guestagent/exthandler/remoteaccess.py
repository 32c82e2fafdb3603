"""JIT users (spec 05 §12, 01 §8): the accounts the RemoteAccess document asks for, kept in step with it.

On every new incarnation, after status reporting (06 §6.1 step 6): users in the document that are not on the
VM and not expired are created (``useradd -m -e <expiry + 1 day> -c JIT_Account``, password, sudoers line);
JIT users (comment ``JIT_Account``) that expired or are no longer in the document are deleted; when the goal
state has no RemoteAccessInfo every JIT user is deleted, once (again until a run had no errors).

Safer than upstream: a document user whose name belongs to an existing account that is *not* a JIT account is
left alone (upstream sets that account's password and sudoers line, and deletes it if that fails).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Optional

from guestagent import events, log
from guestagent.conf import Config
from guestagent.osutil import users
from guestagent.protocol.certificates import decrypt_jit_password
from guestagent.protocol.goalstate import GoalState, RemoteAccess

COMMENT = "JIT_Account"
EXPIRATION_FORMAT = "%a, %d %b %Y %H:%M:%S %Z"
DATE_FORMAT = "%Y-%m-%d"


def parse_expiration(text: str) -> datetime:
    """``Mon, 01 Jan 2029 00:00:00 GMT`` → an aware UTC datetime (ValueError when malformed)."""
    return datetime.strptime(text.strip(), EXPIRATION_FORMAT).replace(tzinfo=timezone.utc)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RemoteAccessHandler:
    """One per ext-handler process. ``ops``: the user-account operations (``guestagent.osutil.users``);
    ``decrypt(b64, lib_dir)``: the password decryption (``certificates.decrypt_jit_password``)."""

    def __init__(self, config: Config, lib_dir: str, *, ops: Any = None, decrypt: Optional[Callable] = None,
                 clock: Callable[[], datetime] = _utcnow, sudoers_dir: str = "/etc/sudoers.d"):
        self.config = config
        self.lib_dir = lib_dir
        self.ops = users if ops is None else ops
        self.decrypt = decrypt_jit_password if decrypt is None else decrypt
        self.clock = clock
        self.sudoers_dir = sudoers_dir
        self.check_existing = True
        self.last_incarnation: Optional[str] = None
        self.errors: list[str] = []


    # -- entry points ------------------------------------------------------------------------------
    def on_goal_state(self, goal_state: Optional[GoalState]) -> bool:
        """Process the goal state's RemoteAccess document if its incarnation is new; never raises.
        Returns whether it was processed."""
        if goal_state is None:
            return False
        if goal_state.incarnation == self.last_incarnation:
            return False
        self.last_incarnation = goal_state.incarnation
        self.run(goal_state.remote_access)
        return True

    def run(self, remote_access: Optional[RemoteAccess]) -> None:
        self.errors = []
        try:
            if remote_access is not None:
                self._apply(remote_access.users)
            elif self.check_existing:
                self._remove_all()
        except Exception as e:
            self._error(f"Exception processing goal state for remote access users: {type(e).__name__}: {e}")

    # -- decisions ----------------------------------------------------------------------------------
    def existing_jit_users(self) -> set[str]:
        return {u.name for u in self.ops.users() if u.gecos == COMMENT}

    def _apply(self, wanted: list) -> None:
        log.info("Processing remote access users in goal state.")
        self.check_existing = True
        existing = self.existing_jit_users()
        now = self.clock()
        for user in wanted:
            try:
                expiration = parse_expiration(user.expiration)
                if user.name not in existing and now < expiration:
                    self._add(user, expiration)
                elif user.name in existing and now > expiration:
                    log.info("Remote access user '{0}' expired.", user.name)
                    self._remove(user.name)
            except Exception as e:
                self._error(f"Error processing remote access user '{user.name}' - {e}")
        names = {u.name for u in wanted}
        for name in sorted(existing - names):
            try:
                self._remove(name)
            except Exception as e:
                self._error(f"Error removing remote access user '{name}' - {e}")

    def _remove_all(self) -> None:
        log.info("Looking for existing remote access users.")
        failed = False
        for name in sorted(self.existing_jit_users()):
            try:
                self._remove(name)
            except Exception as e:
                failed = True
                self._error(f"Error removing remote access user '{name}' - {e}")
        if not failed:
            self.check_existing = False

    # -- actions ---------------------------------------------------------------------------------------
    def _add(self, user: Any, expiration: datetime) -> None:
        expiry = (expiration + timedelta(days=1)).strftime(DATE_FORMAT)
        why = users.username_error(user.name)
        if why is not None:
            raise RuntimeError(f"invalid user name {user.name!r}: {why}")
        log.info("Adding remote access user '{0}' with expiration date {1}", user.name, expiry)
        if not self.ops.useradd(user.name, expiry, COMMENT):
            raise RuntimeError(f"an account named '{user.name}' exists and is not a remote access account; "
                               f"it is left unchanged")
        try:
            log.info("Adding remote access user '{0}' to sudoers", user.name)
            password = self.decrypt(user.encrypted_password, self.lib_dir)
            log.register_secret(password)
            self.ops.set_password(user.name, password, self.config.provisioning_password_crypt_id,
                                  self.config.provisioning_password_crypt_salt_length)
            self.ops.conf_sudoer(user.name, sudoers_dir=self.sudoers_dir)
        except Exception:
            self._remove(user.name)
            raise

    def _remove(self, name: str) -> None:
        log.info("Removing remote access user '{0}'", name)
        self.ops.del_account(name, sudoers_dir=self.sudoers_dir)

    def _error(self, message: str) -> None:
        text = log.redact(message)
        self.errors.append(text)
        log.error("{0}", text)
        events.add_event(events.WALAEventOperation.RemoteAccessHandling, is_success=False, message=text,
                         log_event=False, lib_dir=self.lib_dir)
