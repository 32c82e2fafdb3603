"""The WireServer firewall in the ext-handler: set up at start, kept across reboots, re-checked
periodically; and ``waagent -setup-firewall=<ip>`` run by the network-setup unit at boot (05 §11).

Everything noteworthy is reported as a telemetry event (``Firewall``, ``PersistFirewallRules``,
``ResetFirewall``) as well as logged.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable, Optional

import guestagent
from guestagent import events, log
from guestagent.cli import CliArgs
from guestagent.conf import Config
from guestagent.osutil import distros, system
from guestagent.osutil.firewall import (
    FirewallCmd,
    FirewallManager,
    FirewallStateError,
    create,
)

FIREWALL_OP, PERSIST_OP, RESET_OP = "Firewall", "PersistFirewallRules", "ResetFirewall"
UNIT_VERSION = "1.4"
SCRIPT_NAME = "waagent-network-setup.py"
REPORT_LIMIT, REPORT_PAUSE = 3, 12 * 3600.0

UNIT_TEMPLATE = """\
# This unit file (Version={version}) was created by the Azure VM Agent.
# Do not edit.
[Unit]
Description=Setup network rules for WALinuxAgent
After=local-fs.target
Before=network-pre.target
Wants=network-pre.target
DefaultDependencies=no
ConditionPathExists={script}

[Service]
Type=oneshot
ExecStart={python} {script}
RemainAfterExit=yes

[Install]
WantedBy=network.target
"""

SCRIPT_TEMPLATE = """\
# This python file was created by the Azure VM Agent. Please do not edit.

import os
import subprocess
import sys

if __name__ == '__main__':
    if os.path.exists({agent!r}):
        sys.exit(subprocess.call({argv!r}, env={env}))
    else:
        print({agent!r} + " file not found, skipping execution of firewall execution setup for this boot")
"""


def _event(kind: str, op: str, message: str, lib_dir: str) -> None:
    """upstream's event.info/warn/error: log at that level and send the event."""
    if kind == "info":
        log.info("{0}", message)
    elif kind == "warn":
        log.warn("{0}", message)
        message = "[WARNING] " + message
    else:
        log.error("{0}", message)
    events.add_event(op, is_success=kind == "info", message=message, log_event=False, lib_dir=lib_dir)


# -- waagent -setup-firewall -----------------------------------------------------------------------
def run_setup_firewall(args: CliArgs, config: Config) -> int:
    """Set the rules for ``args.firewall_dst_ip`` (boot time, before the network). 1 on error."""
    log.set_prefix("Firewall")
    threading.current_thread().name = "Firewall"
    lib_dir = config.lib_dir
    endpoint = args.firewall_dst_ip
    _event("info", FIREWALL_OP, f"Setting up firewall after boot. Endpoint: {endpoint}", lib_dir)
    try:
        if not endpoint:
            raise ValueError("no WireServer address given (-setup-firewall=<IP>)")
        manager = create(endpoint, args.firewall_uid)
        try:
            present = manager.check()
        except FirewallStateError:
            manager.remove()
            present = False
        if not present:
            manager.setup()
        _event("info", FIREWALL_OP, "Successfully set the firewall rules", lib_dir)
        return 0
    except Exception as e:
        _event("error", FIREWALL_OP, f"Unable to add firewall rules. Error: {e}", lib_dir)
        return 1


# -- start-up --------------------------------------------------------------------------------------
def initialize_firewall(config: Config, address: str, *, persist: bool = True) -> Optional[FirewallManager]:
    """The ext-handler's start-up step: legacy rule out, rules in, persistence. Never raises."""
    lib_dir = config.lib_dir
    if not config.os_enable_firewall:
        _event("info", FIREWALL_OP, "Skipping firewall initialization, since OS.EnableFirewall=False", lib_dir)
        return None
    try:
        manager = create(address)
        _event("info", FIREWALL_OP, f"Using {manager.tool} [version {manager.version}] to manage firewall rules",
               lib_dir)
        try:
            manager.remove_legacy_rule()
        except Exception as e:
            _event("error", FIREWALL_OP, f"Unable to remove legacy firewall rule. Error: {e}", lib_dir)
        log.info("Checking state of the firewall")
        try:
            if manager.check():
                _event("info", FIREWALL_OP, "The firewall rules for Azure Fabric are already setup:\n"
                       + manager.get_state(), lib_dir)
            else:
                manager.setup()
                _event("info", FIREWALL_OP, "Created firewall rules for Azure Fabric:\n" + manager.get_state(), lib_dir)
        except FirewallStateError as e:
            _event("warn", FIREWALL_OP, "The firewall rules for Azure Fabric are not setup correctly (the environment "
                   f"thread will fix it): {e}. Current state:\n{manager.get_state()}", lib_dir)
        if persist:
            _event("info", PERSIST_OP, "Setting up persistent firewall rules", lib_dir)
            try:
                PersistFirewallRules(config, address).setup()
            except Exception as e:
                _event("error", PERSIST_OP, f"Unable to setup the persistent firewall rules: {e}", lib_dir)
        return manager
    except Exception as e:
        _event("error", FIREWALL_OP, f"Error initializing firewall: {e}", lib_dir)
        return None


# -- periodic check --------------------------------------------------------------------------------
class EnableFirewall:
    """The env thread's firewall operation; its first run is the start-up step."""

    def __init__(self, config: Config, address: Callable[[], str], *, clock: Callable[[], float] = time.time,
                 persist: bool = True):
        self.config = config
        self.address = address
        self.clock = clock
        self.persist = persist
        self.lib_dir = config.lib_dir
        self.manager: Optional[FirewallManager] = None
        self.initialized = False
        self.message_count = 0
        self.report_after = 0.0
        self.resets = 0

    def __call__(self) -> None:
        if not self.initialized:
            self.initialized = True
            self.manager = initialize_firewall(self.config, self.address(), persist=self.persist)
            return
        try:
            if self.manager is None:
                self.manager = create(self.address())
            try:
                if self.manager.check():
                    return
                self._report("warn", "The firewall has not been setup. Will set it up.")
            except FirewallStateError as e:
                self._report("warn", f"The firewall is not configured correctly. {e}. Will reset it. Current state:\n"
                             f"{self.manager.get_state()}")
                self.manager.remove()
            self.manager.setup()
            self.resets += 1
            self._report("info", f"The firewall was setup successfully:\n{self.manager.get_state()}")
        except Exception as e:
            self._report("warn", f"An error occurred while setting up the firewall: {e}")

    def _report(self, kind: str, message: str) -> None:
        """The first 3 reports, then none for 12 hours (upstream's limit); the log line always."""
        now = self.clock()
        if now < self.report_after:
            (log.info if kind == "info" else log.warn)("{0}", message)
            return
        self.message_count += 1
        if self.message_count > REPORT_LIMIT:
            self.report_after = now + REPORT_PAUSE
            self.message_count = 0
            (log.info if kind == "info" else log.warn)("{0}", message)
            return
        _event(kind, RESET_OP, message, self.lib_dir)


# -- persistence across reboots --------------------------------------------------------------------
def agent_command(address: str) -> tuple[str, list[str], Optional[str]]:
    """(file that must exist, argv, PYTHONPATH or None) that sets the rules at boot."""
    argv0 = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if argv0 and os.path.basename(argv0).startswith("waagent"):
        return argv0, [sys.executable, argv0, f"--setup-firewall={address}"], None

    package = os.path.dirname(os.path.abspath(guestagent.__file__))
    return (os.path.join(package, "cli.py"), [sys.executable, "-m", "guestagent.cli", f"--setup-firewall={address}"],
            os.path.dirname(package))


class PersistFirewallRules:
    """firewalld running → permanent direct rules; otherwise, on systemd, the network-setup unit."""

    def __init__(self, config: Config, address: str, distro=None):
        self.config = config
        self.address = address
        self.lib_dir = config.lib_dir
        self.distro = distro or distros.detect()
        self.service = f"{self.distro.service_name}-network-setup.service"
        self.script = os.path.join(self.lib_dir, SCRIPT_NAME)

    @property
    def unit_path(self) -> str:
        unit_dir = self.distro.unit_dir
        if self.distro.ostree_network_setup and system.exists("/run/ostree-booted"):
            unit_dir = "/etc/systemd/system"  # image mode: /usr is read-only
        return os.path.join(unit_dir, self.service)

    def setup(self) -> None:
        if not FirewallCmd.running():
            log.info("Firewalld service not running/unavailable, trying to set up {0}", self.unit_path)
            if system.exists("/run/systemd/system"):
                self.setup_network_setup_service()
            else:
                _event("info", PERSIST_OP, f"Did not detect systemd, will not set {self.service}", self.lib_dir)
            return
        self._setup_firewalld()

    def _setup_firewalld(self) -> None:
        _event("info", PERSIST_OP, "Firewalld.service is running, setting up permanent rules on the VM", self.lib_dir)
        manager = FirewallCmd(self.address)
        try:
            manager.remove_legacy_rule()
        except Exception as e:
            _event("error", FIREWALL_OP, f"Unable to remove legacy firewall rule. Error: {e}", self.lib_dir)
        try:
            if manager.check():
                _event("info", PERSIST_OP, "The permanent firewall rules for Azure Fabric are already setup:\n"
                       + manager.get_state(), self.lib_dir)
            else:
                manager.setup()
                _event("info", PERSIST_OP, "Created permanent firewall rules for Azure Fabric:\n" + manager.get_state(),
                       self.lib_dir)
        except FirewallStateError as e:
            _event("warn", PERSIST_OP, f"The permanent firewall rules for Azure Fabric are not setup correctly ({e}), "
                   f"will reset them. Current state:\n{manager.get_state()}", self.lib_dir)
            manager.remove()
            manager.setup()
        for p in (self.unit_path, self.script):  # firewalld restores the rules itself
            try:
                system.remove(p)
            except OSError as e:
                log.info("Unable to delete existing service {0}: {1}", self.service, e)

    def script_text(self) -> str:
        agent, argv, pythonpath = agent_command(self.address)
        env = "None" if pythonpath is None else f"dict(os.environ, PYTHONPATH={pythonpath!r})"
        return SCRIPT_TEMPLATE.format(agent=agent, argv=argv, env=env)

    def unit_text(self) -> str:
        return UNIT_TEMPLATE.format(version=UNIT_VERSION, script=self.script, python=sys.executable)

    def setup_network_setup_service(self) -> None:
        # The script is rewritten on every start: the address (or the agent's location) may change.
        try:
            system.write_file(self.script, self.script_text(), mode=0o644)
            log.info("Successfully updated the Binary file {0} for firewall setup", self.script)
        except OSError:
            log.warn("Unable to setup binary file, removing the service unit file {0} to ensure its not run on "
                     "system reboot", self.unit_path)
            system.remove(self.script)
            system.remove(self.unit_path)
            raise
        enabled = self._is_enabled()
        if enabled and not self._unit_outdated():
            _event("info", PERSIST_OP, f"Service: {self.service} already enabled. No change needed.", self.lib_dir)
            return
        log.info("Service: {0} {1}", self.service, "unit file changed, setting it up again" if enabled
                 else "not enabled. Adding it now")
        try:
            system.write_file(self.unit_path, self.unit_text(), mode=0o644)
            res = system.run(["systemctl", "enable", self.service], check=False, timeout=120)
            if not res.ok:
                raise RuntimeError(f"Unable to enable service: {self.service}; deleting service file: {self.unit_path}."
                                   f" Exit-code: {res.returncode}. stderr: {res.stderr.strip()}")
        except Exception:
            system.remove(self.unit_path)
            raise
        _event("info", PERSIST_OP, f"Successfully added and enabled the {self.service}", self.lib_dir)

    def _is_enabled(self) -> bool:
        res = system.run(["systemctl", "is-enabled", self.service], check=False, timeout=60)
        return res.ok and res.stdout.strip() == "enabled"

    def _unit_outdated(self) -> bool:
        text = system.read_text(self.unit_path, default="") or ""
        return text != self.unit_text()

    def remove(self) -> None:
        """Deprovisioning: the unit and the script go."""
        system.remove(self.unit_path)
        system.remove(self.script)
