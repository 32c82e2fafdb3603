"""The kit's flow: a handler folder driven through its whole contract by the agent's own extensions code.

The handler is packaged and published by the fabric emulator on 127.0.0.1, which also delivers the goal
states and encrypts the protected settings to its tenant certificate; the agent's own pieces (a Config, the
WireProtocol, the ExtensionsManager the ext-handler runs) fetch them over real HTTP and drive the handler
through: install + enable with public and protected settings → enable with a new sequence number → update to
a second version → disable → uninstall. Every command is reported with its environment, duration, exit code
and output, and the contract is checked (HandlerManifest as upstream reads it, certificates, status file
shape, heartbeat, exit codes, timing). ``guestagent ext-test`` runs this inside the lab's sandbox at the real
paths (:mod:`guestagent.kit.main`); the integration tests run it in-process in a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional, TextIO

from guestagent.errors import CryptError, ExtensionError
from guestagent.exthandler.extensions.manifest import COMMANDS, HandlerManifest, parse_handler_manifest
from guestagent.exthandler.extensions.runner import CommandResult
from guestagent.exthandler.extensions.state import HandlerFiles
from guestagent.fabric.scenario import ExtensionSpec, SettingsSpec
from guestagent.kit.lab import ExtensionLab
from guestagent.protocol.certificates import decrypt_protected_settings

#: Commands taking longer than this are flagged (the platform's budget is the 04 §6.3 timeout).
SLOW_COMMAND = 60.0

#: How long a step waits for the extension to leave "transitioning" (a handler's enable may fork a worker that
#: writes its final status later, as CustomScript does); the agent itself would wait up to the 90-min timeout.
SETTLE = 60.0

#: A JSON document as decoded (settings given with --settings / --protected-settings).
Json = object


@dataclass
class KitOptions:
    """What the user chose; ``public`` / ``protected`` replace the kit's own settings (a real handler such as
    CustomScript needs its own, e.g. ``commandToExecute``)."""
    name: Optional[str] = None
    versions: tuple[str, str] = ("1.0.0", "1.1.0")
    fast_track: bool = False
    settle: float = SETTLE
    public: Json = None
    protected: Optional[dict] = None
    #: Where the handler's files live: None = folders in a temporary directory; the sandbox passes the real
    #: /var/lib/waagent and /var/log/azure.
    lib_dir: Optional[str] = None
    log_root: Optional[str] = None
    #: A folder that receives each command's output, the status files after every step and, at the end, the
    #: handler's logs (never deleted by the kit).
    report_dir: Optional[str] = None
    extra_logs: list[str] = field(default_factory=list)


# --- the report -----------------------------------------------------------------------------------------
class Report:
    def __init__(self, out: Optional[TextIO] = None, folder: Optional[str] = None):
        self.out = out or sys.stdout
        self.folder = folder
        self.problems: list[str] = []
        self.commands: list[CommandResult] = []

    def command(self, result: CommandResult) -> None:
        self.commands.append(result)
        w = self.out.write
        w(f"  -- {result.op}: exit code {result.exit_code}{' (TIMED OUT)' if result.timed_out else ''} "
          f"in {result.duration:.3f} s\n     command: {result.command}\n")
        for k, v in sorted(result.env.items()):
            w(f"     env {k}={v}\n")
        for line in result.output.splitlines():
            w(f"     | {line}\n")
        self.out.flush()
        if self.folder:
            path = os.path.join(self.folder, "commands", f"{len(self.commands):02d}-{result.op}.txt")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(f"command: {result.command}\nexit code: {result.exit_code}\ntimed out: {result.timed_out}\n"
                        f"duration: {result.duration:.3f} s\n")
                f.writelines(f"env {k}={v}\n" for k, v in sorted(result.env.items()))
                f.write(f"\n{result.output}\n")
        if result.duration > SLOW_COMMAND:
            self.problem(f"{result.op} took {result.duration:.1f} s (over {SLOW_COMMAND:.0f} s)")

    def step(self, title: str) -> None:
        self.out.write(f"\n== {title}\n")
        self.out.flush()

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.out.write(f"  !! {text}\n")

    def note(self, text: str) -> None:
        self.out.write(f"  {text}\n")


# --- HandlerManifest.json as upstream reads it -------------------------------------------------------------
def upstream_manifest_problems(text: str) -> list[str]:
    """What WALinuxAgent 2.15 would fail on when it reads this HandlerManifest.json (``load_manifest``:
    ``json.loads`` after removing a BOM, then ``data[0]``, ``data['handlerManifest']``, each
    ``<op>Command`` indexed when its operation runs and joined to the package root with ``cmd.lstrip``,
    ``updateMode.lower()``, ``resourceLimits.get``)."""
    try:
        data = json.loads(text.lstrip("\ufeff"))
    except ValueError as e:
        return [f"HandlerManifest.json is not JSON ({e}): upstream fails with 'Malformed manifest file' (code 1003)"]
    if not isinstance(data, list):
        return [f"HandlerManifest.json is a JSON {_kind(data)}, not a list: upstream reads data[0] and fails "
                f"(the document must be [{{\"handlerManifest\": {{...}}}}])"]
    if not data:
        return ["HandlerManifest.json is an empty list: upstream reads data[0] and fails"]
    entry = data[0]
    if not isinstance(entry, dict):
        return [f"HandlerManifest.json's first element is a JSON {_kind(entry)}, not an object: upstream fails"]
    handler = entry.get("handlerManifest")
    if not isinstance(handler, dict):
        what = "missing" if "handlerManifest" not in entry else f"a JSON {_kind(handler)}, not an object"
        return [f"handlerManifest is {what}: upstream fails ('Malformed manifest file')"]
    problems = []
    for op in COMMANDS:
        cmd = handler.get(f"{op}Command")
        if cmd is None:
            problems.append(f"handlerManifest.{op}Command is missing: upstream fails the {op} operation")
        elif not isinstance(cmd, str):
            problems.append(f"handlerManifest.{op}Command is a JSON {_kind(cmd)}, not a string: upstream fails "
                            f"the {op} operation")
    mode = handler.get("updateMode")
    if mode is not None and not isinstance(mode, str):
        problems.append(f"handlerManifest.updateMode is a JSON {_kind(mode)}: upstream fails on update "
                        f"(updateMode.lower())")
    limits = entry.get("resourceLimits")
    if limits is not None and not isinstance(limits, dict):
        problems.append(f"resourceLimits is a JSON {_kind(limits)}, not an object: upstream fails on install")
    return problems


def _kind(value: Json) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def check_manifest(folder: str, report: Report) -> Optional[HandlerManifest]:
    """The manifest checked as upstream reads it; None (the kit refuses the handler) when upstream would fail."""
    path = os.path.join(folder, "HandlerManifest.json")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        report.problem(f"HandlerManifest.json cannot be read: {e}")
        return None
    for problem in upstream_manifest_problems(text):
        report.problem(problem)
    if report.problems:
        return None
    try:
        manifest = parse_handler_manifest(text)
    except ExtensionError as e:
        report.problem(f"HandlerManifest.json: {e.msg} (code {e.code})")
        return None
    for op in COMMANDS:
        cmd = manifest.command(op)
        script = os.path.join(folder, cmd.lstrip("/").split()[0])
        if not os.path.isfile(script):
            report.problem(f"{op}Command {cmd!r}: {script} does not exist in the package (commands are paths "
                           f"relative to the package root)")
    for key in manifest.non_boolean:
        report.problem(f"handlerManifest.{key} should be a JSON boolean, not {manifest.handler[key]!r}")
    report.note(f"updateMode={'UpdateWithInstall' if manifest.update_with_install else 'UpdateWithoutInstall'} "
                f"reportHeartbeat={manifest.report_heartbeat} continueOnUpdateFailure="
                f"{manifest.continue_on_update_failure} supportsMultipleExtensions={manifest.supports_multiple_extensions}")
    return manifest


# --- the checks after each step ----------------------------------------------------------------------------
def _settle(lab: ExtensionLab, limit: float, report: Report) -> None:
    """Wait (up to ``limit`` s) until no extension status is transitioning, as the ext-handler would report."""
    start = time.monotonic()
    if lab.manager.converged():
        return
    while time.monotonic() - start < limit:
        time.sleep(0.2)
        if lab.manager.converged():
            report.note(f"final status written {time.monotonic() - start:.1f} s after the goal state was processed")
            return
    report.problem(f"the extension still reports transitioning {limit:.0f} s after the goal state was processed")


def check_status(lab: ExtensionLab, name: str, expect_seq: Optional[int], report: Report) -> None:
    entries = [e for e in lab.manager.handler_statuses() if e["handlerName"] == name]
    if expect_seq is None:
        if entries:
            report.problem(f"{name} is still reported after uninstall")
        else:
            report.note("handler no longer reported (removed)")
        return
    if not entries:
        report.problem("no handler status reported")
        return
    e = entries[0]
    msg = e.get("formattedMessage", {}).get("message")
    report.note(f"handler status: {e['status']} code {e['code']} version {e['handlerVersion']}: {msg}")
    rs = e.get("runtimeSettingsStatus")
    if not rs:
        report.problem("no extension status reported")
        return
    st = rs["settingsStatus"]["status"]
    fm = str((st.get("formattedMessage") or {}).get("message")).strip().replace("\n", "\\n")
    report.note(f"extension status (seq {rs['sequenceNumber']}): {st['status']} code {st['code']} "
                f"operation {st.get('operation')}: {fm}")
    if rs["sequenceNumber"] != expect_seq:
        report.problem(f"status reported for sequence number {rs['sequenceNumber']}, expected {expect_seq}")
    if st["status"] not in ("success", "transitioning", "warning"):
        report.problem(f"extension reported {st['status']} (code {st['code']}): {fm}")
    if st["code"] == 1012:
        report.problem("the status file is invalid (04 §10)")


def _check_files(lab: ExtensionLab, files: HandlerFiles, ext: ExtensionSpec, manifest: HandlerManifest,
                 secret: dict, report: Report, show_certificate: bool) -> None:
    """The settings as the agent received them (certificate, decryption) and as it wrote them (mode, content)."""
    got = [s for e in lab.goal_state.extensions_goal_state.extensions if e.name == ext.name for s in e.settings]
    if not got or not got[0].protected_settings or not got[0].certificate_thumbprint:
        report.problem("the goal state carries no protected settings for the handler")
        return
    received = got[0]
    _check_certificate(lab.lib_dir, received.certificate_thumbprint, report, show_certificate)
    try:
        plain = json.loads(decrypt_protected_settings(received.protected_settings, received.certificate_thumbprint,
                                                      lab.lib_dir))
        if plain != secret:
            report.problem("protected settings do not decrypt to what was sent")
    except ValueError as e:
        report.problem(f"protected settings are not JSON: {e}")
    except CryptError as e:
        report.problem(f"protected settings could not be decrypted: {e}")
    path = files.settings_file(ext.settings[0].seq_no)
    try:
        mode = os.stat(path).st_mode & 0o777
        with open(path, encoding="utf-8") as f:
            hs = json.load(f)["runtimeSettings"][0]["handlerSettings"]
        if mode != 0o600:
            report.problem(f"{path} has mode {mode:o}, expected 600")
        written = (hs.get("protectedSettings"), hs.get("protectedSettingsCertThumbprint"))
        if written != (received.protected_settings, received.certificate_thumbprint) and show_certificate:
            # Not the agent's doing: handlerutil2's scrub_settings_file (VMAccess) redacts its own copy.
            report.note(f"the handler rewrote {os.path.basename(path)} after reading it (protected settings or "
                        f"thumbprint redacted)")
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        report.problem(f"settings file {path}: {e}")
    leaks = [str(v) for v in _leaf_values(secret) if len(str(v)) >= 6]
    for command in report.commands:
        if any(v in command.output for v in leaks):
            report.problem(f"{command.op} printed the protected settings in clear text")
    if manifest.report_heartbeat and not os.path.exists(files.heartbeat_file):
        report.problem("reportHeartbeat is true but heartbeat.log was not written")


def _check_certificate(lib_dir: str, thumbprint: str, report: Report, show: bool) -> None:
    """The tenant certificate the settings name, where upstream writes it and handlers read it:
    ``<lib>/<THUMBPRINT>.crt`` and ``.prv`` (0600)."""
    crt, prv = (os.path.join(lib_dir, f"{thumbprint}.{ext}") for ext in ("crt", "prv"))
    missing = [p for p in (crt, prv) if not os.path.isfile(p)]
    if missing:
        report.problem(f"the certificate of the protected settings is not where handlers read it: "
                       f"{', '.join(missing)} missing")
        return
    mode = stat.S_IMODE(os.stat(prv).st_mode)
    if mode != 0o600:
        report.problem(f"{prv} has mode {mode:o}, expected 600")
    if show:
        report.note(f"certificate {thumbprint}: {crt}, {prv} (mode {mode:o})")


def _leaf_values(doc: Json) -> list[Json]:
    """Every scalar in a JSON document: the values a handler must never print."""
    if isinstance(doc, dict):
        return [v for item in doc.values() for v in _leaf_values(item)]
    if isinstance(doc, list):
        return [v for item in doc for v in _leaf_values(item)]
    return [] if doc is None or isinstance(doc, bool) else [doc]


def _check_order(report: Report) -> None:
    ops = [c.op for c in report.commands]
    report.step("command order")
    report.note(" -> ".join(ops))
    failed = [c for c in report.commands if c.exit_code != 0]
    for c in failed:
        report.problem(f"{c.op} exited with {c.exit_code}")


# --- the report folder -------------------------------------------------------------------------------------
def _keep_status(files: HandlerFiles, dest: str) -> None:
    """The handler's status files and the agent's state of it after a step (the directory goes on uninstall)."""
    kept = [files.status_dir, files.heartbeat_file, os.path.join(files.config_dir, "HandlerState"),
            os.path.join(files.config_dir, "HandlerStatus"), os.path.join(files.base_dir, "mrseq")]
    for src in kept:
        target = os.path.join(dest, os.path.relpath(src, files.base_dir))
        if os.path.isdir(src):
            shutil.copytree(src, target, dirs_exist_ok=True)
        elif os.path.isfile(src):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(src, target)


def _keep_logs(log_dir: str, extra: list[str], dest: str) -> None:
    if os.path.isdir(log_dir):
        shutil.copytree(log_dir, os.path.join(dest, "logs", os.path.basename(log_dir)), symlinks=True,
                        dirs_exist_ok=True)
    for path in extra:
        if os.path.isfile(path):
            os.makedirs(os.path.join(dest, "logs"), exist_ok=True)
            shutil.copy2(path, os.path.join(dest, "logs", os.path.basename(path)))


# --- the flow ----------------------------------------------------------------------------------------------
def run_ext_test(folder: str, options: Optional[KitOptions] = None, out: Optional[TextIO] = None) -> int:
    """The kit flow; returns 0 when every step kept the contract (the fabric encrypts the protected settings to
    its tenant certificate and every command's output is checked for their values)."""
    opts = options or KitOptions()
    report = Report(out, opts.report_dir)
    folder = os.path.abspath(folder)
    report.step(f"HandlerManifest.json of {folder}")
    manifest = check_manifest(folder, report)
    if manifest is None:
        report.step("result")
        report.note("refused: upstream would fail on this handler before running it (nothing was run)")
        return 1
    name = opts.name or f"Kit.{manifest.data.get('name') or os.path.basename(folder)}"
    v1, v2 = opts.versions
    secret = opts.protected if opts.protected is not None else {"password": f"kit-{os.getpid()}-{time.time_ns()}"}
    work = tempfile.mkdtemp(prefix="guestagent-ext-test-")
    lab = ExtensionLab(work, sink=report.command, lib_dir=opts.lib_dir, log_root=opts.log_root)
    report.note(f"handler {name} {v1} and {v2}; lib dir {lab.lib_dir}, logs {lab.log_root}")
    try:
        lab.publish(name, {v1: lab.prepare(folder, v1), v2: lab.prepare(folder, v2)})

        def spec(version: str, seq: int, state: str = "enabled") -> ExtensionSpec:
            settings = opts.public if opts.public is not None else {"kit": "public", "seq": seq}
            return ExtensionSpec(name, version, state=state,
                                 settings=[SettingsSpec(seq_no=seq, public=settings, protected=secret)])

        steps = [("install-enable", f"install + enable {v1} (seq 0, public + protected settings)", spec(v1, 0), 0),
                 ("new-seq", f"enable {v1} with a new sequence number (seq 1)", spec(v1, 1), 1),
                 ("update", f"update {v1} -> {v2} (seq 2)", spec(v2, 2), 2),
                 ("disable", f"disable {v2}", spec(v2, 2, "disabled"), 2),
                 ("uninstall", f"uninstall {v2}", spec(v2, 2, "uninstall"), None)]
        for number, (key, title, ext, seq) in enumerate(steps, 1):
            report.step(title)
            lab.apply([ext], fast_track=opts.fast_track)
            report.note(f"goal state fetched in {lab.fetch_seconds:.3f} s, processed in {lab.process_seconds:.3f} s")
            _settle(lab, opts.settle, report)
            check_status(lab, name, seq, report)
            files = HandlerFiles(lab.lib_dir, name, lab.manager.versions.get(name, ext.version), lab.log_root)
            if seq is not None:
                _check_files(lab, files, ext, manifest, secret, report, show_certificate=number == 1)
            if opts.report_dir:
                _keep_status(files, os.path.join(opts.report_dir, "status", f"{number}-{key}"))
        _check_order(report)
    finally:
        lab.close()
        if opts.report_dir:
            _keep_logs(os.path.join(lab.log_root, name), opts.extra_logs, opts.report_dir)
        shutil.rmtree(work, ignore_errors=True)
    report.step("result")
    if report.problems:
        report.note(f"{len(report.problems)} problem(s):")
        for p in report.problems:
            report.note(f"  - {p}")
        return 1
    report.note("the handler kept the contract")
    return 0
