"""HandlerManifest.json (04 §2), the extension's PluginVersionManifest XML and version selection (03 §5).

Versions are compared as dot-separated integers padded with zeros; "requested matches candidate" is a
component-wise prefix match, which is how a goal state asking for ``2.1`` picks the newest ``2.1.x``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from guestagent.errors import ExtensionError
from guestagent.exthandler.extensions.state import read_optional
from guestagent.exthandler.extensions.versions import (
    compare_versions,
    is_version,
    version_key,
    version_matches,
)
from guestagent.protocol import xml

CODE_MANIFEST_NOT_FOUND = 1002
CODE_MANIFEST_INVALID = 1003
# upstream reports an error it did not foresee with code -1; a manifest of the wrong shape is one
# (its data[0] / ['handlerManifest'] raise KeyError, IndexError or TypeError)
CODE_MANIFEST_SHAPE = -1
COMMANDS = ("install", "enable", "disable", "uninstall", "update")

# --- the extension's package manifest (XML) --------------------------------------------------------------
@dataclass
class PackageEntry:
    version: str
    uris: list = field(default_factory=list)
    disallow_major_upgrade: bool = False
    is_internal: bool = False


def parse_plugin_manifest(xml_text: str) -> list:
    """PluginVersionManifest → packages, Plugins and InternalPlugins merged, ascending by version."""
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
    """Parse HandlerManifest.json text (BOM tolerated): text that is not JSON fails with code 1003, JSON
    of the wrong shape with -1, the codes upstream reports for each."""
    try:
        doc = json.loads(text.lstrip("\ufeff"))
    except ValueError as e:
        raise ExtensionError(f"Malformed HandlerManifest.json: {e}", code=CODE_MANIFEST_INVALID) from None
    if not isinstance(doc, list) or not doc:  # upstream reads data[0]: an object or an empty list fails there
        raise ExtensionError("Malformed HandlerManifest.json: expected a list, [{\"handlerManifest\": {...}}]",
                             code=CODE_MANIFEST_SHAPE)
    doc = doc[0]
    if not isinstance(doc, dict) or not isinstance(doc.get("handlerManifest"), dict):
        raise ExtensionError("Malformed HandlerManifest.json: expected [{\"handlerManifest\": {...}}]",
                             code=CODE_MANIFEST_SHAPE)
    handler = doc["handlerManifest"]
    odd = [k for k in ("reportHeartbeat", "continueOnUpdateFailure", "supportsMultipleExtensions")
           if k in handler and not isinstance(handler[k], bool)]
    return HandlerManifest(doc, handler, odd)


def load_handler_manifest(path: str) -> HandlerManifest:
    try:
        text = read_optional(path)
    except OSError as e:
        raise ExtensionError(f"Failed to load HandlerManifest.json: {e}", code=CODE_MANIFEST_NOT_FOUND) from None
    if text is None:
        raise ExtensionError(f"HandlerManifest.json not found: {path}", code=CODE_MANIFEST_NOT_FOUND)
    return parse_handler_manifest(text)
