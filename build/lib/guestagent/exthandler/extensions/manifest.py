"""HandlerManifest.json (04 §2), the extension's PluginVersionManifest XML and version selection (03 §5).

Versions are compared as dot-separated integers padded with zeros; "requested matches candidate" is a
component-wise prefix match, which is how a goal state asking for ``2.1`` picks the newest ``2.1.x``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from guestagent.errors import ExtensionError

CODE_MANIFEST_NOT_FOUND = 1002
CODE_MANIFEST_INVALID = 1003
COMMANDS = ("install", "enable", "disable", "uninstall", "update")

_COMPONENT = re.compile(r"^(\d+)(?:[-.]?(alpha|beta|rc)\d*)?$", re.IGNORECASE)


# --- versions -------------------------------------------------------------------------------------------------
def version_parts(text: str) -> tuple:
    """``"1.2.3"`` → ``(1, 2, 3)``; a pre-release suffix (``1.0rc1``) is dropped from the number."""
    parts = []
    for piece in str(text).strip().split("."):
        m = _COMPONENT.match(piece)
        if not m:
            raise ValueError(f"Invalid version: {text!r}")
        parts.append(int(m.group(1)))
    return tuple(parts)


def version_key(text: str) -> tuple:
    """Sort/compare key: trailing zeros removed so ``1.2 == 1.2.0.0``."""
    parts = list(version_parts(text))
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def compare_versions(a: str, b: str) -> int:
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)


def version_matches(requested: str, candidate: str) -> bool:
    """Prefix match: ``1.0`` matches ``1.0.0`` and ``1.0.5.3``; ``2.1.6`` does not match ``2.1.7``."""
    try:
        r, c = version_parts(requested), version_parts(candidate)
    except ValueError:
        return False
    return len(r) <= len(c) and c[:len(r)] == r


def is_version(text: str) -> bool:
    try:
        version_parts(text)
        return True
    except ValueError:
        return False


# --- the extension's package manifest (XML) --------------------------------------------------------------
@dataclass
class PackageEntry:
    version: str
    uris: list = field(default_factory=list)
    disallow_major_upgrade: bool = False
    is_internal: bool = False


def parse_plugin_manifest(xml_text: str) -> list:
    """PluginVersionManifest → packages, Plugins and InternalPlugins merged, ascending by version."""
    from guestagent.protocol import xml

    root = xml.parse(xml_text, what="extension manifest")
    packages = []
    for section, internal in (("Plugins", False), ("InternalPlugins", True)):
        for node in xml.findall(xml.find(root, section), "Plugin"):
            version = (xml.findtext(node, "Version") or "").strip()
            if not is_version(version):
                continue
            uris = [(xml.text(u) or "").strip() for u in xml.findall(xml.find(node, "Uris"), "Uri")]
            disallow = (xml.findtext(node, "DisallowMajorVersionUpgrade") or "").strip().lower() == "true"
            packages.append(PackageEntry(version, [u for u in uris if u], disallow, internal))
    packages.sort(key=lambda p: version_key(p.version))
    return packages


def select_package(packages: list, requested: str) -> Optional[PackageEntry]:
    """The highest package whose version the requested version matches (03 §5.3 step 3)."""
    chosen = None
    for pkg in packages:
        if version_matches(requested, pkg.version):
            chosen = pkg
    return chosen


def find_package(packages: list, version: str) -> Optional[PackageEntry]:
    for pkg in packages:
        if compare_versions(pkg.version, version) == 0:
            return pkg
    return None


# --- HandlerManifest.json ----------------------------------------------------------------------------------
def _flag(value: Any) -> bool:
    """JSON true, or for backward compatibility the string "true" (any case); anything else is false."""
    if isinstance(value, bool):
        return value
    return isinstance(value, str) and value.strip().lower() == "true"


@dataclass
class HandlerManifest:
    data: dict
    handler: dict
    non_boolean: list = field(default_factory=list)

    def command(self, op: str) -> str:
        value = self.handler.get(f"{op}Command")
        if not isinstance(value, str) or not value.strip():
            raise ExtensionError(f"The HandlerManifest has no {op}Command", code=-1)
        return value

    @property
    def report_heartbeat(self) -> bool:
        return _flag(self.handler.get("reportHeartbeat", False))

    @property
    def continue_on_update_failure(self) -> bool:
        return _flag(self.handler.get("continueOnUpdateFailure", False))

    @property
    def supports_multiple_extensions(self) -> bool:
        return _flag(self.handler.get("supportsMultipleExtensions", False))

    @property
    def update_with_install(self) -> bool:
        mode = self.handler.get("updateMode")
        return mode is None or str(mode).lower() == "updatewithinstall"

    @property
    def resource_limits(self) -> dict:
        value = self.data.get("resourceLimits")
        return value if isinstance(value, dict) else {}


def parse_handler_manifest(text: str) -> HandlerManifest:
    """Parse HandlerManifest.json text (BOM tolerated); errors carry code 1003."""
    try:
        doc = json.loads(text.lstrip("\ufeff"))
    except ValueError as e:
        raise ExtensionError(f"Malformed HandlerManifest.json: {e}", code=CODE_MANIFEST_INVALID) from None
    if isinstance(doc, list):
        doc = doc[0] if doc else None
    if not isinstance(doc, dict) or not isinstance(doc.get("handlerManifest"), dict):
        raise ExtensionError("Malformed HandlerManifest.json: expected [{\"handlerManifest\": {...}}]",
                             code=CODE_MANIFEST_INVALID)
    handler = doc["handlerManifest"]
    odd = [k for k in ("reportHeartbeat", "continueOnUpdateFailure", "supportsMultipleExtensions")
           if k in handler and not isinstance(handler[k], bool)]
    return HandlerManifest(doc, handler, odd)


def load_handler_manifest(path: str) -> HandlerManifest:
    from guestagent.exthandler.extensions.state import read_optional

    try:
        text = read_optional(path)
    except OSError as e:
        raise ExtensionError(f"Failed to load HandlerManifest.json: {e}", code=CODE_MANIFEST_NOT_FOUND) from None
    if text is None:
        raise ExtensionError(f"HandlerManifest.json not found: {path}", code=CODE_MANIFEST_NOT_FOUND)
    return parse_handler_manifest(text)
