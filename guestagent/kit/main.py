"""``guestagent ext-test DIR``: run an extension handler folder through its whole contract.

The handler is packaged and published by the fabric emulator on 127.0.0.1, which also delivers the goal
states and encrypts the protected settings to its tenant certificate; the agent's own pieces (a Config, the
WireProtocol, the ExtensionsManager the ext-handler runs) fetch them over real HTTP and drive the handler
through: install + enable with public and protected settings → enable with a new sequence number → update to a second version
→ disable → uninstall. Every command is reported with its environment, duration, exit code and output, and
the contract is checked (HandlerManifest fields, status file shape, heartbeat, exit codes, timing).
Everything lives in a temporary directory; nothing on the host is touched and nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Optional, TextIO

from guestagent.exthandler.extensions.manifest import HandlerManifest
from guestagent.exthandler.extensions.runner import CommandResult
from guestagent.fabric.scenario import ExtensionSpec, SettingsSpec
from guestagent.kit.lab import ExtensionLab

#: Commands taking longer than this are flagged (the platform's budget is the 04 §6.3 timeout).
SLOW_COMMAND = 60.0

#: A JSON document as decoded (settings given with --settings / --protected-settings).
Json = object


# --- the report -----------------------------------------------------------------------------------------
class Report:
    def __init__(self, out: Optional[TextIO] = None):
        self.out = out or sys.stdout
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
        if result.duration > SLOW_COMMAND:
            self.problem(f"{result.op} took {result.duration:.1f} s (over {SLOW_COMMAND:.0f} s)")

    def step(self, title: str) -> None:
        self.out.write(f"\n== {title}\n")

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.out.write(f"  !! {text}\n")

    def note(self, text: str) -> None:
        self.out.write(f"  {text}\n")


def check_manifest(folder: str, report: Report) -> Optional[HandlerManifest]:
    from guestagent.errors import ExtensionError
    from guestagent.exthandler.extensions.manifest import COMMANDS, load_handler_manifest

    try:
        manifest = load_handler_manifest(os.path.join(folder, "HandlerManifest.json"))
    except ExtensionError as e:
        report.problem(f"HandlerManifest.json: {e.msg} (code {e.code})")
        return None
    for op in COMMANDS:
        try:
            cmd = manifest.command(op)
        except ExtensionError:
            report.problem(f"handlerManifest.{op}Command is missing")
            continue
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
    fm = (st.get("formattedMessage") or {}).get("message")
    report.note(f"extension status (seq {rs['sequenceNumber']}): {st['status']} code {st['code']} "
                f"operation {st.get('operation')}: {fm}")
    if rs["sequenceNumber"] != expect_seq:
        report.problem(f"status reported for sequence number {rs['sequenceNumber']}, expected {expect_seq}")
    if st["status"] not in ("success", "transitioning", "warning"):
        report.problem(f"extension reported {st['status']} (code {st['code']}): {fm}")
    if st["code"] == 1012:
        report.problem("the status file is invalid (04 §10)")


def run_ext_test(folder: str, name: Optional[str] = None, version2: Optional[str] = None,
                 out: Optional[TextIO] = None, fast_track: bool = False, public: Json = None,
                 protected_settings: Optional[dict] = None) -> int:
    """The kit flow; returns 0 when every step kept the contract.

    ``public`` / ``protected_settings`` replace the kit's own settings (a real handler such as
    CustomScript needs its own, e.g. ``commandToExecute``); the fabric encrypts the protected ones to
    its tenant certificate and every command's output is checked for their values."""
    report = Report(out)
    folder = os.path.abspath(folder)
    report.step(f"HandlerManifest.json of {folder}")
    manifest = check_manifest(folder, report)
    if manifest is None:
        return 1
    name = name or f"Kit.{manifest.data.get('name') or os.path.basename(folder)}"
    v1, v2 = "1.0.0", version2 or "1.1.0"
    secret = protected_settings if protected_settings is not None else \
        {"password": f"kit-{os.getpid()}-{time.time_ns()}"}
    work = tempfile.mkdtemp(prefix="guestagent-ext-test-")
    lab = ExtensionLab(work, sink=report.command)
    try:
        lab.publish(name, {v1: lab.prepare(folder, v1), v2: lab.prepare(folder, v2)})

        def spec(version: str, seq: int, state: str = "enabled") -> ExtensionSpec:
            settings = public if public is not None else {"kit": "public", "seq": seq}
            return ExtensionSpec(name, version, state=state,
                                 settings=[SettingsSpec(seq_no=seq, public=settings, protected=secret)])

        steps = [(f"install + enable {v1} (seq 0, public + protected settings)", spec(v1, 0), 0),
                 (f"enable {v1} with a new sequence number (seq 1)", spec(v1, 1), 1),
                 (f"update {v1} -> {v2} (seq 2)", spec(v2, 2), 2),
                 (f"disable {v2}", spec(v2, 2, "disabled"), 2),
                 (f"uninstall {v2}", spec(v2, 2, "uninstall"), None)]
        for title, ext, seq in steps:
            report.step(title)
            lab.apply([ext], fast_track=fast_track)
            report.note(f"goal state fetched in {lab.fetch_seconds:.3f} s, processed in {lab.process_seconds:.3f} s")
            check_status(lab, name, seq, report)
            if seq is not None:
                _check_files(lab, ext, manifest, secret, report)
        _check_order(report)
    finally:
        lab.close()
        shutil.rmtree(work, ignore_errors=True)
    report.step("result")
    if report.problems:
        report.note(f"{len(report.problems)} problem(s):")
        for p in report.problems:
            report.note(f"  - {p}")
        return 1
    report.note("the handler kept the contract")
    return 0


def _check_files(lab: ExtensionLab, ext: ExtensionSpec, manifest: HandlerManifest, secret: dict,
                 report: Report) -> None:
    from guestagent.errors import CryptError
    from guestagent.exthandler.extensions.state import HandlerFiles
    from guestagent.protocol.certificates import decrypt_protected_settings

    files = HandlerFiles(lab.lib_dir, ext.name, lab.manager.versions.get(ext.name, ext.version), lab.log_root)
    path = files.settings_file(ext.settings[0].seq_no)
    try:
        mode = os.stat(path).st_mode & 0o777
        with open(path, encoding="utf-8") as f:
            hs = json.load(f)["runtimeSettings"][0]["handlerSettings"]
        if mode != 0o600:
            report.problem(f"{path} has mode {mode:o}, expected 600")
        plain = json.loads(decrypt_protected_settings(hs["protectedSettings"], hs["protectedSettingsCertThumbprint"],
                                                      lab.lib_dir))
        if plain != secret:
            report.problem("protected settings do not decrypt to what was sent")
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        report.problem(f"settings file {path}: {e}")
    except CryptError as e:  # reported, not fatal
        report.problem(f"protected settings could not be decrypted: {e}")
    leaks = [str(v) for v in _leaf_values(secret) if len(str(v)) >= 6]
    for command in report.commands:
        if any(v in command.output for v in leaks):
            report.problem(f"{command.op} printed the protected settings in clear text")
    if manifest.report_heartbeat and not os.path.exists(files.heartbeat_file):
        report.problem("reportHeartbeat is true but heartbeat.log was not written")


def _leaf_values(doc: Json) -> list[Json]:
    """Every scalar in a JSON document: the values a handler must never print."""
    if isinstance(doc, dict):
        return [v for item in doc.values() for v in _leaf_values(item)]
    if isinstance(doc, list):
        return [v for item in doc for v in _leaf_values(item)]
    return [] if doc is None or isinstance(doc, bool) else [doc]


def _json_option(value: Optional[str], what: str) -> Json:
    """A JSON document given inline or as @FILE; a clear error when it is not JSON."""
    if value is None:
        return None
    try:
        if value.startswith("@"):
            with open(value[1:], encoding="utf-8") as f:
                return json.load(f)
        return json.loads(value)
    except (OSError, ValueError) as e:
        raise ValueError(f"{what} is not a JSON document: {e}") from None


def _check_order(report: Report) -> None:
    ops = [c.op for c in report.commands]
    report.step("command order")
    report.note(" -> ".join(ops))
    failed = [c for c in report.commands if c.exit_code != 0]
    for c in failed:
        report.problem(f"{c.op} exited with {c.exit_code}")


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(prog="guestagent ext-test",
                                     description="Run an extension handler folder through the handler contract")
    parser.add_argument("folder", help="handler folder (with HandlerManifest.json at its root)")
    parser.add_argument("--name", help="handler name (Publisher.Type); default Kit.<manifest name>")
    parser.add_argument("--fast-track", action="store_true", help="deliver goal states as vmSettings (FastTrack)")
    parser.add_argument("--settings", metavar="JSON|@FILE", help="public settings for every step (default: the kit's)")
    parser.add_argument("--protected-settings", metavar="JSON|@FILE",
                        help="protected settings (a JSON object), encrypted by the fabric to its tenant certificate")
    args = parser.parse_args(argv)
    try:
        public = _json_option(args.settings, "--settings")
        protected = _json_option(args.protected_settings, "--protected-settings")
        if protected is not None and not isinstance(protected, dict):
            raise ValueError("--protected-settings must be a JSON object")
    except ValueError as e:
        print(f"guestagent ext-test: {e}", file=sys.stderr)
        return 2
    if not os.path.isfile(os.path.join(args.folder, "HandlerManifest.json")):
        print(f"{args.folder}: no HandlerManifest.json", file=sys.stderr)
        return 2
    return run_ext_test(args.folder, name=args.name, fast_track=args.fast_track, public=public,
                        protected_settings=protected)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
