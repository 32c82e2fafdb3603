"""Provisioning.Agent=disabled against the fabric emulator over loopback: the daemon's detection asks
for versions and the goal-state document only, reports Ready without importing cryptography or
asn1crypto, then makes the transport certificate; the ext-handler child's first goal state fetches
and decrypts the certificates with it. The daemon part runs in a fresh interpreter so its
``sys.modules`` is its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from guestagent.conf import Config
from guestagent.protocol.wire import from_files

REPO = Path(__file__).resolve().parents[2]
LIB = "/var/lib/waagent"
DAEMON = textwrap.dedent("""
    import json, sys, time
    t0 = time.monotonic()
    from guestagent import conf
    from guestagent.protocol.wire import detect
    from guestagent.provisioning.handler import provision

    def on_loopback(c, lib, **kw):
        return detect(c, lib, endpoint_ip="127.0.0.1", sleep=lambda s: None, **kw)

    protocol = provision(conf.parse(sys.argv[1]), detect=on_loopback)
    crypto = lambda: sorted({m.split(".")[0] for m in sys.modules} & {"cryptography", "asn1crypto"})
    out = {"ready_s": time.monotonic() - t0, "crypto_at_ready": crypto(), "pending": protocol.transport_cert_pending,
           "modules_at_ready": sorted(sys.modules)}
    protocol.finish_detection()
    out.update(crypto_after=crypto(), pending_after=protocol.transport_cert_pending)
    print(json.dumps(out))
""")


def run_daemon_part(tmp_root: Path, fab, conf_text: str) -> dict:
    (tmp_root / "sys/class/dmi/id").mkdir(parents=True, exist_ok=True)
    (tmp_root / "sys/class/dmi/id/product_uuid").write_text("544CDFD0-CB4E-4B4A-9954-5BDF3ED5C3B8\n")
    (tmp_root / LIB.lstrip("/")).mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO), GUESTAGENT_ROOT=str(tmp_root),
               GUESTAGENT_WIRE_PORT=str(fab.wire_port), GUESTAGENT_HGAP_PORT=str(fab.hgap_port))
    res = subprocess.run([sys.executable, "-c", DAEMON, conf_text], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_disabled_provisioning_reports_ready_without_certificates_and_the_child_gets_them(tmp_root, fab):
    out = run_daemon_part(tmp_root, fab, "Provisioning.Agent=disabled\n")
    print(f"detection + Ready in {out['ready_s']:.3f} s (imports included)")
    assert out["crypto_at_ready"] == [] and out["pending"] is True
    assert out["pending_after"] is False  # finish_detection made the pair (cryptography imported only then)
    kinds = [r["kind"] for r in fab.requests]
    assert kinds == ["versions", "goalstate", "health"], kinds  # no Certificates, no vmSettings, no configs
    assert fab.health_reports[-1]["state"] == "Ready"
    lib = tmp_root / LIB.lstrip("/")
    assert (lib / "TransportPrivate.pem").stat().st_mode & 0o777 == 0o600
    assert (lib / "TransportCert.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (lib / "provisioned").exists() and (lib / "WireServerEndpoint").read_text() == "127.0.0.1"
    assert not list(lib.glob("*.prv")) and not list(lib.glob("*.crt"))
    # the ext-handler child: protocol from the files, whole goal state, certificates decrypted
    child = from_files(Config(), LIB, wire_port=fab.wire_port, hgap_port=fab.hgap_port)
    gs = child.update_goal_state()
    cert_requests = [r for r in fab.requests if r["kind"] == "certificates"]
    assert cert_requests and cert_requests[0]["status"] == 200
    assert gs.certs and all((lib / f"{c.thumbprint}.crt").exists() for c in gs.certs)
    assert all((lib / f"{c.thumbprint}.prv").stat().st_mode & 0o777 == 0o600 for c in gs.certs if c.has_private_key)


#: What a start that provisions nothing must not load before Ready: the provisioning steps, the ovf-env.xml
#: model, the pre-provisioned pool (and pyroute2 with it), deprovision's clean-up, users and SSH.
PROVISIONING_MODULES = {"guestagent.provisioning.provision", "guestagent.provisioning.preprovisioned",
                        "guestagent.provisioning.dvd", "guestagent.provisioning.ovfenv",
                        "guestagent.provisioning.deprovision", "guestagent.osutil.users", "guestagent.osutil.ssh",
                        "guestagent.osutil.network", "pyroute2"}


@pytest.mark.parametrize("agent", ["disabled", "waagent"])
def test_a_start_that_provisions_nothing_loads_no_provisioning_module_before_ready(tmp_root, fab, agent):
    """Provisioning.Agent=disabled (Ready reported), and a VM already provisioned (the marker holds this VM's
    id: the daemon only detects the protocol; the ext-handler reports Ready)."""
    (tmp_root / LIB.lstrip("/")).mkdir(parents=True, exist_ok=True)
    (tmp_root / LIB.lstrip("/") / "provisioned").write_text("544CDFD0-CB4E-4B4A-9954-5BDF3ED5C3B8")
    out = run_daemon_part(tmp_root, fab, f"Provisioning.Agent={agent}\n")
    assert [h["state"] for h in fab.health_reports] == (["Ready"] if agent == "disabled" else [])
    assert "goalstate" in [r["kind"] for r in fab.requests]
    assert PROVISIONING_MODULES.isdisjoint(out["modules_at_ready"]), \
        sorted(PROVISIONING_MODULES.intersection(out["modules_at_ready"]))


def test_provisioning_that_needs_certificates_still_detects_with_them(tmp_root, fab):
    """The health report paths of a flow that sets ``certificates`` use the full detection (unchanged)."""
    from guestagent.protocol.wire import detect

    proto = detect(Config(), LIB, endpoint_ip="127.0.0.1", wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                   sleep=lambda s: None, certificates=True)
    assert proto.transport_cert_pending is False
    assert "certificates" in [r["kind"] for r in fab.requests]
    assert proto.goal_state.certs
