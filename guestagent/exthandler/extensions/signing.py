"""Extension package signatures in the ext-handler (upstream 2.15 ``signature_validation_util`` and
``signing_certificate_util``): the Microsoft root on disk, the package and ``signingInfo`` checks, and their
events and log lines.

Upstream 2.15 only warns when a check fails (``Debug.EnableSignatureValidation``); here a failed check is
an error that stops the extension when the policy says ``signatureRequired`` (a deliberate difference,
docs/compatibility.md). The CMS work runs in a short-lived interpreter (guestagent.protocol.signatures).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

from guestagent import events, log
from guestagent.errors import CommandError, ExtensionError
from guestagent.osutil import system
from guestagent.protocol.extconfig import ExtensionsGoalState

ROOT_FILE = "microsoft_root_certificate.pem"
#: The package's copy of the (public) Microsoft Root Certificate Authority 2011.
ROOT_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                         "data", ROOT_FILE)
#: Test-only: a PEM file of the root to trust *instead of* Microsoft's (the fabric's own signing CA).
TEST_ROOT_ENV = "GUESTAGENT_TEST_SIGNING_ROOT"
VALIDATED_FILE = "package_validated"
AGENT_LOG = "/var/log/waagent.log"
WARNING, ERROR = "WARNING", "ERROR"
_IGNORED = "\nThis failure can be safely ignored; will continue processing the package."
CODE_SIGNATURE = 1009  # upstream's terminal enable error (PluginEnableProcessingFailed)


class PackageValidationError(ExtensionError):
    """A signature or signingInfo check failed (raised only when the check is enforced)."""


def root_path(lib_dir: str) -> str:
    return os.path.join(lib_dir, ROOT_FILE)


def write_root_certificate(lib_dir: str) -> None:
    """At ext-handler start, as upstream: the root to ``<lib>/microsoft_root_certificate.pem`` (0600)."""
    path = root_path(lib_dir)
    try:
        with open(ROOT_DATA, encoding="ascii") as f:
            pem = f.read().strip()
        system.write_file(path, pem, mode=0o600)
        log.info("Signing certificate written to {0}", path)
    except OSError as e:
        msg = f"Failed to write signing certificate to file ('{path}'). Error details:\n{e}"
        log.error("{0}", msg)
        events.add_event(events.WALAEventOperation.SignatureValidation, is_success=False, message=msg,
                         log_event=False, lib_dir=lib_dir)


def trusted_root(lib_dir: str) -> str:
    """The real path of the root file to verify against (the test-only override is a real path)."""
    return os.environ.get(TEST_ROOT_ENV) or str(system.path(root_path(lib_dir)))


def _report(op: str, level: str, message: str, name: str, version: str, duration: int, lib_dir: str) -> None:
    """Upstream's validation event: INFO as is; WARNING logged with the 'can be ignored' note and sent
    prefixed ``[WARNING]``; ERROR logged and sent as is. Failures are sent with OperationSuccess false."""
    if level == ERROR:
        log.error("{0}", message)
        text, ok = message, False
    elif level == WARNING:
        message += _IGNORED
        log.warn("{0}", message)
        text, ok = f"[WARNING] {message}", False
    else:
        log.info("{0}", message)
        text, ok = message, True
    events.add_event(op, is_success=ok, message=text, name=name, version=version, duration=duration,
                     log_event=False, lib_dir=lib_dir)


def _ms_since(start: float) -> int:
    return int((time.monotonic() - start) * 1000)


def validate_signature(zip_file: str, encoded: str, name: str, version: str, lib_dir: str, level: str) -> None:
    """Raise PackageValidationError unless ``encoded`` signs the zip (events and logs as upstream)."""
    full = f"{name}-{version}"
    start = time.monotonic()
    op = events.WALAEventOperation
    _report(op.SignatureValidation, "INFO", f"Validating signature for package '{full}'", name, version, 0, lib_dir)
    root = trusted_root(lib_dir)
    if not os.path.isfile(root):
        shown = os.environ.get(TEST_ROOT_ENV) or root_path(lib_dir)
        msg = (f"Signature validation failed for package '{full}'. Error: signing certificate was not found at "
               f"expected location ('{shown}'). Try restarting the agent, or see log ('{AGENT_LOG}') for "
               "additional details.")
        _report(op.SignatureValidation, level, msg, name, version, 0, lib_dir)
        raise PackageValidationError(msg, code=CODE_SIGNATURE)
    error = _verify_isolated(str(system.path(zip_file)), encoded, root)
    if error is None:
        _report(op.PackageSignatureResult, "INFO", f"Successfully validated signature for package '{full}'",
                name, version, _ms_since(start), lib_dir)
        return
    msg = f"Signature validation failed for package '{full}'. \nError details:\n{error}"
    _report(op.PackageSignatureResult, level, msg, name, version, _ms_since(start), lib_dir)
    events.add_event(op.SignatureValidation, message=f"Package encoded signature: '{encoded}'", name=name,
                     version=version, log_event=False, lib_dir=lib_dir)
    raise PackageValidationError(msg, code=CODE_SIGNATURE)


def _verify_isolated(zip_file: str, encoded: str, root: str) -> Optional[str]:
    """None when the signature verifies, else why not. The crypto runs in a child interpreter unless it
    is loaded here already (the extension kit, tests)."""
    if "cryptography" in sys.modules:
        from guestagent.protocol import signatures

        try:
            with open(root, "rb") as f:
                roots = signatures.load_roots(f.read())
            signatures.verify_detached(zip_file, signatures.decode_signature(encoded), roots)
            return None
        except (signatures.SignatureError, OSError, ValueError) as e:
            return str(e)
    argv = [sys.executable, "-m", "guestagent.protocol.signatures", zip_file, root]
    try:
        result = system.run(argv, input=encoded, timeout=120, check=False, log=False)
        data = json.loads(result.stdout.strip().splitlines()[-1]) if result.ok else None
    except (OSError, ValueError, IndexError, CommandError) as e:
        return f"the verifier could not run: {e}"
    if not isinstance(data, dict):
        return f"the verifier failed (exit {result.returncode}): {result.stderr.strip()[-500:]}"
    return None if data.get("ok") is True else str(data.get("error") or "verification failed")


def validate_signing_info(manifest: dict, name: str, version: str, lib_dir: str, level: str) -> None:
    """The HandlerManifest's ``signingInfo`` must name this extension's type, publisher and version
    (case-insensitively); raise PackageValidationError otherwise."""
    full = f"{name}-{version}"
    start = time.monotonic()
    op = events.WALAEventOperation
    _report(op.SignatureValidation, "INFO", f"Validating handler manifest 'signingInfo' of extension '{full}'",
            name, version, 0, lib_dir)
    if "." not in name:
        msg = (f"Error during manifest 'signingInfo' validation for extension '{full}'. Error: the extension name "
               "is not in the form <publisher>.<type>")
        _report(op.SignatureValidation, level, msg, name, version, 0, lib_dir)
        raise PackageValidationError(msg, code=CODE_SIGNATURE)
    publisher, kind = name.rsplit(".", 1)
    info = manifest.get("signingInfo")
    try:
        if not isinstance(info, dict):
            raise PackageValidationError("HandlerManifest.json does not contain 'signingInfo'", code=CODE_SIGNATURE)
        for attribute, expected in (("type", kind), ("publisher", publisher), ("version", version)):
            found = info.get(attribute)
            if found is None:
                raise PackageValidationError(f"HandlerManifest.json does not contain attribute "
                                             f"'signingInfo.{attribute}'", code=CODE_SIGNATURE)
            if expected.lower() != str(found).lower():
                raise PackageValidationError(f"expected extension {attribute} '{expected}' does not match "
                                             f"downloaded package {attribute} '{found}'", code=CODE_SIGNATURE)
    except PackageValidationError as e:
        _report(op.PackageSigningInfoResult, level, e.msg, name, version, _ms_since(start), lib_dir)
        raise
    _report(op.PackageSigningInfoResult, "INFO",
            f"Successfully validated handler manifest 'signingInfo' for extension '{full}'", name, version,
            _ms_since(start), lib_dir)


def save_validated(base_dir: str, lib_dir: str) -> None:
    """The marker that both checks passed for the installed package (upstream's ``package_validated``)."""
    path = os.path.join(base_dir, VALIDATED_FILE)
    _report(events.WALAEventOperation.SignatureValidation, "INFO",
            f"Saving signature validation state file: {path}", events.AGENT_NAME, events.AGENT_VERSION, 0, lib_dir)
    system.write_file(path, "", fsync=False)


def is_validated(base_dir: str) -> bool:
    return system.exists(os.path.join(base_dir, VALIDATED_FILE))


def report_signed(extensions_goal_state: ExtensionsGoalState, lib_dir: str) -> None:
    """``ExtensionSigned`` per extension of a new goal state, whatever the switches (OperationSuccess: the
    goal state carries a signature). Not for uninstalls (they never carry one) nor for a channel that
    cannot carry signatures (vmSettings from an older HostGAPlugin)."""
    if not extensions_goal_state.supports_encoded_signature:
        return
    for ext in extensions_goal_state.extensions:
        if ext.state != "uninstall":
            events.add_event(events.WALAEventOperation.ExtensionSigned, message="", name=ext.name,
                             version=ext.version, is_success=bool(ext.encoded_signature), log_event=False,
                             lib_dir=lib_dir)


class SignatureCheck:
    """The checks of one package install: the zip before it is unpacked, ``signingInfo`` before the
    unpacked tree is moved in. ``validate``: Debug.EnableSignatureValidation (or enforcement); ``enforce``:
    the policy's signatureRequired — a failure then raises, otherwise it is only reported."""

    def __init__(self, name: str, version: str, encoded: str, lib_dir: str, *, validate: bool, enforce: bool,
                 policy_file: str):
        self.name, self.version, self.encoded, self.lib_dir = name, version, encoded, lib_dir
        self.validate, self.enforce = validate or enforce, enforce
        self.policy_file = policy_file
        self.signature_ok = self.manifest_ok = False

    @property
    def validated(self) -> bool:
        return self.signature_ok and self.manifest_ok

    def _blocked(self, reason: str) -> PackageValidationError:
        return PackageValidationError(
            f"Extension will not be processed: the extension policy ('{self.policy_file}') requires a valid "
            f"signature for '{self.name}': {reason}", code=CODE_SIGNATURE)

    def check_zip(self, zip_file: str) -> None:
        full = f"{self.name}-{self.version}"
        if not self.encoded:
            if self.enforce:
                raise self._blocked("the goal state has no signature for the package")
            if self.validate:
                log.info("No signature for extension '{0}' in goal state, skipping signature validation.", full)
            return
        if not self.validate:
            return
        try:
            validate_signature(zip_file, self.encoded, self.name, self.version, self.lib_dir,
                               ERROR if self.enforce else WARNING)
            self.signature_ok = True
        except PackageValidationError as e:
            if self.enforce:
                raise self._blocked(e.msg) from None

    def check_manifest(self, text: str) -> None:
        if not (self.validate and self.encoded):
            return
        try:
            doc = json.loads(text)
            manifest = doc[0] if isinstance(doc, list) and doc else doc
            if not isinstance(manifest, dict):
                raise ValueError("not a JSON object")
        except (ValueError, IndexError) as e:
            manifest = {}
            log.warn("HandlerManifest.json of {0}-{1} is not usable for signingInfo: {2}", self.name,
                     self.version, e)
        try:
            validate_signing_info(manifest, self.name, self.version, self.lib_dir, ERROR if self.enforce else WARNING)
            self.manifest_ok = True
        except PackageValidationError as e:
            if self.enforce:
                raise self._blocked(e.msg) from None
