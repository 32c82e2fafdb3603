"""The VM tier: each test boots a fresh copy-on-write overlay of the cached Debian image with the agent
installed from this run's .deb, behind its own fabric. Marker ``vm``.

GUESTAGENT_VM=require  a missing QEMU/root is an error (CI: .ci/run sets it), not a skip
GUESTAGENT_VM=skip     skip the tier
GUESTAGENT_VM_CPUS     vCPUs per VM (default 2: tests run one VM at a time)
GUESTAGENT_VM_KEEP=1   keep every VM's work folder (default: only failed ones)
GUESTAGENT_VM_WORK     where work folders go (default /var/tmp/guestagent-vm-runs)
GUESTAGENT_VM_AGENT_LAYER  use this agent layer (qcow2) instead of building one for the current sources
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vmtier import image
from vmtier.platform import AzureVM

MODE = os.environ.get("GUESTAGENT_VM", "auto")
WORK = Path(os.environ.get("GUESTAGENT_VM_WORK", "/var/tmp/guestagent-vm-runs"))
CPUS = int(os.environ.get("GUESTAGENT_VM_CPUS", "2"))


def _unavailable() -> str:
    if os.geteuid() != 0:
        return "the VM tier needs root (debootstrap, chroot)"
    missing = [t for t in ("qemu-system-x86_64", "qemu-img", "debootstrap", "genisoimage", "mkfs.ntfs", "socat",
                           "ssh") if not shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]
    if missing:
        return f"the VM tier needs {', '.join(missing)} (scripts/ci-vm-deps.sh installs them)"
    return ""


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).resolve().parent
    for item in items:
        if Path(str(item.fspath)).resolve().parent == here:
            item.add_marker(pytest.mark.vm)
            # a VM test waits on a booting guest (the first one also on the image build)
            item.add_marker(pytest.mark.timeout(1800))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _timing(entry: dict) -> None:
    """One JSON line per VM in <work>/timings.jsonl: the tier's figures, also under pytest-xdist."""
    import json

    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / "timings.jsonl", "a") as f:
        f.write(json.dumps(dict(entry, at=time.strftime("%Y-%m-%dT%H:%M:%S"))) + "\n")


@pytest.fixture(scope="session")
def vm_images():
    """(base image folder, agent layer qcow2): built or reused once per session."""
    if MODE == "skip":
        pytest.skip("GUESTAGENT_VM=skip")
    why = _unavailable()
    if why:
        if MODE == "require":
            pytest.fail(f"VM tier required (GUESTAGENT_VM=require) but unavailable: {why}")
        pytest.skip(why)
    t0 = time.monotonic()
    base = image.base_image()
    # scripts/vm/test-tier builds the agent layer once and passes it to every pytest-xdist worker,
    # so all workers test the same package even while the sources change under them
    given = os.environ.get("GUESTAGENT_VM_AGENT_LAYER")
    agent = Path(given) if given else image.agent_image(base)
    image.log(f"images ready in {time.monotonic() - t0:.0f}s: {base.name}, {agent.name}")
    return base, agent


@pytest.fixture
def azure_vm(request, vm_images):
    """Factory: ``azure_vm(scenario=None, conf=None, images=None)`` → a not yet started AzureVM; call
    ``.start()``. ``images`` = (base, layer) boots another layer (``image.package_layer`` + ``agent_image``).
    At teardown the guest's logs are collected and it is powered off; on failure the console, the
    agent log and the fabric's request log are printed and the work folder is kept."""
    vms = []

    def make(**kw) -> AzureVM:
        name = f"{request.node.name[:48]}-{len(vms)}".replace("[", "-").replace("]", "").replace(",", "_")
        work = WORK / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
        shutil.rmtree(work, ignore_errors=True)
        vm = AzureVM(work, kw.pop("images", vm_images), cpus=kw.pop("cpus", CPUS), **kw)
        vms.append(vm)
        return vm

    t0 = time.monotonic()
    yield make
    rep = getattr(request.node, "rep_call", None)
    failed = rep is None or rep.failed
    for vm in vms:
        m = vm.machine
        _timing({"test": request.node.name, "passed": not failed, "wall": round(time.monotonic() - t0, 1),
                 "boots": m.boots if m else 0, "cpus": vm.cpus,
                 "guest_boot": round(getattr(m, "boot_seconds", 0) or 0, 1),
                 "ready": round(vm.ready_seconds, 1) if vm.ready_seconds else None,
                 **({"claim_to_ready": round(vm.claim_to_ready, 1)} if vm.claim_to_ready else {})})
        report = vm.close(failed)
        if failed:
            print(f"\n===== VM {vm.work.name} =====\n{report}", file=sys.stderr)
        elif os.environ.get("GUESTAGENT_VM_KEEP") != "1":
            vm.remove()
