"""What the ext-handler child has loaded once it runs: a fresh interpreter builds the child as
``run_exthandlers`` does, runs real loop iterations against the fabric emulator over loopback (goal
state, certificates through their helper interpreter, vmSettings, status upload) and reports
``sys.modules``. The import-only check is tests/unit/test_child_lean.py; this one also sees what the
first goal states import lazily. Memory figures: docs/benchmarks.md (bench ``--only memory``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from guestagent.fabric.scenario import Scenario, Step
from guestagent.fabric.server import Fabric
from guestagent.protocol.certificates import ensure_transport_cert

REPO = Path(__file__).resolve().parents[2]

#: Modules the idle child must not hold, with what each would cost (VmRSS, Debian's python3.11).
ABSENT = {
    "xml.etree": "1.5 MB with its dependencies: lxml parses into guestagent.protocol.xml.Element",
    "xml.dom": "never used: ovf-env.xml is read through lxml too",
    "pyexpat": "XML goes through lxml (libxml2)",
    "xml.sax": "telemetry quotes attributes itself",
    "secrets": "imported where a password or salt is made",
    "cryptography": "6.7 MB with asn1crypto: certificates are decrypted in a helper interpreter",
    "asn1crypto": "see cryptography",
    "pyroute2": "~24 MB: the daemon before Ready; the child's network actions run in a helper interpreter",
}
#: The HTTP stack the child talks to the fabric with (protocol/http.py on requests), and what requests
#: itself imports: ssl, http.client, email, urllib.request, hashlib/hmac (auth, urllib3), zipfile (utils).
HTTP_STACK = {"requests", "urllib3", "ssl", "http.client", "email", "urllib.request", "hashlib", "hmac", "zipfile"}

CHILD = r"""
import json, sys
from types import SimpleNamespace

import guestagent.protocol.wire
from guestagent import conf
from guestagent.exthandler import main as child_main
from guestagent.exthandler.extensions.manager import ExtensionsManager
from guestagent.protocol.wire import WireProtocol

lib, log_root, wire, hgap = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
guestagent.protocol.wire._direct_is_primary = True
config = conf.parse(f"Lib.Dir={lib}\nExtensions.GoalStatePeriod=1\n")
child = child_main.ExtHandler(SimpleNamespace(debug=False), config)
child.protocol = WireProtocol("127.0.0.1", lib, config, wire_port=wire, hgap_port=hgap, sleep=lambda s: None)
child.extensions = ExtensionsManager(config, child.protocol, log_root=log_root, event=lambda *a, **k: None)
child.protocol.update_goal_state()
for _ in range(3):
    child.iterate()
print(json.dumps(sorted(sys.modules)))
"""


def _modules(code: str, *args: str) -> set:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def idle_child_modules(tmp_path_factory) -> set:
    tmp = tmp_path_factory.mktemp("child")
    lib = tmp / "lib"
    lib.mkdir()
    ensure_transport_cert(str(lib))   # here, so that the child's interpreter needs no cryptography for it
    with Fabric(Scenario(steps=[Step(incarnation="1")]), state_dir=tmp / "fabric") as fab:
        modules = _modules(CHILD, str(lib), str(tmp / "log"), str(fab.wire_port), str(fab.hgap_port))
        assert fab.status_uploads, "the child never uploaded a status: the loop did not run"
    floor = _modules("import json, sys; print(json.dumps(sorted(sys.modules)))")
    return modules - floor


def test_the_idle_child_holds_none_of_the_heavy_modules(idle_child_modules):
    present = {m: why for m, why in ABSENT.items() if m in idle_child_modules}
    assert present == {}


def test_the_idle_child_parses_xml_with_lxml_and_runs_the_protocol(idle_child_modules):
    # The check above must not pass because nothing ran: the parser and the protocol client are there,
    # and psutil (process facts: the monitor's memory poll, the cgroup process check, handler timeouts).
    assert {"lxml.etree", "psutil", "guestagent.protocol.xml", "guestagent.protocol.goalstate",
            "guestagent.protocol.goalstate_updater", "guestagent.protocol.http",
            "guestagent.exthandler.main"} <= idle_child_modules


def test_the_idle_child_speaks_http_with_requests(idle_child_modules):
    assert HTTP_STACK <= idle_child_modules


def test_os_release_is_parsed_once_and_again_when_the_file_changes(tmp_root, monkeypatch):
    """The status asks for the distribution every period; the file is parsed again only after a change."""
    import os

    from guestagent.osutil import osrelease, system

    (tmp_root / "etc").mkdir()
    release = tmp_root / "etc" / "os-release"
    release.write_text('ID=debian\nVERSION_ID="12"\nVERSION_CODENAME=bookworm\n')
    reads = []
    real_read = osrelease._read
    monkeypatch.setattr(osrelease, "_read", lambda: reads.append(1) or real_read())
    assert osrelease.distro() == ("debian", "12", "bookworm")
    osrelease.os_release()["ID"] = "mutated"            # callers get copies
    assert osrelease.distro() == ("debian", "12", "bookworm") and len(reads) == 1
    release.write_text('ID=ubuntu\nVERSION_ID="24.04"\n')
    os.utime(release, ns=(1, 1))                        # even a change within one mtime tick is a new stamp
    assert osrelease.distro() == ("ubuntu", "24.04", "") and len(reads) == 2
    release.unlink()
    (tmp_root / "usr" / "lib").mkdir(parents=True)
    (tmp_root / "usr" / "lib" / "os-release").write_text("ID=rhel\nVERSION_ID=9.4\n")
    assert osrelease.distro() == ("rhel", "9.4", "")
    other = tmp_root / "other"
    (other / "etc").mkdir(parents=True)
    (other / "etc" / "os-release").write_text("ID=ol\n")
    system.set_root(other)                              # another root is another file
    assert osrelease.distro() == ("ol", "", "")
