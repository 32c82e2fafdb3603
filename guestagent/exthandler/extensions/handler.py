"""The lifecycle of one handler version (04 §7): install, enable, disable, uninstall, update, removal.

Each step records its result in ``config/HandlerState`` (atomically) *after* the command succeeded, so an
ext-handler killed at any point repeats at most the step that was running, never a finished one.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from guestagent import log
from guestagent.errors import ExtensionError
from guestagent.events import WALAEventOperation
from guestagent.exthandler.cgroups import CGroupConfigurator
from guestagent.exthandler.extensions import runner
from guestagent.exthandler.extensions.manifest import HandlerManifest, load_handler_manifest
from guestagent.exthandler.extensions.orphans import LeftCommands
from guestagent.exthandler.extensions.package import zip_path
from guestagent.exthandler.extensions.state import ENABLED, FAILED_UPGRADE, INSTALLED, HandlerFiles
from guestagent.exthandler.extensions.versions import compare_versions
from guestagent.osutil import pathguard, system

CODE_UPDATE = 1008
NOT_RUN = "NOT_RUN"
#: The telemetry operation of each handler command, spelled as upstream's (``UnInstall``).
OPERATIONS = {"install": WALAEventOperation.Install, "enable": WALAEventOperation.Enable,
              "disable": WALAEventOperation.Disable, "update": WALAEventOperation.Update,
              "uninstall": WALAEventOperation.UnInstall}


class UpdateFailed(ExtensionError):
    pass


@dataclass
class Context:
    """What every handler of one manager shares."""

    lib_dir: str
    wire_address: str
    log_root: str = "/var/log/azure"
    timeouts: dict = field(default_factory=dict)
    sink: Optional[Callable[[Any], None]] = None
    event: Optional[Callable[..., None]] = None
    cgroups: CGroupConfigurator = field(default_factory=CGroupConfigurator)  # the child's configurator
    left: Optional[LeftCommands] = None   # commands a killed ext-handler left running (the child only)


class Handler:
    """One ``<Name>-<version>`` directory and the commands of its HandlerManifest."""

    def __init__(self, ctx: Context, name: str, version: str, multi_config: bool = False):
        self.ctx = ctx
        self.name, self.version = name, version
        self.multi_config = multi_config
        self.files = HandlerFiles(ctx.lib_dir, name, version, ctx.log_root)
        self.log = log.PrefixLogger(f"[{name}-{version}]")
        self._manifest: Optional[HandlerManifest] = None

    # --- manifest and status ---------------------------------------------------------------------------
    @property
    def manifest(self) -> HandlerManifest:
        if self._manifest is None:
            self._manifest = load_handler_manifest(self.files.manifest_file)
        return self._manifest

    def state(self) -> str:
        return self.files.state()

    def set_status(self, status: str, code: int, message: Optional[str]) -> None:
        try:
            self.files.set_status(status, code, message, self.multi_config)
        except OSError as e:
            self.log.error("Failed to write the handler status: {0}", e)

    def report_error(self, code: int, message: str) -> None:
        self.set_status("NotReady", code, message)

    def check_multi_config(self) -> None:
        if self.multi_config and not self.manifest.supports_multiple_extensions:
            raise ExtensionError(f"Handler {self.name} does not support MultiConfig but CRP expects it, failing "
                                 f"due to inconsistent data", code=-1)

    # --- commands ------------------------------------------------------------------------------------------
    def run(self, op: str, settings: Any = None, extra_env: Optional[dict] = None) -> runner.CommandResult:
        """Run one command. Telemetry as upstream's: ``Executing command`` and ``Command`` events under the
        extension's full name (``<Handler>.<Extension>`` for multi-config), a failure as its error."""
        ext_name = settings.name if (settings is not None and self.multi_config) else None
        seq = settings.sequence_number if settings is not None else self.files.latest_seq(ext_name)
        env = dict(extra_env or {})  # upstream's order: the command's own variables, then the common ones
        env.update(runner.base_environment(self.files.base_dir, self.version, self.ctx.wire_address, seq, ext_name))
        full_name = f"{self.name}.{ext_name}" if ext_name else self.name
        pathguard.within(self.ctx.lib_dir, self.files.base_dir)  # the folder it runs in, right before exec
        if self.ctx.left is not None:  # never beside a command of this handler a killed ext-handler left
            self.ctx.left.settle(self.name)
        try:
            return runner.run_command(op, self.files.base_dir, self.manifest.command(op), env,
                                      handler_name=self.name, log_dir=self.files.log_dir, ext_name=ext_name,
                                      timeout=self.ctx.timeouts.get(op), sink=self.ctx.sink,
                                      cgroups=self.ctx.cgroups,
                                      report=lambda message, ms: self._event(op, True, message, ms, full_name))
        except runner.CommandFailed as e:
            self._event(op, False, e.upstream_text, 0, full_name)
            raise

    def _event(self, op: str, ok: bool, message: str, duration_ms: int, name: str) -> None:
        if self.ctx.event is not None:
            try:
                self.ctx.event(OPERATIONS[op], name=name, version=self.version, is_success=ok, message=message,
                               duration=duration_ms)
            except Exception as e:  # telemetry never breaks the lifecycle
                self.log.warn("Event failed: {0}", e)

    # --- resource limits (06 §10.3) -----------------------------------------------------------------------
    def _cgroups(self) -> CGroupConfigurator:
        return self.ctx.cgroups

    def _resource_limits(self) -> dict:
        try:
            return self.manifest.resource_limits
        except ExtensionError:
            return {}

    def set_resource_limits(self) -> None:
        """The extension slice's properties and its services' quotas: at install and at every enable."""
        limits = self._resource_limits()
        try:
            configurator = self._cgroups()
            configurator.setup_extension_slice(self.name, limits.get("cpuQuotaPercentage"))
            configurator.set_extension_services_quota(limits.get("services"))
        except Exception as e:  # resource governance never fails an operation
            self.log.warn("Could not set the resource limits: {0}", e)

    def install(self, uninstall_exit: Any = NOT_RUN, settings: Any = None) -> None:
        """``settings``: the extension whose goal state asked for the install (upstream passes it: a
        multi-config install then runs with its name and sequence number, and is reported under it)."""
        self.set_resource_limits()
        self.run("install", settings, {"AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE": str(uninstall_exit)})
        self.files.set_state(INSTALLED)
        self.set_status("NotReady", 0, "Plugin installed but not enabled")

    def enable(self, settings: Any, uninstall_exit: Any = NOT_RUN) -> None:
        self.set_resource_limits()
        self.run("enable", settings, {"AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE": str(uninstall_exit)})
        if self.multi_config and settings is not None:
            self.files.set_ext_state(settings.name, "enabled")
        self.files.set_state(ENABLED)
        self.set_status("Ready", 0, "Plugin enabled")

    def disable(self, settings: Any, delete_extension: bool = False) -> None:
        self.run("disable", settings)
        if self.multi_config and settings is not None:
            if delete_extension:
                self.files.remove_mc_extension_files(settings.name)
            else:
                self.files.set_ext_state(settings.name, "disabled")
            if self.files.enabled_mc_extensions():
                return
        self.files.set_state(INSTALLED)
        self.set_status("NotReady", 0, "Plugin disabled")

    def uninstall(self, settings: Any = None) -> None:
        """``settings``: those of the goal state that asks for it (upstream passes them: their sequence
        number and, multi-config, name go in the environment); None: this version's latest."""
        try:
            self._cgroups().reset_extension_services_quota(self._resource_limits().get("services"))
        except Exception as e:
            self.log.warn("Could not reset the services' quotas: {0}", e)
        self.run("uninstall", settings)

    def remove(self) -> None:
        """Delete the zip and base dir without running anything (tolerating files vanishing); the
        extension slice's quota is reset (as upstream, also for the old version of an update)."""
        system.remove(zip_path(self.ctx.lib_dir, self.name, self.version))
        shutil.rmtree(system.path(self.files.base_dir), ignore_errors=True)
        try:
            self._cgroups().reset_extension_quota(self.name)
        except Exception as e:
            self.log.warn("Could not reset the extension slice's quota: {0}", e)

    def enabled_settings(self, settings_list: list) -> list:
        """The extensions of this (old) version that are enabled: disable targets of an update/uninstall."""
        if not settings_list:
            return [None]
        if self.multi_config:
            enabled = set(self.files.enabled_mc_extensions())
            return [s for s in settings_list if s.name in enabled]
        return list(settings_list)


def _exit_code(error: ExtensionError) -> str:
    """A failed command's exit code (its error code when it had none, or failed before running)."""
    return str(error.exit_code if isinstance(error, runner.CommandFailed) and error.exit_code else error.code)


def run_update(old: Handler, new: Handler, settings_list: list, old_settings: list, trigger: Any = None) -> str:
    """04 §7.3: old disable → update → old uninstall → (new install) ; returns the uninstall exit code.
    ``trigger``: the settings of the extension being processed, whose goal state asked for the new
    version: update and install run for it, and the old version's uninstall runs with it (its sequence
    number), as upstream's."""
    cont = new.manifest.continue_on_update_failure
    disable_codes: dict = {}
    if old.state() == ENABLED:
        for s in old.enabled_settings(old_settings):
            key = s.name if s is not None else None
            try:
                old.disable(s)
                disable_codes[key] = "0"
            except ExtensionError as e:
                if not cont:
                    raise UpdateFailed(f"Failed to disable old version {old.version} during update: {e.msg}",
                                       code=CODE_UPDATE) from None
                disable_codes[key] = _exit_code(e)
    # carry the extension's own bookkeeping over
    for rel in ("mrseq",):
        src = system.path(os.path.join(old.files.base_dir, rel))
        if src.is_file():
            shutil.copy2(src, system.path(os.path.join(new.files.base_dir, rel)))
    src_status = system.path(old.files.status_dir)
    if src_status.is_dir():
        system.mkdir(new.files.status_dir, mode=0o700)
        for entry in os.listdir(src_status):
            if (src_status / entry).is_file():
                shutil.copy2(src_status / entry, system.path(os.path.join(new.files.status_dir, entry)))
    upgrade = compare_versions(new.version, old.version) > 0
    runner_handler = new if upgrade else old
    env = {"VERSION": new.version, "AZURE_GUEST_AGENT_UPDATING_FROM_VERSION": old.version if upgrade else new.version}
    if new.multi_config:
        env["AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODES_MULTIPLE_EXTENSIONS"] = json.dumps(
            [{"extensionName": s.name, "exitCode": disable_codes.get(s.name, "None")} for s in settings_list if s])
    else:
        env["AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE"] = next(iter(disable_codes.values()), "None")
    try:
        if trigger is None and settings_list and not new.multi_config:
            trigger = settings_list[0]
        runner_handler.run("update", trigger, env)
    except ExtensionError as e:
        runner_handler.files.set_state(FAILED_UPGRADE)
        code = e.code if e.code == runner.CODE_TIMEOUT else CODE_UPDATE
        raise UpdateFailed(f"Failed to update to {new.version}: {e.msg}", code=code) from None
    uninstall_exit = "0"
    try:
        old.uninstall(trigger)
    except ExtensionError as e:
        if not cont:
            raise UpdateFailed(f"Failed to uninstall old version {old.version} during update: {e.msg}",
                               code=CODE_UPDATE) from None
        uninstall_exit = _exit_code(e)
    old.remove()
    if new.manifest.update_with_install:
        new.install(uninstall_exit, trigger)
    else:
        new.files.set_state(INSTALLED)
        new.set_status("NotReady", 0, "Plugin installed but not enabled")
    return uninstall_exit
