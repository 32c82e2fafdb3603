"""``waagent -deprovision[+user] [-force]`` and the "changed unique id" clean-up (spec 05 §13).

The list of actions is built first (so ``+user`` knows the user name before the lib dir is wiped),
the warnings are printed, the operator confirms (unless ``-force``), then the actions run in
upstream's order. Ctrl-C before the actions exits; during them it is ignored. Afterwards the VM has
no provisioned marker, so the next boot provisions again from a new ovf-env.xml.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from guestagent import log
from guestagent.cli import CliArgs
from guestagent.conf import Config
from guestagent.errors import AgentError, CommandError, ProtocolError
from guestagent.osutil import dhcpclient, distros, hostname, system, users

LEASE_DIRS = ("/var/lib/dhclient", "/var/lib/dhcpcd", "/var/lib/dhcp")
LEASE_FILES = ("/var/db/dhclient.leases.*", "/var/lib/NetworkManager/dhclient-*.lease", "/run/systemd/netif/leases/*")
BSD_FILES = ("/etc/random.seed", "/var/db/host.random", "/etc/isakmpd/local.pub", "/etc/isakmpd/private/local.key",
             "/etc/iked/private/local.key", "/etc/iked/local.pub")
LIB_FILES = ("HostingEnvironmentConfig.xml", "Incarnation", "partition", "Protocol", "SharedConfig.xml",
             "WireServerEndpoint", "published_hostname", "fast_track.json", "initial_goal_state",
             "waagent_rsm_update", "waagent_initial_update")
LIB_GLOBS = ("Extensions.*.xml", "ExtensionsConfig.*.xml", "GoalState.*.xml")
DROP_INS = ("10-Slice.conf", "11-CPUAccounting.conf", "12-CPUQuota.conf", "13-MemoryAccounting.conf")
LOGCOLLECTOR_SLICE = "azure-walinuxagent-logcollector.slice"
NETWORK_SETUP_SCRIPT = "waagent-network-setup.py"
HANDLER_DIR = re.compile(r"^([^-]+)-(\d+(?:\.\d+)*)$", re.IGNORECASE)
AGENT_DIR = re.compile(r"WALinuxAgent-(.*)")


@dataclass
class Action:
    what: str
    func: Callable[..., Any]
    args: tuple = ()

    def invoke(self) -> None:
        self.func(*self.args)


@dataclass
class Plan:
    warnings: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)


# --- file helpers (upstream's rm_files / rm_dirs, under the osutil root) ---------------------------------
def rm_files(*patterns: str) -> None:
    """Remove the regular files (or links to them) matching each glob."""
    for pattern in patterns:
        for p in glob.glob(str(system.path(pattern))):
            if os.path.isfile(p):
                os.remove(p)


def rm_dirs(*dirs: str) -> None:
    """Empty each directory (files, links, sub-trees), keeping the directory itself."""
    for d in dirs:
        target = system.path(d)
        if not target.is_dir():
            continue
        for name in os.listdir(target):
            p = os.path.join(target, name)
            if os.path.islink(p) or os.path.isfile(p):
                os.unlink(p)
            elif os.path.isdir(p):
                shutil.rmtree(p)


def _run_quietly(argv: tuple[str, ...]) -> None:
    if not argv:
        return
    try:
        system.run(list(argv), timeout=120, check=False)
    except CommandError as e:
        log.warn("{0} failed: {1}", " ".join(argv), e)


# --- the plan -------------------------------------------------------------------------------------------
class Deprovisioner:
    def __init__(self, conf: Config, distro: Optional[distros.Distro] = None):
        self.conf = conf
        self.distro = distro or distros.detect()
        self.actions_running = False

    def network_setup_unit(self) -> str:
        unit_dir = self.distro.unit_dir
        if self.distro.ostree_network_setup and system.exists("/run/ostree-booted"):
            unit_dir = "/etc/systemd/system"
        return os.path.join(unit_dir, f"{self.distro.service_name}-network-setup.service")

    def _del_dhcp_lease(self, plan: Plan) -> None:
        plan.warnings.append("WARNING! Cached DHCP leases will be deleted.")
        plan.actions.append(Action("delete DHCP leases", rm_dirs, LEASE_DIRS))
        plan.actions.append(Action("delete DHCP lease files", rm_files, LEASE_FILES))

    def _del_persist_firewall_rules(self, plan: Plan) -> None:
        plan.actions.append(Action("delete the firewall network-setup unit", rm_files,
                                   (self.network_setup_unit(), os.path.join(self.conf.lib_dir, NETWORK_SETUP_SCRIPT))))

    def _remove_agent_cgroup_config(self, plan: Plan) -> None:
        drop_in_dir = os.path.join(self.distro.unit_dir, f"{self.distro.service_name}.service.d")
        files = tuple(os.path.join(drop_in_dir, f) for f in DROP_INS)
        plan.actions.append(Action("delete the agent's cgroup drop-ins", rm_files,
                                   (*files, os.path.join(self.distro.unit_dir, LOGCOLLECTOR_SLICE))))

    def _del_resolv(self, plan: Plan) -> None:
        mode = self.distro.deprovision_resolv
        if mode == distros.RESOLV_KEEP:
            plan.warnings.append("WARNING! /etc/resolv.conf will NOT be removed, this is a behavior change to "
                                 "earlier versions of Ubuntu.")
        elif mode == distros.RESOLV_RESOLVCONF and \
                os.path.realpath(system.path("/etc/resolv.conf")) == str(system.path("/run/resolvconf/resolv.conf")):
            plan.warnings.append("WARNING! /etc/resolvconf/resolv.conf.d/tail and "
                                 "/etc/resolvconf/resolv.conf.d/original will be deleted.")
            plan.actions.append(Action("delete resolvconf tail/original", rm_files,
                                       ("/etc/resolvconf/resolv.conf.d/tail",
                                        "/etc/resolvconf/resolv.conf.d/original")))
        else:
            plan.warnings.append("WARNING! /etc/resolv.conf will be deleted.")
            plan.actions.append(Action("delete /etc/resolv.conf", rm_files, ("/etc/resolv.conf",)))

    def _del_user(self, plan: Plan) -> None:
        from guestagent.provisioning.dvd import load_saved_ovf_env

        try:
            username = load_saved_ovf_env(self.conf.lib_dir, deprovision=True).username
        except ProtocolError:
            plan.warnings.append("WARNING! ovf-env.xml is not found.")
            plan.warnings.append("WARNING! Skip delete user.")
            return
        plan.warnings.append(f"WARNING! {username} account and entire home directory will be deleted.")
        plan.actions.append(Action(f"delete user {username}", users.del_account,
                                   (username, self.conf.os_sudoers_dir, self.conf.provisioning_allow_reset_sys_user)))

    def setup(self, deluser: bool) -> Plan:
        conf, plan = self.conf, Plan()
        plan.warnings.append("WARNING! The waagent service will be stopped.")
        plan.actions.append(Action("stop the agent service", _run_quietly, (self.distro.stop_service,)))
        if conf.provisioning_regenerate_ssh_host_key_pair:
            plan.warnings.append("WARNING! All SSH host key pairs will be deleted.")
            plan.actions.append(Action("delete SSH host keys", rm_files,
                                       (os.path.join(conf.os_ssh_dir, "ssh_host_*key*"),)))
        self._del_dhcp_lease(plan)
        plan.actions.append(Action("reset the hostname", hostname.set_hostname, ("localhost.localdomain", self.distro)))
        plan.actions.append(Action("reset the DHCP hostname", dhcpclient.set_dhcp_hostname,
                                   ("localhost.localdomain", self.distro)))
        if conf.provisioning_delete_root_password:
            plan.warnings.append("WARNING! root password will be disabled. You will not be able to login as root.")
            plan.actions.append(Action("lock root", users.del_root_password, (conf.os_password_path,)))
        plan.actions.append(Action("empty the lib and extension log directories", rm_dirs,
                                   (conf.lib_dir, conf.extension_log_dir)))
        plan.actions.append(Action("delete history and agent log", rm_files,
                                   ("/root/.bash_history", conf.agent_log_file)))
        plan.actions.append(Action("delete BSD seeds and keys", rm_files, BSD_FILES))
        self._del_resolv(plan)
        if deluser:
            self._del_user(plan)
        self._del_persist_firewall_rules(plan)
        self._remove_agent_cgroup_config(plan)
        for name in self.distro.deprovision_files:  # CoreOS/Flatcar, Arch: upstream's handler appends these last
            plan.warnings.append(f"WARNING! {name} will be removed.")
            plan.actions.append(Action(f"delete {name}", rm_files, (name,)))
        return plan

    def setup_changed_unique_id(self) -> Plan:
        plan = Plan()
        self._del_dhcp_lease(plan)
        lib = self.conf.lib_dir
        files = [os.path.join(lib, f) for f in LIB_FILES if system.path(os.path.join(lib, f)).is_file()]
        for pattern in LIB_GLOBS:
            files += [os.path.join(lib, os.path.basename(p)) for p in glob.glob(str(system.path(os.path.join(lib, pattern))))]
        if files:
            plan.actions.append(Action("delete cached goal state files", rm_files, tuple(files)))
        try:
            names = sorted(os.listdir(system.path(lib)))
        except OSError:
            names = []
        for name in names:
            if not system.path(os.path.join(lib, name)).is_dir() or not HANDLER_DIR.match(name) \
                    or AGENT_DIR.match(name):
                continue
            base = os.path.join(lib, name)
            patterns = (os.path.join(base, "status", "*.status"), os.path.join(base, "config", "*.settings"),
                        os.path.join(base, "config", "HandlerStatus"), os.path.join(base, "mrseq"))
            if any(glob.glob(str(system.path(p))) for p in patterns):
                plan.actions.append(Action(f"delete the state of {name}", rm_files, patterns))
        self._del_persist_firewall_rules(plan)
        self._remove_agent_cgroup_config(plan)
        return plan

    # --- running ---------------------------------------------------------------------------------------
    def do_actions(self, actions: list[Action]) -> None:
        self.actions_running = True
        try:
            for action in actions:
                try:
                    action.invoke()
                except (OSError, AgentError) as e:
                    log.warn("Deprovision action '{0}' failed: {1}", action.what, e)
                    print(f"WARNING! Failed to {action.what}: {e}")
        finally:
            self.actions_running = False

    def handle_interrupt(self, signum: int, frame: Any) -> None:
        if not self.actions_running:
            print("Deprovision is interrupted.")
            sys.exit(0)
        print("Deprovisioning may not be interrupted.")


def confirm(force: bool, read: Callable[[str], str] = input) -> bool:
    if force:
        return True
    try:
        answer = read("Do you want to proceed (y/n)")
    except EOFError:
        return False
    return answer.lower().startswith("y")


def run_deprovision(args: CliArgs, config: Config, read: Callable[[str], str] = input,
                    distro: Optional[distros.Distro] = None) -> int:
    """``-deprovision`` / ``-deprovision+user``; ``args.force`` skips the question."""
    handler = Deprovisioner(config, distro)
    previous = signal.signal(signal.SIGINT, handler.handle_interrupt)
    try:
        plan = handler.setup(deluser=args.command == "deprovision+user")
        for warning in plan.warnings:
            print(warning)
        sys.stdout.flush()
        if confirm(args.force, read):
            handler.do_actions(plan.actions)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def run_changed_unique_id(config: Config, distro: Optional[distros.Distro] = None) -> None:
    """No prompt: clear what would confuse the agent on a VM cloned without deprovisioning."""
    handler = Deprovisioner(config, distro)
    plan = handler.setup_changed_unique_id()
    for warning in plan.warnings:
        print(warning)
    handler.do_actions(plan.actions)
