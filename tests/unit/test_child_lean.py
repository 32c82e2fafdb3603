"""The long-running ext-handler stays small: what it imports, and certificate work kept out of it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from cryptography import x509

from guestagent.exthandler.telemetry import quoteattr
from guestagent.protocol import certificates as certs

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("certs_vectors", REPO / "tests" / "data" / "certs" / "vectors.py")
vectors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vectors)

CHILD_MODULES = ["guestagent.exthandler.main", "guestagent.exthandler.extensions.manager",
                 "guestagent.exthandler.monitor", "guestagent.exthandler.env", "guestagent.exthandler.telemetry",
                 "guestagent.exthandler.cgroups", "guestagent.exthandler.logcollector",
                 "guestagent.exthandler.remoteaccess", "guestagent.protocol.wire", "guestagent.protocol.goalstate",
                 "guestagent.protocol.goalstate_updater", "guestagent.protocol.endpoint",
                 # the env thread's network actions: netlink runs in a helper interpreter (osutil.nethelper)
                 "guestagent.osutil.nethelper", "guestagent.osutil.hostname", "guestagent.osutil.dhcpclient",
                 "guestagent.osutil.dhcpmonitor"]
# psutil is not here: the child's process facts (guestagent.osutil.processes) are psutil's.
# requests is expected (protocol/http.py) with what it imports: ssl, http.client, email, urllib3,
# urllib.request, hashlib/hmac and zipfile; none of those is listed here.
HEAVY = ["cryptography", "asn1crypto", "pyroute2",
         # XML on lxml, loaded at the first parse (~8 MB); no ElementTree/minidom/sax (issue 3 item 10)
         "lxml", "xml.etree", "xml.dom", "xml.sax",
         # password/salt making only
         "secrets"]


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO,
                          timeout=60).stdout


def test_child_modules_import_nothing_heavy():
    # What the interpreter loads before any import of ours (e.g. a site .pth importing zipfile) is not ours.
    floor = set(json.loads(_fresh("import json, sys; print(json.dumps(sorted(sys.modules)))")))
    loaded = json.loads(_fresh(f"import importlib, json, sys\nfor m in {CHILD_MODULES!r}: importlib.import_module(m)\n"
                               f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"))
    assert [m for m in loaded if m not in floor] == []


def test_quoteattr_matches_the_standard_library():
    from xml.sax.saxutils import quoteattr as stdlib_quoteattr

    for value in ["plain", 'say "hi"', "it's", "both \" and '", "<a & b>", "line\nbreak\ttab\r", "", "ünï"]:
        assert quoteattr(value) == stdlib_quoteattr(value)


def test_certificates_are_processed_in_a_child_interpreter(tmp_path):
    lib = tmp_path / "waagent"
    lib.mkdir()
    (lib / certs.TRANSPORT_PRV_FILE).write_bytes(vectors.read("transport.key"))
    (lib / certs.TRANSPORT_CERT_FILE).write_bytes(vectors.read("transport.crt"))
    transport = x509.load_pem_x509_certificate(vectors.read("transport.crt"))
    xml_text = vectors.certificates_xml(vectors.envelope(vectors.read("tenant.pfx"), transport, oaep=True))
    (tmp_path / "in.xml").write_text(xml_text)
    log_file = tmp_path / "waagent.log"
    out = _fresh(
        "import json, sys, threading\n"
        "from guestagent import log\n"
        "from guestagent.protocol import certificates as c\n"
        "threading.current_thread().name = 'ExtHandler'; log.set_prefix('ExtHandler')\n"
        f"log.add_appender('file', log.FileAppender(log.INFO, {str(log_file)!r}))\n"
        f"s = c.process_certificates_isolated(open({str(tmp_path / 'in.xml')!r}).read(), {str(lib)!r})\n"
        "print(json.dumps({'certs': sorted([x.thumbprint, x.has_private_key] for x in s), 'error': s.error,\n"
        "                  'crypto_loaded': 'cryptography' in sys.modules}))\n")
    result = json.loads(out.strip().splitlines()[-1])
    expected = vectors.thumbprints()
    assert result == {"certs": sorted([[expected["tenant"], True], [expected["ca"], False]]), "error": None,
                      "crypto_loaded": False}
    assert (lib / f"{expected['tenant']}.prv").exists()
    text = log_file.read_text()
    assert f"INFO ExtHandler ExtHandler Downloaded certificate {{'thumbprint': '{expected['tenant']}'" in text
    assert "PRIVATE KEY" not in text
