"""Pre-provisioned VMs (PPS): the pool wait and re-provisioning for the customer (an extension: 2.15
only parses the two ovf-env fields; the facts are cloud-init's Azure datasource's).

A pooled VM boots with a placeholder ovf-env, reports Ready and waits; when a customer claims it the
platform moves its network — a media disconnect/connect (Running) or a NIC hot-unplug and hot-attach
(Savable) — and the VM fetches the customer's ovf-env from IMDS ``reprovisiondata``, which then takes
the placeholder's place. PreprovisionedOSDisk VMs report Ready and wait to be shut down. A VM that
restarts in the pool (the reported-ready marker exists) is Unknown: it polls without reporting again.
"""

from __future__ import annotations

import os
import time
from enum import Enum
from typing import Callable, Optional

from guestagent import events, log
from guestagent.errors import AgentError, HttpError, NetworkError, ProtocolError, ProvisionError
from guestagent.osutil import network, system
from guestagent.protocol import imds
from guestagent.provisioning.dvd import OVF_FILE_NAME
from guestagent.provisioning.ovfenv import OvfEnv, parse_ovf_env, redact_password

#: Written once the pool's Ready went out; a restart that finds it does not report Ready again.
REPORTED_READY = "reported_ready"
#: How often a long wait says it is still waiting.
STATUS_PERIOD = 600.0
#: While NICs are hot-attached, how often the agent looks for the one with the default route.
ATTACH_POLL = 0.1
OPERATION = "PreProvisioning"


class PpsType(Enum):
    NONE = "None"
    RUNNING = "Running"
    SAVABLE = "Savable"
    OS_DISK = "PreprovisionedOSDisk"
    UNKNOWN = "Unknown"


class PoolTimeout(ProvisionError):
    """The claim did not come within Debug.PreprovisionedPoolTimeout: the VM stays in the pool."""


def marker_path(lib_dir: str) -> str:
    return os.path.join(lib_dir, REPORTED_READY)


def pps_type(ovf: OvfEnv, lib_dir: str, imds_pps_type: Optional[str] = None) -> PpsType:
    """cloud-init's order: the marker (Unknown), then Savable, OS disk, Running from ovf-env's
    PreprovisionedVMType or IMDS's ppsType; PreprovisionedVm=true alone means Running."""
    if system.path(marker_path(lib_dir)).is_file():
        return PpsType.UNKNOWN
    declared = (ovf.preprovisioned_vm_type, imds_pps_type)
    for kind in (PpsType.SAVABLE, PpsType.OS_DISK):
        if kind.value in declared:
            return kind
    if ovf.preprovisioned_vm or PpsType.RUNNING.value in declared:
        return PpsType.RUNNING
    return PpsType.NONE


def save_ovf_env(lib_dir: str, text: str) -> None:
    """The customer's document replaces the placeholder on disk (0600, passwords redacted)."""
    system.write_file(os.path.join(lib_dir, OVF_FILE_NAME), redact_password(text), mode=0o600)


def clear_marker(lib_dir: str) -> None:
    system.remove(marker_path(lib_dir))


class Pool:
    """One pooled VM's wait for its claim. ``report_ready`` raises :class:`AgentError` on failure;
    ``timeout`` bounds every wait (0: none); ``watch`` opens the netlink subscription."""

    def __init__(self, lib_dir: str, report_ready: Callable[[], None], timeout: float,
                 imds_client: Optional[imds.ImdsClient] = None, sleep: Callable[[float], None] = time.sleep,
                 watch: Callable[[], network.LinkWatch] = network.LinkWatch,
                 interface: Callable[[], str] = network.interface_name,
                 primary: Callable[[], str] = network.configured_primary):
        self.lib_dir = lib_dir
        self._report_ready = report_ready
        self.imds = imds_client or imds.ImdsClient()
        self.sleep = sleep
        self._watch = watch
        self._interface = interface
        self._primary = primary
        self._deadline = time.monotonic() + timeout if timeout > 0 else float("inf")

    def event(self, message: str, is_success: bool = True) -> None:
        if is_success:
            log.info("{0}", message)
        else:
            log.error("{0}", message)
        events.add_event(OPERATION, is_success=is_success, message=message, lib_dir=self.lib_dir)

    # --- the flow ------------------------------------------------------------------------------------
    def run(self, kind: PpsType) -> tuple[OvfEnv, str]:
        """Wait in the pool as ``kind`` asks, then fetch the customer's ovf-env: (parsed, text).
        Raises ProvisionError (PoolTimeout when the claim never came)."""
        self.event(f"PPS type: {kind.value}")
        if kind is PpsType.RUNNING:
            self._running()
        elif kind is PpsType.SAVABLE:
            self._savable()
        elif kind is PpsType.OS_DISK:
            self._os_disk()
        elif not system.path(marker_path(self.lib_dir)).is_file():
            self._ready(expect_failure=False)
        else:
            log.info("Ready was reported in the pool before this start; polling for the claim")
        return self._reprovision()

    def _open_watch(self) -> network.LinkWatch:
        try:
            return self._watch()
        except NetworkError as e:
            raise ProvisionError(f"Cannot wait for the pre-provisioning claim: {e.msg}") from None

    def _ready(self, expect_failure: bool, marker: bool = True) -> None:
        try:
            self._report_ready()
        except AgentError as e:
            if not expect_failure:
                raise ProvisionError(f"Failed reporting ready while in the preprovisioning pool: {e}") from None
            log.info("Reporting Ready in the pool failed, as a Savable VM's may (its NIC goes away): {0}", e)
        if marker:
            system.write_file(marker_path(self.lib_dir), f"{os.getpid()}: {time.time()}\n", mode=0o644)
            log.info("Reported Ready in the pre-provisioning pool (marker {0})", marker_path(self.lib_dir))

    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _wait(self, what: str, step: Callable[[float], bool]) -> None:
        """Call ``step(seconds)`` until it is done, saying every STATUS_PERIOD that the VM still waits."""
        start = time.monotonic()
        log.info("In the pre-provisioning pool: waiting for {0}", what)
        while True:
            remaining = self._remaining()
            if remaining <= 0:
                raise PoolTimeout(f"Still in the pre-provisioning pool after {time.monotonic() - start:.0f} s "
                                  f"(Debug.PreprovisionedPoolTimeout), still waiting for {what}")
            if step(min(remaining, STATUS_PERIOD)):
                log.info("Pre-provisioning pool: {0} after {1:.1f} s", what, time.monotonic() - start)
                return
            if self._remaining() > 0:
                log.info("Still in the pre-provisioning pool after {0:.0f} s, waiting for {1}",
                         time.monotonic() - start, what)

    def _running(self) -> None:
        """Report Ready, then block until the primary NIC's carrier goes down and up (the vnet switch)."""
        with self._open_watch() as watch:
            ifname = self._interface()
            self._ready(expect_failure=False)
            self._wait(f"the vnet switch (media disconnect/connect) on {ifname}",
                       lambda t: watch.wait_media_switch(ifname, t))

    def _savable(self) -> None:
        """Report Ready (a failure is expected), then wait for the NIC to go and the primary to come."""
        with self._open_watch() as watch:
            self._ready(expect_failure=True)
            gone: list[str] = []

            def detached(t: float) -> bool:
                name = watch.wait_detach(t)
                gone.extend([name] if name else [])
                return name is not None

            self._wait("the NIC's detach", detached)
            attached: list[str] = []

            def primary_attached(t: float) -> bool:
                """Collect hot-attached NICs, bringing each up, until one carries the default route and has
                its address (the primary: cloud-init asks each attached NIC for a DHCP lease until the
                primary answers)."""
                deadline = time.monotonic() + t
                while time.monotonic() < deadline:
                    link = watch.wait_attach(attached, min(ATTACH_POLL, max(deadline - time.monotonic(), 0.0)))
                    if link is not None:
                        attached.append(link.name)
                        log.info("Hot-attached NIC {0} (operstate {1})", link.name, link.operstate)
                        self._link_up(link)
                    if attached and self._primary() in attached:
                        return True
                return False

            self._wait("the primary NIC's hot-attach", primary_attached)
            self.event(f"NIC {gone[0]} detached; primary NIC {self._primary()} attached")

    def _link_up(self, link: network.Link) -> None:
        if link.up:
            return
        try:
            with network.Netlink() as nl:
                nl.set_link(link.name, up=True)
        except NetworkError as e:
            log.info("Could not bring {0} up, going on: {1}", link.name, e.msg)

    def _os_disk(self) -> None:
        """Report Ready and wait for the host to shut the VM down; reaching the end is a failure."""
        self._ready(expect_failure=False, marker=False)
        self._wait("the host to shut the VM down", lambda t: bool(self.sleep(t)))

    def _reprovision(self) -> tuple[OvfEnv, str]:
        log.info("Polling IMDS for the re-provisioning data")
        try:
            text = imds.fetch_reprovision_data(self.imds, self._deadline_on(self.imds.clock), sleep=self.sleep)
        except imds.ReprovisionTimeout as e:
            raise PoolTimeout(f"Still in the pre-provisioning pool (Debug.PreprovisionedPoolTimeout): {e.msg}"
                              ) from None
        except HttpError as e:
            raise ProvisionError(f"Fetching the re-provisioning data failed: {e.msg}") from None
        try:
            ovf = parse_ovf_env(text)
        except ProtocolError as e:
            raise ProvisionError(f"The re-provisioning data is not a valid ovf-env.xml: {e.msg}") from None
        if ovf.preprovisioned_vm or (ovf.preprovisioned_vm_type or PpsType.NONE.value) != PpsType.NONE.value:
            raise ProvisionError("The re-provisioning data is a pre-provisioning document again "
                                 f"(PreprovisionedVm={ovf.preprovisioned_vm}, "
                                 f"PreprovisionedVMType={ovf.preprovisioned_vm_type})")
        save_ovf_env(self.lib_dir, text)
        self.event("Re-provisioning data received: the customer's ovf-env.xml replaces the placeholder")
        return ovf, text

    def _deadline_on(self, clock: Callable[[], float]) -> float:
        remaining = self._remaining()
        return clock() + remaining if remaining != float("inf") else remaining
