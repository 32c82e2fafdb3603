"""JIT users (05 §12) with the real useradd/chpasswd/userdel inside a throwaway namespace sandbox.

The RemoteAccess document is built as the WireServer sends it (passwords UTF-16, CMS-encrypted to the agent's
transport certificate by the fabric's own crypto); the handler decrypts, creates, expires and deletes accounts.
"""

from __future__ import annotations

import json
import re
import stat
from datetime import date

import pytest

pytestmark = pytest.mark.sandbox

PASSWORDS = {"alice": "Jit-Alice-Pa55!", "bob": "Jit-Bob-Pa55!", "carol": "Not-Hers-Pa55!", "dave": "Jit-Dave-Pa55!"}

DRIVER = r"""
import base64, json, os
from datetime import datetime, timezone
from guestagent import conf, log
from guestagent.exthandler.remoteaccess import RemoteAccessHandler
from guestagent.fabric import crypto
from guestagent.osutil import users
from guestagent.protocol.certificates import ensure_transport_cert, transport_cert_header
from guestagent.protocol.goalstate import parse_remote_access

log.setup(log_file="/var/log/waagent.log")
LIB = "/var/lib/waagent"
PASSWORDS = json.loads(os.environ["JIT_PASSWORDS"])
FUTURE, EARLY = "Mon, 01 Jan 2029 00:00:00 GMT", "Wed, 01 Jul 2026 00:00:00 GMT"
os.makedirs(LIB, exist_ok=True)
ensure_transport_cert(LIB)
der = crypto.load_transport_cert(transport_cert_header(LIB))


def doc(*users_):
    parts = "".join(
        f"<User><Name>{n}</Name><Password>{base64.b64encode(crypto.envelope(PASSWORDS[n].encode('utf-16-le'), der)).decode()}"
        f"</Password><Expiration>{e}</Expiration><Groups><GroupName>Administrators</GroupName></Groups></User>"
        for n, e in users_)
    return parse_remote_access(f"<RemoteAccess><Version>1</Version><Users>{parts}</Users></RemoteAccess>")


def snapshot():
    passwd = [line.split(":") for line in open("/etc/passwd").read().splitlines()]
    shadow = {p[0]: p for p in (line.split(":") for line in open("/etc/shadow").read().splitlines())}
    sudoers = open("/etc/sudoers.d/waagent").read() if os.path.exists("/etc/sudoers.d/waagent") else ""
    return {"users": {p[0]: {"gecos": p[4], "home": p[5], "home_exists": os.path.isdir(p[5]),
                             "hash": shadow.get(p[0], ["", ""])[1],
                             "expire": shadow.get(p[0], [""] * 9)[7]} for p in passwd if p[0] in PASSWORDS},
            "sudoers": sudoers}


now = [datetime(2026, 3, 1, tzinfo=timezone.utc)]
handler = RemoteAccessHandler(conf.parse("Provisioning.PasswordCryptId=6\nProvisioning.PasswordCryptSaltLength=10\n"),
                              LIB, clock=lambda: now[0])
users.useradd("carol", comment="Carol")  # an ordinary account
out = {}
handler.run(doc(("alice", EARLY), ("bob", FUTURE)))
out["created"] = snapshot()
now[0] = datetime(2026, 7, 1, 0, 0, 1, tzinfo=timezone.utc)
handler.run(doc(("alice", EARLY), ("bob", FUTURE)))
out["expired"] = snapshot()
handler.run(doc(("carol", FUTURE)))
out["withdrawn"] = snapshot()
out["withdrawn_errors"] = handler.errors
handler.run(doc(("dave", FUTURE)))
handler.run(None)
out["none"] = snapshot()
out["check_existing"] = handler.check_existing
out["log"] = open("/var/log/waagent.log").read()
print("RESULT " + json.dumps(out))
"""


def _verify(sb, hashed: str, password: str) -> None:
    m = re.fullmatch(r"\$6\$([A-Za-z0-9./]{10})\$[./A-Za-z0-9]+", hashed)
    assert m, hashed
    again = sb.run(["openssl", "passwd", "-6", "-salt", m.group(1), "-stdin"], input=password + "\n")
    assert again.stdout.strip() == hashed


def test_jit_users_created_expired_withdrawn_and_cleared(sandbox):
    sb = sandbox
    res = sb.python(DRIVER, env={"JIT_PASSWORDS": json.dumps(PASSWORDS)}, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    out = json.loads(res.stdout.split("RESULT ", 1)[1])

    created = out["created"]["users"]
    assert set(created) == {"alice", "bob", "carol"}
    for name, expiry in (("alice", date(2026, 7, 2)), ("bob", date(2029, 1, 2))):  # expiration + 1 day
        user = created[name]
        assert user["gecos"] == "JIT_Account" and user["home"] == f"/home/{name}" and user["home_exists"]
        assert int(user["expire"]) == (expiry - date(1970, 1, 1)).days
        _verify(sb, user["hash"], PASSWORDS[name])
        assert f"{name} ALL=(ALL) ALL" in out["created"]["sudoers"].splitlines()

    assert set(out["expired"]["users"]) == {"bob", "carol"}  # alice expired: account and home gone
    assert "alice" not in out["expired"]["sudoers"]

    withdrawn = out["withdrawn"]["users"]
    assert set(withdrawn) == {"carol"} and withdrawn["carol"]["gecos"] == "Carol"  # bob withdrawn
    assert withdrawn["carol"]["hash"] in ("!", "!!", "*", "")  # carol's account untouched: no password set
    assert "carol" not in out["withdrawn"]["sudoers"] and "left unchanged" in out["withdrawn_errors"][0]

    assert set(out["none"]["users"]) == {"carol"} and out["check_existing"] is False  # dave cleared
    assert not sb.host_path("/home/dave").exists() and not sb.host_path("/home/bob").exists()
    sudoers = sb.host_path("/etc/sudoers.d/waagent")
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    assert not any(p in out["log"] for p in PASSWORDS.values())
    assert "Adding remote access user 'alice' with expiration date 2026-07-02" in out["log"]
