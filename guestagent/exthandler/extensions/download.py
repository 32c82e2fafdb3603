"""A handler's plugin manifest and package, fetched for the goal state being processed, with the Download
events upstream sends."""

from __future__ import annotations

import time
from typing import Optional

from guestagent import events, log
from guestagent.errors import AgentError, ExtensionError
from guestagent.exthandler.extensions import signing
from guestagent.exthandler.extensions.handler import Context
from guestagent.exthandler.extensions.manifest import parse_plugin_manifest
from guestagent.exthandler.extensions.package import install_package, zip_path
from guestagent.exthandler.extensions.state import HandlerFiles
from guestagent.osutil import system
from guestagent.protocol.extconfig import Extension
from guestagent.protocol.wire import WireProtocol


class Downloads:
    """The downloads of one manager: its handlers' ``ctx`` (lib dir, the extension event seam)."""

    def __init__(self, protocol: WireProtocol, ctx: Context):
        self.protocol = protocol
        self.ctx = ctx
        self._manifests: dict = {}

    def new_goal_state(self) -> None:
        """Manifests are fetched once per goal state."""
        self._manifests = {}

    def packages(self, ext: Extension) -> tuple:
        """(the packages of ``ext``'s plugin manifest, where the manifest came from); saved in the history."""
        if ext.name not in self._manifests:
            try:
                text = self.protocol.download_manifest(list(ext.manifest_uris))
                packages = parse_plugin_manifest(text)
            except Exception as e:
                raise ExtensionError(f"Failed to get ext handler pkgs: {e.msg if isinstance(e, AgentError) else e}",
                                     code=-1) from None
            self.protocol.history.save(f"{ext.name}.manifest.xml", text)
            self._manifests[ext.name] = (packages, self.protocol.manifest_location)
        return self._manifests[ext.name]

    def install(self, files: HandlerFiles, ext: Extension, version: str, uris: list, location: Optional[str],
                checks: signing.SignatureCheck) -> None:
        """Download and unpack the package; a Download event either way, as upstream sends it."""
        began = time.monotonic()
        package = zip_path(self.ctx.lib_dir, ext.name, version)
        existing = system.exists(package)
        if existing:
            log.info("Using existing extension package: {0}", package)
            self._event(ext.name, version, True, f"Using existing extension package: {package}")
        try:
            install_package(self.protocol, files, uris, location, checks)
        except ExtensionError as e:
            self._event(ext.name, version, False, e.msg)
            raise
        if not existing:
            self._event(ext.name, version, True, "Download succeeded", int((time.monotonic() - began) * 1000))

    def _event(self, name: str, version: str, ok: bool, message: str, ms: int = 0) -> None:
        if self.ctx.event is not None:
            self.ctx.event(events.WALAEventOperation.Download, name=name, version=version, is_success=ok,
                       message=message, duration=ms)
