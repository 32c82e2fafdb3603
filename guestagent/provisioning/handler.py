"""Daemon step "provisioning" (spec 06 §3 body step 4, spec 05 §3): handler choice, marker, health.

``Provisioning.Agent``: ``auto`` → cloud-init's handler when cloud-init is enabled, else ours;
``cloud-init``; ``waagent``; anything else (``disabled``) → detect the protocol, write the marker,
report Ready. Health goes out as upstream sends it: NotReady/Provisioning/"Starting", then Ready or
NotReady/ProvisioningFailed/<error>. A failure never stops the daemon and leaves no marker, so the
next start retries from the beginning.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Optional

from guestagent import events, log
from guestagent.cli import CliArgs
from guestagent.conf import Config
from guestagent.errors import AgentError, ProtocolError, ProvisionError
from guestagent.osutil import distros, kvp, system
from guestagent.protocol import wire
from guestagent.provisioning import cloudinit, marker
from guestagent.version import AGENT_NAME, AGENT_VERSION

if TYPE_CHECKING:  # ovfenv loads minidom: only a daemon that provisions imports it
    from guestagent.provisioning.ovfenv import OvfEnv

#: ``detect(conf, lib_dir, certificates=...)`` (guestagent.protocol.wire.detect, or a test's stand-in).
Detect = Callable[..., Any]


@dataclass
class HandlerResult:
    protocol: Any = None
    ok: bool = False
    #: True when nothing was provisioned (already provisioned, or provisioning disabled).
    skipped: bool = False
    error: str = ""
    thumbprint: Optional[str] = None


def provisioning_agent(conf: Config) -> str:
    """Provisioning.Agent; when the file does not set it, the pre-2.2 keys decide (an extension:
    2.15 ignores Provisioning.Enabled/UseCloudInit and would provision from the DVD)."""
    legacy = conf.legacy_provisioning_agent
    if legacy is not None:
        log.info("Provisioning.Agent is not set; legacy Provisioning.Enabled=n means '{0}'", legacy)
        return legacy
    return conf.provisioning_agent


def _uptime() -> str:
    try:
        return (system.read_text("/proc/uptime") or "0").split()[0]
    except (OSError, IndexError):
        return "0"


def _elapsed_ms(start: datetime) -> int:
    return int((datetime.now(timezone.utc) - start).total_seconds() * 1000)


class _Flow:
    def __init__(self, conf: Config, detect: Optional[Detect], distro: Optional[distros.Distro],
                 sleep: Callable[[float], None]):
        self.conf = conf
        self.lib_dir = conf.lib_dir
        self._detect = detect
        self.distro = distro
        self.sleep = sleep
        self.result = HandlerResult()
        self._detect_error: Optional[AgentError] = None
        #: Whether detection must fetch the certificates (provisioning deploys keys by thumbprint);
        #: without them the daemon needs neither the transport certificate nor cryptography.
        self.certificates = False

    # --- protocol and health ---------------------------------------------------------------------
    def protocol(self) -> Any:
        """Detect once; a failed detection is not repeated for the health reports (it is slow)."""
        if self.result.protocol is None:
            if self._detect_error is not None:
                raise self._detect_error
            detect = self._detect if self._detect is not None else wire.detect
            try:
                self.result.protocol = detect(self.conf, self.lib_dir, certificates=self.certificates)
            except AgentError as e:
                self._detect_error = e
                raise
        return self.result.protocol

    def rediscover(self) -> None:
        """Detect the protocol again: a claimed pool VM's network moved (cloud-init's DHCP after it)."""
        self.result.protocol = None
        self._detect_error = None

    def event(self, message: str, is_success: bool = False, duration: int = 0,
              op: str = events.WALAEventOperation.Provision) -> None:
        events.add_event(op, is_success=is_success, message=message, duration=duration, lib_dir=self.lib_dir)

    def report_ready(self) -> None:
        try:
            self.protocol().report_ready()
        except AgentError as e:
            log.error("Reporting Ready failed: {0}", e)
            self.event(str(e))

    def report_not_ready(self, substatus: str, description: str) -> None:
        try:
            self.protocol().report_not_ready(substatus, description)
        except AgentError as e:
            log.error("Reporting NotReady failed: {0}", e)
            self.event(str(e))

    # --- marker --------------------------------------------------------------------------------------
    def write_provisioned(self) -> None:
        marker.write_marker(self.lib_dir)

    def check_provisioned_file(self) -> bool:
        """True when already provisioned; a changed VM id cleans cached state and reports Ready."""
        if not marker.is_provisioned(self.lib_dir):
            return False
        recorded = marker.read_marker(self.lib_dir)
        if not marker.is_current_instance_id(recorded):
            if recorded:
                msg = ("VM is provisioned, but the VM unique identifier has changed. This indicates the VM may be "
                       "created from an image that was not properly deprovisioned or generalized, which can "
                       "result in unexpected behavior from the guest agent -- clearing cached state")
                log.warn("{0}", msg)
                self.event(msg)
                from guestagent.provisioning.deprovision import run_changed_unique_id

                run_changed_unique_id(self.conf, self.distro or distros.detect())
            self.write_provisioned()
            self.report_ready()
        return True

    def report_to_host(self, reason: Optional[str] = None) -> None:
        """The KVP provisioning report (an extension; best effort: never fails provisioning)."""
        try:
            vm_id = marker.get_instance_id()
        except (AgentError, OSError, ValueError, IndexError) as e:
            log.info("KVP: no VM id for the provisioning report: {0}", e)
            vm_id = ""
        kvp.report_provisioning(f"{AGENT_NAME}/{AGENT_VERSION}", vm_id, reason)

    def handle_provision_guest_agent(self, value: str) -> None:
        self.event(value, is_success=True, op="ProvisionGuestAgent")
        if value and value.lower() == "false":
            log.warn("Disabling guest agent in accordance with ovf-env.xml")
            system.write_file(os.path.join(self.lib_dir, "disable_agent"), "", mode=0o644)


def needs_certificates(ovf: OvfEnv) -> bool:
    """Provisioning reads ``<thumbprint>.crt``/``.prv`` for an SSH key given without its value and
    for every key pair; everything else it does needs no certificate."""
    return any(k.value is None for k in ovf.ssh_pubkeys) or bool(ovf.ssh_keypairs)


class AgentFlow(_Flow):
    """The agent's own provisioning (05 §3.3)."""

    def run(self) -> HandlerResult:
        if provisioning_agent(self.conf) not in ("auto", "waagent"):
            log.info("Provisioning is disabled, skipping.")
            self.write_provisioned()
            self.report_ready()
            self.result.ok = self.result.skipped = True
            return self.result
        start = datetime.now(timezone.utc)
        try:
            if self.check_provisioned_file():
                log.info("Provisioning already completed, skipping.")
                self.result.ok = self.result.skipped = True
                return self.result
            self._provision(start)
        except (ProtocolError, ProvisionError) as e:
            msg = f"Provisioning failed: {e} ({_uptime()}s)"
            log.error("{0}", msg)
            self.result.error = str(e)
            self.report_to_host(str(e))
            self.report_not_ready("ProvisioningFailed", str(e))
            self.event(msg)
        return self.result

    def _provision(self, start: datetime) -> None:
        """From the DVD's ovf-env.xml (through the pre-provisioned pool when it says so) to Ready."""
        from guestagent.provisioning import preprovisioned
        from guestagent.provisioning.dvd import copy_ovf_env
        from guestagent.provisioning.provision import Provisioner

        try:
            log.info("Running default provisioning handler")
            if cloudinit.cloud_init_is_enabled():
                raise ProvisionError("cloud-init appears to be installed and enabled, this is not expected, "
                                     "cannot continue")
            log.info("Copying ovf-env.xml")
            ovf = copy_ovf_env(self.lib_dir, self.conf.dvd_mount_point, sleep=self.sleep)
            kind = preprovisioned.pps_type(ovf, self.lib_dir)
            if kind is not preprovisioned.PpsType.NONE:
                pool = preprovisioned.Pool(self.lib_dir, lambda: self.protocol().report_ready(),
                                           self.conf.debug_preprovisioned_pool_timeout)
                ovf, _text = pool.run(kind)
                self.rediscover()
            self.certificates = needs_certificates(ovf)
            self.protocol()
            self.report_not_ready("Provisioning", "Starting")
            log.info("Starting provisioning")
            provisioner = Provisioner(self.conf, self.distro, sleep=self.sleep)
            provisioner.provision(ovf)
            self.result.thumbprint = provisioner.reg_ssh_host_key()
            provisioner.restart_ssh_service()
            self.write_provisioned()
            preprovisioned.clear_marker(self.lib_dir)
            self.event(f"Provisioning succeeded ({_uptime()}s)", is_success=True, duration=_elapsed_ms(start))
            self.handle_provision_guest_agent(ovf.provision_guest_agent)
            self.report_to_host()
            self.report_ready()
            log.info("Provisioning complete")
            self.result.ok = True
        except preprovisioned.PoolTimeout as e:
            # Not a failure to report: the VM is still a Ready pool member; the next start polls again.
            log.warn("{0}", e)
            self.result.error = str(e)
            self.event(str(e), op=preprovisioned.OPERATION)


class CloudInitFlow(_Flow):
    """cloud-init provisions; the agent waits for its products and reports (05 §3.4)."""

    def run(self) -> HandlerResult:
        try:
            if self.check_provisioned_file():
                log.info("Provisioning already completed, skipping.")
                self.result.ok = self.result.skipped = True
                return self.result
            start = datetime.now(timezone.utc)
            log.info("Running CloudInit provisioning handler")
            ovf = cloudinit.wait_for_ovf_env(self.lib_dir, sleep=self.sleep)
            self.handle_provision_guest_agent(ovf.provision_guest_agent)
            self.protocol()
            self.report_not_ready("Provisioning", "Starting")
            self.result.thumbprint = cloudinit.wait_for_host_key(
                self.conf.os_ssh_dir, self.conf.provisioning_ssh_host_key_pair_type, sleep=self.sleep)
            self.write_provisioned()
            log.info("Finished provisioning")
            self.report_ready()
            self.event(f"Provisioning with cloud-init succeeded ({_uptime()}s)", is_success=True,
                       duration=_elapsed_ms(start))
            self.result.ok = True
        except ProvisionError as e:
            msg = f"Provisioning with cloud-init failed: {e} ({_uptime()}s)"
            log.error("{0}", msg)
            self.result.error = str(e)
            self.report_not_ready("ProvisioningFailed", str(e))
            self.event(msg)
        return self.result


def run_handler(conf: Config, detect: Optional[Detect] = None, distro: Optional[distros.Distro] = None,
                sleep: Callable[[float], None] = time.sleep) -> HandlerResult:
    """Choose the handler as upstream's factory does and run it."""
    agent = provisioning_agent(conf)
    if agent == "cloud-init" or (agent == "auto" and cloudinit.cloud_init_is_enabled()):
        log.info("Using cloud-init for provisioning")
        return CloudInitFlow(conf, detect, distro, sleep).run()
    log.info("Using waagent for provisioning")
    return AgentFlow(conf, detect, distro, sleep).run()


def provision(conf: Config, detect: Optional[Detect] = None, distro: Optional[distros.Distro] = None,
              sleep: Callable[[float], None] = time.sleep):  # -> guestagent.protocol.wire.WireProtocol
    """The daemon's provisioning step. Returns the detected WireProtocol (detected now if the
    handler had no reason to, e.g. already provisioned); None only when detection itself failed
    during a failed provisioning (the daemon goes on, as upstream's does)."""
    result = run_handler(conf, detect, distro, sleep)
    if result.protocol is None and result.ok:
        result.protocol = _Flow(conf, detect, distro, sleep).protocol()
    return result.protocol


def run_provision_command(args: CliArgs, config: Any) -> int:
    """``waagent -provision`` (an extension: upstream 2.15 has the command but no pattern for it):
    run the provisioning handler once, in the foreground. 0 = provisioned (or already), 1 = failed."""
    result = run_handler(config)
    if result.ok:
        print("Provisioning succeeded" if not result.skipped else "Provisioning already completed")
        return 0
    print(f"Provisioning failed: {result.error}")
    return 1
