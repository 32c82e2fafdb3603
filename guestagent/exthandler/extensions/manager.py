"""Processing an extensions goal state (03 §11, 04 §7–§9) and reporting per-handler status (04 §12).

``ExtensionsManager`` is what the ext-handler main loop drives: ``process()`` for each NEW extensions goal
state (gating, ordering, dependencies, the lifecycle of every handler, clean-up) and ``handler_statuses()``
on every iteration (cheap: a few small files per handler). Nothing here raises into the main loop.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Optional

from guestagent import events, log
from guestagent.conf import Config
from guestagent.errors import ExtensionError, disk_full
from guestagent.exthandler.cgroups import CGroupConfigurator
from guestagent.exthandler.extensions import diskfull, policy, signing
from guestagent.exthandler.extensions import status as ext_status
from guestagent.exthandler.extensions.download import Downloads
from guestagent.exthandler.extensions.handler import NOT_RUN, Context, Handler, run_update
from guestagent.exthandler.extensions.manifest import load_handler_manifest, select_package
from guestagent.exthandler.extensions.orphans import LeftCommands
from guestagent.exthandler.extensions.package import initialize_layout
from guestagent.exthandler.extensions.runner import CommandFailed
from guestagent.exthandler.extensions.state import (
    ENABLED,
    FAILED_UPGRADE,
    NOT_INSTALLED,
    HandlerFiles,
    handler_dirs,
    installed_versions,
)
from guestagent.exthandler.extensions.versions import version_key
from guestagent.osutil import system
from guestagent.protocol.extconfig import Extension, ExtensionSettings, ExtensionsGoalState
from guestagent.protocol.goalstate import GoalState
from guestagent.protocol.status import goal_state_aggregate_status
from guestagent.protocol.wire import WireProtocol

#: The goal state's wait for the certificate helper (GoalState.wait_for_certificates_named).
CertificatesWait = Callable[[Iterable[str], str], None]
#: What the agent can honour when a goal state requires it. Not "VersioningGovernance": this agent does not
#: run the platform's agent packages (it is updated by the distribution's package manager).
SUPPORTED_FEATURES = ("MultipleExtensionsPerHandler",)
CODE_UNSUPPORTED_FEATURES = 2001
DEPENDENCY_POLL = 5.0
DEPENDENCY_DEADLINE = 90 * 60
#: Requested state → (the operation named in a disallowed extension's message, its terminal error code).
DISALLOWED = {"enabled": ("run", 1009), "uninstall": ("uninstall", 1010), "disabled": ("uninstall", 1010)}
DISABLED_MESSAGE = ("Extension will not be processed since extension processing is disabled. To enable extension "
                    "processing, set Extensions.Enabled=y in '/etc/waagent.conf'")


def sort_key(ext: Extension, settings: Optional[ExtensionSettings]) -> int:
    """03 §11.5: uninstall/disable work first (deepest dependents first), then enables by ascending level."""
    if settings is not None:
        level = settings.dependency_level
        return level if ext.state == "enabled" and settings.state == "enabled" else -level - 1
    level = min((s.dependency_level for s in ext.settings), default=0)
    return level if ext.state == "enabled" else -level - 1


def ordered_pairs(extensions: list) -> list:
    pairs = []
    for ext in extensions:
        for s in ext.settings or [None]:
            pairs.append((sort_key(ext, s), ext, s))
    pairs.sort(key=lambda p: p[0])  # stable: goal-state order within a level
    return pairs


class ExtensionsManager:
    def __init__(self, conf: Config, protocol: WireProtocol, *, log_root: str = "/var/log/azure",
                 timeouts: Optional[dict] = None, sink: Optional[Callable[[Any], None]] = None,
                 dependency_poll: float = DEPENDENCY_POLL, dependency_deadline: float = DEPENDENCY_DEADLINE,
                 event: Optional[Callable[..., None]] = None,
                 cgroups: Optional[CGroupConfigurator] = None, left_commands: Optional[LeftCommands] = None):
        """``cgroups``: the child's configurator (extension slices and scopes); a tool that runs handlers
        outside the child (the extension kit, tests) gets one that is not initialised: commands run directly.
        ``left_commands``: what a killed ext-handler left running (only the child looks for them)."""
        self.conf = conf
        self.protocol = protocol
        self.lib_dir = conf.lib_dir
        self.ctx = Context(self.lib_dir, protocol.endpoint, log_root, dict(timeouts or {}),
                           sink, event if event is not None else self._default_event,
                           cgroups if cgroups is not None else CGroupConfigurator(conf), left_commands)
        self.dependency_poll = dependency_poll
        self.dependency_deadline = dependency_deadline
        self.egs: Optional[ExtensionsGoalState] = None
        self.versions: dict = {}
        self.gs_status: Optional[dict] = None
        self.unsupported = False
        self.processed_goal_states = 0
        self._wait_for_certificates: Optional[CertificatesWait] = None
        self._uninstall_exit: dict = {}
        self._done: set = set()
        self._policy = policy.PolicyEngine()
        self._refused: dict = {}   # handler name → its status entry, for handlers refused at the edge
        self.disk_full = diskfull.DiskFullRetry()
        self.downloads = Downloads(protocol, self.ctx)
        self._startup()

    # --- seams ---------------------------------------------------------------------------------------------
    def _default_event(self, op: str, **kw: Any) -> None:
        """Extension telemetry seam (issue 5 item 7): one event per command, via guestagent.events."""
        events.add_event(op, lib_dir=self.lib_dir, log_event=False, **kw)

    def _startup(self) -> None:
        """04 §9: rewrite HandlerEnvironment.json and events dirs of installed handlers; drop unpack leftovers."""
        try:
            for entry in os.listdir(system.path(self.lib_dir)):
                if entry.startswith(".") and entry.endswith(".unpacking"):
                    system.remove(os.path.join(self.lib_dir, entry))
        except OSError:
            return
        for name, version, _ in handler_dirs(self.lib_dir):
            files = HandlerFiles(self.lib_dir, name, version, self.ctx.log_root)
            if system.exists(files.manifest_file):
                try:
                    initialize_layout(files)
                except (OSError, ExtensionError) as e:
                    log.warn("Could not initialise {0}-{1}: {2}", name, version, e)

    # --- the interface of the main loop --------------------------------------------------------------------
    def process(self, goal_state: GoalState, retry: bool = False) -> None:
        """Run the lifecycle for a new extensions goal state (``retry``: again for the handlers a full disk
        stopped, see :meth:`retry_due`); never raises."""
        egs = goal_state.extensions_goal_state
        seq = egs.svd_sequence_number or goal_state.incarnation
        self._wait_for_certificates = goal_state.wait_for_certificates_named
        on_hold = egs.on_hold and self.conf.enable_over_provisioning
        start = time.monotonic()
        if not on_hold:
            self._agent_event(f"ProcessExtensionsGoalState started [{egs.id} channel: {egs.channel} source: "
                              f"{egs.source} activity: {egs.activity_id} correlation {egs.correlation_id} "
                              f"created: {egs.created_on_timestamp}]")
        error: Optional[str] = None
        only = self.disk_full.names() if retry else None
        if not retry:
            self.disk_full.new_goal_state()
        try:
            self._process(egs, only)
            self.disk_full.schedule()
            if not self.unsupported:
                self.gs_status = goal_state_aggregate_status(seq)
        except Exception as e:
            error = f"Error processing extensions:{e}"
            log.error("Error processing the extensions goal state {0}: {1}", egs.id, e)
            self.gs_status = goal_state_aggregate_status(seq, "Failed", -1, log.redact(str(e))[:1024])
        finally:
            self.processed_goal_states += 1
        if not on_hold:
            ms = int((time.monotonic() - start) * 1000)
            message = f"ProcessExtensionsGoalState completed [{egs.id} {ms} ms]\n" if error is None else \
                f"ProcessExtensionsGoalState failed [{egs.id} {ms} ms]\n{error}"
            events.add_event(events.WALAEventOperation.ExtensionProcessing, is_success=error is None,
                             message=message, duration=ms, log_event=False, lib_dir=self.lib_dir)

    def _agent_event(self, message: str, op: str = events.WALAEventOperation.ExtensionProcessing) -> None:
        """An agent event of extension processing, logged as upstream logs it."""
        log.info("{0}", message)
        events.add_event(op, message=message, lib_dir=self.lib_dir)

    def retry_due(self) -> bool:
        """A full disk stopped some handlers of the current goal state and their next attempt is due."""
        return self.disk_full.due()

    def goal_state_status(self) -> Optional[dict]:
        """``vmArtifactsAggregateStatus.goalStateAggregateStatus`` for build_vm_status (03 §11)."""
        return self.gs_status

    def converged(self) -> bool:
        """A goal state was processed and no reported extension is still transitioning."""
        if self.egs is None:
            return False
        for entry in self.handler_statuses():
            rs = entry.get("runtimeSettingsStatus")
            if rs and rs["settingsStatus"]["status"]["status"] == "transitioning":
                return False
        return True

    # --- processing --------------------------------------------------------------------------------------------
    def _process(self, egs: ExtensionsGoalState, only: Optional[set] = None) -> None:
        self._uninstall_exit, self._done, self._refused = {}, set(), {}
        self.downloads.new_goal_state()
        signing.report_signed(egs, self.lib_dir)
        if egs.on_hold and self.conf.enable_over_provisioning:
            self._agent_event("Extension handling is on hold")
            return
        unsupported = [f for f in egs.required_features if f not in SUPPORTED_FEATURES]
        if unsupported:
            msg = f"Failing GS {egs.id} as Unsupported features found: {', '.join(unsupported)}"
            log.error("{0}", msg)
            events.add_event(events.WALAEventOperation.GoalStateUnsupportedFeatures, is_success=False, message=msg,
                             log_event=False, lib_dir=self.lib_dir)
            self.unsupported = True
            self.gs_status = goal_state_aggregate_status(egs.svd_sequence_number, "Failed",
                                                         CODE_UNSUPPORTED_FEATURES, msg)
            return
        self.unsupported = False
        self.egs = egs
        for ext in egs.extensions:
            for s in ext.settings:
                if s.protected_settings:
                    log.register_secret(s.protected_settings)
        if not self.conf.extensions_enabled:
            for ext in egs.extensions:
                code = 1009 if ext.state == "enabled" else 1010
                self._report(ext, None, ExtensionError(DISABLED_MESSAGE, code=code), ext.version)
            return
        policy_error = self._load_policy()
        pairs = ordered_pairs(egs.extensions)
        if only is not None:
            pairs = [p for p in pairs if p[1].name in only]
        max_key = max((p[0] for p in pairs), default=0)
        start = time.monotonic()
        blocked: Optional[str] = None
        for key, ext, settings in pairs:
            operation, code = DISALLOWED.get(ext.state, DISALLOWED["enabled"])
            if policy_error is not None:
                self._disallow(ext, settings, code, f"Extension will not be processed: {policy_error}")
                continue
            if blocked is not None:
                self._report(ext, settings, ExtensionError(blocked, code=-1), self._version_for_report(ext))
                continue
            if not self._policy.should_allow(ext.name):
                self._disallow(ext, settings, code, (
                    f"Extension will not be processed: failed to {operation} extension '{ext.name}' because it is "
                    f"not specified as an allowed extension. To {operation}, add the extension to the list of "
                    f"allowed extensions in the policy file ('{self.conf.policy_file_path}')."))
                ok = False
            else:
                ok = self._handle(ext, settings)
            if 0 <= key < max_key:
                full = f"{ext.name}.{settings.name}" if settings is not None and ext.supports_multi_config \
                    else ext.name
                reason = None if ok else \
                    f"Skipping processing of extensions since execution of dependent extension {full} failed"
                if ok and settings is not None:
                    reason = self._wait_for(ext, settings, start, full)
                if reason is not None:
                    blocked = (f"Skipping processing of extensions since execution of dependent extension "
                               f"{ext.name} failed")
                    log.warn("Dependent extension {0} failed or timed out, will skip processing the rest of the "
                             "extensions", full)
                    events.add_event(events.WALAEventOperation.ExtensionProcessing, name=full,
                                     version=self.versions.get(ext.name, ext.version), is_success=False,
                                     message=reason, log_event=False, lib_dir=self.lib_dir)
        self._cleanup({ext.name for ext in egs.extensions})

    def _load_policy(self) -> Optional[Exception]:
        """The policy for this goal state (saved in its history); the error that blocks everything, if any."""
        try:
            self._policy = policy.load(self.conf)
        except Exception as e:  # an unreadable or invalid policy blocks every extension
            self._policy = policy.PolicyEngine()
            return e
        if self._policy.contents is not None:
            self.protocol.history.save(policy.HISTORY_NAME, self._policy.contents)
        return None

    def _disallow(self, ext: Extension, settings: Optional[ExtensionSettings], code: int, message: str) -> None:
        """Report an extension the agent will not process (policy): NotReady handler status; for an enable
        with settings also an error status for the extension (CRP then matches its sequence number); an
        ``ExtensionPolicy`` event. No command runs."""
        version = self._version_for_report(ext)
        handler = Handler(self.ctx, ext.name, version, ext.supports_multi_config)
        handler.report_error(code, message)
        self.versions.setdefault(ext.name, version)
        mc = ext.supports_multi_config and settings is not None
        full_name = f"{ext.name}.{settings.name}" if mc else ext.name
        if settings is not None and ext.state == "enabled":
            try:
                ext_status.write_placeholder(handler.files.status_file(settings.sequence_number,
                                                                       settings.name if mc else None),
                                             full_name, None, code, message, overwrite=True)
            except OSError as e:
                log.warn("Could not write the error status of {0}: {1}", full_name, e)
        events.add_event(events.WALAEventOperation.ExtensionPolicy, is_success=False, message=message,
                         name=full_name, version=version, lib_dir=self.lib_dir)

    def _handle(self, ext: Extension, settings: Optional[ExtensionSettings]) -> bool:
        try:
            if ext.invalid_setting_reason:
                self._refuse(ext, settings)
                return False
            self._certificates_for(ext)
            if ext.state == "enabled":
                self._enable(ext, settings)
            elif ext.state == "uninstall":
                self._uninstall(ext)
            elif ext.state == "disabled":  # deprecated: upstream reports that it is still used
                self._agent_event(f'Goal State is requesting "disabled" state on {ext.name} '
                                  f'[Activity ID: {self.egs.activity_id if self.egs else ""}]',
                                  events.WALAEventOperation.RequestedStateDisabled)
                self._disable(ext, settings)
            else:
                raise ExtensionError(f"Unknown requested state {ext.state!r}", code=-1)
            self.disk_full.succeeded(ext.name)
            return True
        except signing.PackageValidationError as e:  # the policy requires a signature: treated as disallowed
            self._disallow(ext, settings, e.code, e.msg)
            return False
        except Exception as e:
            if isinstance(e, CommandFailed):  # upstream reports the error as it prints: with its class
                err = ExtensionError(e.upstream_text, code=e.code)
            else:
                err = e if isinstance(e, ExtensionError) else ExtensionError(f"{type(e).__name__}: {e}", code=-1)
            version = self._version_for_report(ext)
            if disk_full(e):
                err = self.disk_full.record(ext.name, err)
                if self.ctx.event is not None:
                    self.ctx.event(diskfull.EVENT, name=ext.name, version=version, is_success=False,
                                   message=err.msg)
            log.error("[{0}] {1}", ext.name, err.msg)
            self._report(ext, settings, err, version)
            return False

    def _refuse(self, ext: Extension, settings: Optional[ExtensionSettings]) -> None:
        """A handler whose goal-state entry was refused at the edge (extconfig): upstream's config error
        status (NotReady, -1), an InvalidExtensionConfig event and a log line naming it; nothing runs."""
        message = (f"Ran into config errors: {ext.invalid_setting_reason}. \nPlease retry again as another "
                   f"operation with updated settings")
        log.error("[{0}] Refusing the handler {0!r} version {1!r}: {2}", ext.name, ext.version,
                  ext.invalid_setting_reason)
        self._report(ext, settings, ExtensionError(message, code=-1), self._version_for_report(ext))
        if self.ctx.event is not None:
            try:
                self.ctx.event("InvalidExtensionConfig", name=ext.name, version=ext.version, is_success=False,
                               message=message, duration=0)
            except Exception as e:  # telemetry never breaks processing
                log.warn("Event failed: {0}", e)

    def _certificates_for(self, ext: Extension) -> None:
        """Before any command of ``ext``: if its protected settings name a ``<thumbprint>.prv`` not on disk
        yet, wait for the goal state's certificate helper; otherwise (a disable, an update with the
        certificates already there) go on at once."""
        if self._wait_for_certificates is not None:
            self._wait_for_certificates([s.certificate_thumbprint for s in ext.settings
                                         if s.protected_settings and s.certificate_thumbprint], self.lib_dir)

    def _report(self, ext: Extension, settings: Optional[ExtensionSettings], err: ExtensionError,
                version: str) -> None:
        if ext.unsafe:  # its name or version may not become a path: the status lives in memory only
            self._refused[ext.name] = {"handlerVersion": ext.version, "handlerName": ext.name, "status": "NotReady",
                                       "code": err.code, "useExactVersion": True,
                                       "formattedMessage": {"lang": "en-US", "message": err.msg}}
            return
        handler = Handler(self.ctx, ext.name, version, ext.supports_multi_config)
        handler.report_error(err.code, err.msg)
        self.versions.setdefault(ext.name, version)
        if ext.supports_multi_config and settings is not None:
            try:
                ext_status.write_placeholder(handler.files.status_file(settings.sequence_number, settings.name),
                                             settings.name, ext.state.capitalize(), err.code, err.msg)
            except OSError as e:
                log.warn("Could not write a placeholder status for {0}: {1}", settings.name, e)

    def _version_for_report(self, ext: Extension) -> str:
        if ext.unsafe:
            return ext.version
        return self.versions.get(ext.name) or (installed_versions(self.lib_dir, ext.name) or [ext.version])[-1]

    def _enable(self, ext: Extension, settings: Optional[ExtensionSettings]) -> None:
        packages, location = self.downloads.packages(ext)
        pkg = select_package(packages, ext.version)
        if pkg is None:
            raise ExtensionError(f"Unable to find version {ext.version} in manifest for extension {ext.name}",
                                 code=-1)
        installed = installed_versions(self.lib_dir, ext.name)
        old_version = installed[-1] if installed else None
        target = Handler(self.ctx, ext.name, pkg.version, ext.supports_multi_config)
        self.versions[ext.name] = pkg.version
        uninstall_exit = self._uninstall_exit.get(ext.name, NOT_RUN)
        enforce = self._policy.signature_required(ext.name)
        if target.state() in (NOT_INSTALLED, FAILED_UPGRADE):
            target.files.set_state(NOT_INSTALLED)
            checks = signing.SignatureCheck(ext.name, pkg.version, ext.encoded_signature, self.lib_dir,
                                            validate=self.conf.debug_enable_signature_validation, enforce=enforce,
                                            policy_file=self.conf.policy_file_path)
            self.downloads.install(target.files, ext, pkg.version, pkg.uris, location, checks)
            if checks.validated:
                signing.save_validated(target.files.base_dir, self.lib_dir)
            target.check_multi_config()
            target.files.write_settings(settings, ext.supports_multi_config)
            if old_version is None or old_version == pkg.version:
                target.install(settings=settings)
            else:
                old = Handler(self.ctx, ext.name, old_version, ext.supports_multi_config)
                uninstall_exit = run_update(old, target, ext.settings, ext.settings, settings)
                self._uninstall_exit[ext.name] = uninstall_exit
        else:
            if enforce and not signing.is_validated(target.files.base_dir):
                raise signing.PackageValidationError(
                    f"Extension will not be processed: the extension policy ('{self.conf.policy_file_path}') "
                    f"requires a valid signature for '{ext.name}', and the installed package "
                    f"{ext.name}-{pkg.version} was not validated", code=signing.CODE_SIGNATURE)
            target.check_multi_config()
            # Already installed: enable again, as upstream does for every goal state it processes — the first one
            # after a restart included (extensions rely on it to come back after a reboot)
            target.files.write_settings(settings, ext.supports_multi_config)
        if settings is None or settings.state == "enabled":
            target.enable(settings, uninstall_exit)
            return
        # multi-config extension requested "disabled": delete it; errors only logged (04 §7.5)
        try:
            if target.files.ext_state(settings.name) != "disabled":
                target.disable(settings, delete_extension=True)
        except ExtensionError as e:
            target.log.warn("Disable of {0} failed (ignored): {1}", settings.name, e.msg)
        target.files.remove_mc_extension_files(settings.name)

    def _uninstall(self, ext: Extension) -> None:
        if ext.name in self._done:
            return
        self._done.add(ext.name)
        installed = installed_versions(self.lib_dir, ext.name)
        if installed:
            h = Handler(self.ctx, ext.name, installed[-1], ext.supports_multi_config)
            if h.state() == ENABLED:
                for s in h.enabled_settings(ext.settings):
                    h.disable(s)
            try:
                h.uninstall()
            except ExtensionError as e:
                h.log.warn("Uninstall failed (the handler is removed anyway): {0}", e.msg)
        for name, version, _ in handler_dirs(self.lib_dir):
            if name == ext.name:
                Handler(self.ctx, name, version).remove()
        self.versions.pop(ext.name, None)

    def _disable(self, ext: Extension, settings: Optional[ExtensionSettings]) -> None:
        installed = installed_versions(self.lib_dir, ext.name)
        if not installed:
            return
        h = Handler(self.ctx, ext.name, installed[-1], ext.supports_multi_config)
        self.versions[ext.name] = installed[-1]
        if h.state() == ENABLED:
            if settings is not None and ext.supports_multi_config and h.files.ext_state(settings.name) != "enabled":
                return
            h.disable(settings)

    def _wait_for(self, ext: Extension, settings: ExtensionSettings, start: float, full: str) -> Optional[str]:
        """Wait until the extension reports success (None) or error/deadline (the reason, worded as upstream's);
        a missing status file means "keep waiting". Polls quickly at first, then every ``dependency_poll`` s."""
        files = HandlerFiles(self.lib_dir, ext.name, self.versions.get(ext.name, ext.version), self.ctx.log_root)
        path = files.status_file(settings.sequence_number, settings.name if ext.supports_multi_config else None)
        delay = 0.02
        while True:
            value = ext_status.status_value(path)
            if value == "success":
                return None
            if value == "error":
                return f"Dependent Extension {full} did not succeed. Status was {value}"
            if time.monotonic() - start > self.dependency_deadline:
                log.warn("Timed out waiting for {0} to report a terminal status", ext.name)
                return (f"Dependent Extension {full} did not reach a terminal state within the allowed timeout. "
                        f"Last status was {value}")
            time.sleep(delay)
            delay = min(delay * 2, self.dependency_poll)

    def _cleanup(self, names: set) -> None:
        """04 §9: remove handlers that are not in the goal state (no commands run) and orphan zips."""
        for name, version, _ in handler_dirs(self.lib_dir):
            if name not in names:
                log.info("Removing handler {0}-{1}: not in the goal state", name, version)
                Handler(self.ctx, name, version).remove()
                self.versions.pop(name, None)
        try:
            entries = os.listdir(system.path(self.lib_dir))
        except OSError:
            return
        for entry in entries:
            if entry.endswith(".zip") and "__" in entry and not entry.startswith("WALinuxAgent"):
                name, _, version = entry[:-4].rpartition("__")
                if not system.exists(os.path.join(self.lib_dir, f"{name}-{version}")):
                    system.remove(os.path.join(self.lib_dir, entry))

    # --- status ---------------------------------------------------------------------------------------------
    def handler_statuses(self) -> list:
        """handlerAggregateStatus items (04 §12)."""
        try:
            exts = self.egs.extensions if self.egs is not None and not self.unsupported else self._on_disk()
            out: list = []
            for ext in exts:
                out.extend(self._status_of(ext))
            return out
        except Exception as e:
            log.periodic(1800, log.WARNING, "Failed to collect extension statuses: {0}", e)
            return []

    def _on_disk(self) -> list:
        by_name: dict = {}
        for name, version, _ in handler_dirs(self.lib_dir):
            if name not in by_name or version_key(version) > version_key(by_name[name]):
                by_name[name] = version
        out = []
        for name, version in sorted(by_name.items()):
            files = HandlerFiles(self.lib_dir, name, version, self.ctx.log_root)
            mc_names = files.mc_extension_names()
            ext = Extension(name=name, version=version, state="enabled", supports_multi_config=bool(mc_names))
            for n in mc_names:
                seq = files.latest_seq(n)
                if seq is not None:
                    ext.settings.append(ExtensionSettings(name=n, sequence_number=seq,
                                                          state=files.ext_state(n) or "enabled"))
            out.append(ext)
        return out

    def _status_of(self, ext: Extension) -> list:
        if ext.unsafe:
            refused = self._refused.get(ext.name)
            return [dict(refused)] if refused is not None else []
        version = self.versions.get(ext.name)
        if version is None:
            candidates = [v for n, v, _ in handler_dirs(self.lib_dir) if n == ext.name]
            version = max(candidates, key=version_key) if candidates else None
        if version is None:
            return []
        files = HandlerFiles(self.lib_dir, ext.name, version, self.ctx.log_root)
        hs = files.status()
        if hs is None:
            if ext.state != "uninstall":
                log.periodic(1800, log.WARNING, "No handler status found for {0}", ext.name)
            return []
        state = files.state()
        base: dict = {"handlerVersion": version, "handlerName": ext.name, "status": hs.get("status", "NotReady"),
                      "code": hs.get("code", 0), "useExactVersion": True}
        message = hs.get("message")
        if state != NOT_INSTALLED:
            message = self._heartbeat(files, base, message)
        full = self.disk_full.error(ext.name)
        if full is not None:  # the HandlerStatus file may be stale: the disk refused the new one
            base["status"], base["code"], message = "NotReady", full.code, full.msg
        if message is not None:
            base["formattedMessage"] = {"lang": "en-US", "message": message}
        mc = ext.supports_multi_config
        if not ext.settings:
            seq = files.latest_seq()
            if seq is None or (state == NOT_INSTALLED and not system.exists(files.status_file(seq))):
                return [base]
            return [dict(base, runtimeSettingsStatus={
                "settingsStatus": ext_status.read_status(files.status_file(seq), ext.name), "sequenceNumber": seq})]
        out = []
        for s in ext.settings:
            if mc and s.state == "disabled" and files.ext_state(s.name) == "disabled":
                continue
            path = files.status_file(s.sequence_number, s.name if mc else None)
            if state == NOT_INSTALLED and not system.exists(path) and full is None:
                out.append(dict(base))
                continue
            settings_status = (ext_status.error_status(s.name or ext.name, full.code, full.msg)
                               if full is not None and not system.exists(path) else
                               ext_status.read_status(path, s.name))
            rs: dict = {"settingsStatus": settings_status, "sequenceNumber": s.sequence_number}
            if mc:
                rs["extensionName"] = s.name
            out.append(dict(base, runtimeSettingsStatus=rs))
        return out or [base]

    def _heartbeat(self, files: HandlerFiles, base: dict, message: Optional[str]) -> Optional[str]:
        try:
            if not load_handler_manifest(files.manifest_file).report_heartbeat:
                return message
        except ExtensionError:
            return message
        try:
            value, hb_message = ext_status.read_heartbeat(files.heartbeat_file)
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            base["status"], base["code"] = "NotReady", -1
            return "Failed to get heart beat file"
        if value:
            base["status"] = value
        return hb_message if hb_message is not None else message
