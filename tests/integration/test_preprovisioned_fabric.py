"""A pool over loopback: the fabric's reprovisiondata answers 404 until the VM is claimed, the agent's
IMDS client polls it with cloud-init's policy, and the pool's re-provisioning step checks and saves the
customer's document (redacted)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from guestagent.errors import ProvisionError
from guestagent.fabric.scenario import load_scenario
from guestagent.fabric.server import Fabric
from guestagent.protocol import imds
from guestagent.provisioning import preprovisioned as pps


@pytest.fixture
def fab(fabrics):
    return fabrics(load_scenario("pps-running"))


def _client(fab: Fabric) -> imds.ImdsClient:
    return imds.ImdsClient(endpoint=fab.imds_host, port=fab.imds_port)


def _post(url: str) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_reprovisiondata_is_404_until_claimed_then_the_customers_document(fab):
    client = _client(fab)
    with pytest.raises(imds.ReprovisionTimeout, match=r"after \d+ attempt\(s\) \(last: Status Code 404\)"):
        imds.fetch_reprovision_data(client, client.clock() + 1.5, sleep=lambda s: None)
    assert _post(f"{fab.base_url}/fabric/claim") == 200
    text = imds.fetch_reprovision_data(client, client.clock() + 5)
    assert "<HostName>customer-vm</HostName>" in text and "PreprovisionedVm>false<" in text
    assert _post(f"{fab.base_url}/fabric/claim") == 409  # a second claim changes nothing
    reqs = [r for r in fab.requests if r.get("kind") == "imds"]
    assert reqs and all(r["path"].startswith("/metadata/reprovisiondata") for r in reqs)


def test_reprovision_saves_the_customers_document_redacted(fab, tmp_root):
    fab.claim()
    lib = tmp_root / "var/lib/waagent"
    lib.mkdir(parents=True)
    (lib / "ovf-env.xml").write_text("placeholder")
    pool = pps.Pool(str(lib), lambda: None, 10, imds_client=_client(fab))
    ovf, _text = pool._reprovision()
    assert ovf.hostname == "customer-vm" and ovf.user_password == "Customer-Passw0rd!"
    saved = (lib / "ovf-env.xml").read_text()
    assert "customer-vm" in saved and "Customer-Passw0rd!" not in saved and "<UserPassword>*</UserPassword>" in saved


@pytest.mark.parametrize("body, reason", [
    ("<html>not xml", "not a valid ovf-env.xml"),
    (None, "a pre-provisioning document again"),
])
def test_reprovision_refuses_a_bad_document(fab, tmp_root, body, reason):
    fab.scenario.pps.body = body
    if body is None:
        fab.scenario.pps.customer.preprovisioned_vm = True
    fab.claim()
    pool = pps.Pool(str(tmp_root), lambda: None, 10, imds_client=_client(fab))
    with pytest.raises(ProvisionError, match=reason):
        pool._reprovision()
    assert not (tmp_root / "ovf-env.xml").exists()
