"""JIT users (05 §12): the decisions of guestagent.exthandler.remoteaccess on a tmp root.

The account commands (useradd/chpasswd/userdel) cannot run against a tmp root without changing this host, so
the account operations are a stand-in that edits the tmp root's /etc/passwd; reading the accounts, the sudoers
file and the password decryption (transport certificate + CMS built by the fabric's own crypto) are real.
tests/sandbox/test_jit_users.py runs the same handler with the real commands.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from guestagent import events, log
from guestagent.conf import Config
from guestagent.exthandler.remoteaccess import COMMENT, RemoteAccessHandler, parse_expiration
from guestagent.fabric import crypto
from guestagent.osutil import system, users
from guestagent.protocol.certificates import ensure_transport_cert, transport_cert_header
from guestagent.protocol.goalstate import parse_remote_access
from tests.unit.wiring.accounts import Accounts

LIB = "/var/lib/waagent"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
FUTURE = "Mon, 01 Jan 2029 00:00:00 GMT"
PAST = "Sun, 01 Feb 2026 00:00:00 GMT"
PASSWORD = "JIT-Pa55w0rd-ü"


@pytest.fixture
def env(tmp_root, monkeypatch):
    (tmp_root / "etc").mkdir()
    (tmp_root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\ncarol:x:1000:1000:Carol:/home/carol:/bin/sh\n")
    system.mkdir(LIB)
    ensure_transport_cert(LIB)
    sent: list = []
    monkeypatch.setattr(events, "add_event", lambda op, **kw: sent.append((op, kw)))
    lines = io.StringIO()

    class Capture(log.Appender):
        def write(self, line):
            lines.write(line)

    log.add_appender("jit-test", Capture(log.VERBOSE))
    accounts = Accounts()
    config = Config({"Provisioning.PasswordCryptId": "5", "Provisioning.PasswordCryptSaltLength": "16"})
    handler = RemoteAccessHandler(config, LIB, ops=accounts, clock=lambda: NOW)
    yield SimpleNamespace(root=tmp_root, handler=handler, accounts=accounts, events=sent, log=lines)
    log.remove_appender("jit-test")


def document(*entries) -> object:
    """A RemoteAccess document as the WireServer sends it: passwords as UTF-16 CMS to the transport cert."""
    der = crypto.load_transport_cert(transport_cert_header(LIB))
    parts = []
    for name, expiration, *pw in entries:
        blob = base64.b64encode(crypto.envelope((pw[0] if pw else PASSWORD).encode("utf-16-le"), der)).decode()
        parts.append(f"<User><Name>{name}</Name><Password>{blob}</Password><Expiration>{expiration}</Expiration>"
                     f"<Groups><GroupName>Administrators</GroupName></Groups></User>")
    return parse_remote_access("<RemoteAccess><Version>1</Version><Incarnation>1</Incarnation><Users>"
                               + "".join(parts) + "</Users></RemoteAccess>")


def jit_users() -> set:
    return {u.name for u in users.users() if u.gecos == COMMENT}


def sudoers(root) -> str:
    path = root / "etc/sudoers.d/waagent"
    return path.read_text() if path.exists() else ""


def test_expiration_format():
    assert parse_expiration(FUTURE) == datetime(2029, 1, 1, tzinfo=timezone.utc)
    with pytest.raises(ValueError):
        parse_expiration("2029-01-01")


def test_creates_future_users_only_with_password_expiry_and_sudoers(env):
    env.handler.run(document(("alice", FUTURE), ("bob", PAST)))
    assert jit_users() == {"alice"}
    assert ("useradd", "alice", "2029-01-02", COMMENT) in env.accounts.calls  # expiration + 1 day
    assert env.accounts.passwords == {"alice": PASSWORD}
    assert ("set_password", "alice", "5", 16) in env.accounts.calls
    assert "alice ALL=(ALL) ALL" in sudoers(env.root).splitlines()
    assert not any(c[1] == "bob" for c in env.accounts.calls)
    assert PASSWORD not in env.log.getvalue() and "Adding remote access user 'alice'" in env.log.getvalue()
    # the same document again: nothing to do
    n = len(env.accounts.calls)
    env.handler.run(document(("alice", FUTURE)))
    assert len(env.accounts.calls) == n


def test_expired_and_withdrawn_users_are_deleted_other_accounts_kept(env):
    env.handler.run(document(("alice", FUTURE), ("dave", FUTURE)))
    assert jit_users() == {"alice", "dave"}
    env.handler.clock = lambda: datetime(2029, 1, 1, 0, 0, 1, tzinfo=timezone.utc)  # alice expired
    env.handler.run(document(("alice", FUTURE)))  # dave withdrawn
    assert jit_users() == set()
    assert {c[1] for c in env.accounts.calls if c[0] == "del_account"} == {"alice", "dave"}
    assert users.get_user("carol") is not None and users.get_user("root") is not None
    assert "alice" not in sudoers(env.root) and "dave" not in sudoers(env.root)


def test_no_document_deletes_all_jit_users_once(env, monkeypatch):
    env.handler.run(document(("alice", FUTURE), ("dave", FUTURE)))
    env.handler.run(None)
    assert jit_users() == set() and users.get_user("carol") is not None
    assert not env.handler.check_existing
    enumerations = []
    monkeypatch.setattr(env.accounts, "users", lambda: enumerations.append(1) or users.users())
    env.handler.run(None)  # already cleaned: the accounts are not even listed
    assert enumerations == []
    env.handler.run(document())  # a document (even empty) arms the clean-up again
    env.handler.run(None)
    assert enumerations


def test_existing_non_jit_account_is_left_alone(env):
    env.handler.run(document(("carol", FUTURE)))
    assert users.get_user("carol").gecos == "Carol"
    assert not any(c[0] in ("set_password", "conf_sudoer", "del_account") for c in env.accounts.calls)
    assert env.handler.errors and "left unchanged" in env.handler.errors[0]
    assert env.events and env.events[0][0] == "RemoteAccessHandling" and env.events[0][1]["is_success"] is False


def test_a_failed_password_removes_the_new_user_again(env):
    env.accounts.fail_password = True
    env.handler.run(document(("alice", FUTURE), ("erin", "not a date")))
    assert jit_users() == set()
    assert ("del_account", "alice") in env.accounts.calls
    assert len(env.handler.errors) == 2 and any("erin" in e for e in env.handler.errors)
    assert "alice" not in sudoers(env.root)


def test_undecryptable_password_removes_the_user(env):
    doc = document(("alice", FUTURE))
    doc.users[0].encrypted_password = base64.b64encode(b"garbage").decode()
    env.handler.run(doc)
    assert jit_users() == set() and ("del_account", "alice") in env.accounts.calls


def test_runs_only_on_a_new_incarnation(env):
    gs = SimpleNamespace(incarnation="3", remote_access=document(("alice", FUTURE)))
    assert env.handler.on_goal_state(gs) and jit_users() == {"alice"}
    env.accounts.del_account("alice")
    assert not env.handler.on_goal_state(gs)  # same incarnation: not processed again
    assert jit_users() == set()
    gs.incarnation = "4"
    assert env.handler.on_goal_state(gs) and jit_users() == {"alice"}
    assert not env.handler.on_goal_state(None)


def test_a_remote_access_user_name_useradd_would_misread_is_refused(env):
    """Issue 13: the RemoteAccess document's names are fabric data, checked as the provisioned user's."""
    env.handler.run(document(("../x", FUTURE), ("root", FUTURE), ("alice", FUTURE)))
    assert jit_users() == {"alice"}
    assert not any(c[1] in ("../x", "root") for c in env.accounts.calls)
    assert len(env.handler.errors) == 2 and "invalid user name '../x'" in env.handler.errors[0]
    assert "invalid user name '../x'" in env.log.getvalue()
    assert [e[1]["is_success"] for e in env.events if e[0] == "RemoteAccessHandling"][:2] == [False, False]
