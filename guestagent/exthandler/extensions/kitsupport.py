"""Building blocks of the extension kit (and of the extension tests): packages from handler folders, the
documents that point at them, and a loopback artifact server with the direct and HostGAPlugin channels.

The documents are written from templates here, independently of the agent's parsers, so the two sides
check each other. The server only ever binds 127.0.0.1.
"""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from xml.sax.saxutils import escape, quoteattr


def build_zip(folder: str) -> bytes:
    """Zip a handler folder (files at the archive root, modes kept)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames.sort()
            for fn in sorted(filenames):
                full = os.path.join(dirpath, fn)
                rel = os.path.relpath(full, folder)
                info = zipfile.ZipInfo(rel)
                info.external_attr = (os.stat(full).st_mode & 0xFFFF) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with open(full, "rb") as f:
                    zf.writestr(info, f.read())
    return buf.getvalue()


def manifest_xml(versions: dict) -> str:
    """A PluginVersionManifest listing ``{version: [package uris]}``."""
    plugins = "".join(
        f"<Plugin><Version>{escape(v)}</Version><Uris>"
        + "".join(f"<Uri>{escape(u)}</Uri>" for u in uris) + "</Uris></Plugin>"
        for v, uris in versions.items())
    return ('<?xml version="1.0" encoding="utf-8"?>\n<PluginVersionManifest '
            'xmlns:i="http://www.w3.org/2001/XMLSchema-instance"><Plugins>' + plugins
            + "</Plugins><InternalPlugins /></PluginVersionManifest>")


@dataclass
class SettingsSpec:
    seq: int = 0
    public: Any = None
    protected: Optional[str] = None
    thumbprint: Optional[str] = None
    ext_name: Optional[str] = None      # multi-config extension name
    ext_state: str = "enabled"
    depends_on_level: Optional[int] = None


@dataclass
class HandlerSpec:
    name: str
    version: str
    manifest_uri: str
    state: str = "enabled"
    settings: list = field(default_factory=list)
    multi_config: bool = False
    failover_uri: Optional[str] = None


def _runtime_settings(s: SettingsSpec) -> str:
    hs: dict = {}
    if s.protected is not None:
        hs["protectedSettingsCertThumbprint"] = s.thumbprint
        hs["protectedSettings"] = s.protected
    if s.public is not None:
        hs["publicSettings"] = s.public
    return json.dumps({"runtimeSettings": [{"handlerSettings": hs}]})


def extensions_config_xml(handlers: list, incarnation: int = 1, status_blob: str = "",
                          required_features: tuple = (), created_on_ticks: int = 0) -> str:
    plugins, settings = [], []
    for h in handlers:
        fail = f" failoverlocation={quoteattr(h.failover_uri)}" if h.failover_uri else ""
        plugins.append(f"<Plugin name={quoteattr(h.name)} version={quoteattr(h.version)} "
                       f"location={quoteattr(h.manifest_uri)}{fail} state={quoteattr(h.state)} autoUpgrade=\"false\" "
                       f"runAsStartupTask=\"false\" isJson=\"true\" useExactVersion=\"true\" />")
        if not h.settings:
            continue
        body = []
        for s in h.settings:
            if s.depends_on_level is not None:
                name_attr = f" name={quoteattr(s.ext_name)}" if h.multi_config else ""
                body.append(f"<DependsOn dependencyLevel=\"{s.depends_on_level}\"{name_attr}>"
                            f"<DependsOnExtension handler=\"x\" /></DependsOn>")
        for s in h.settings:
            text = escape(_runtime_settings(s))
            if h.multi_config:
                body.append(f"<ExtensionRuntimeSettings seqNo=\"{s.seq}\" name={quoteattr(s.ext_name)} "
                            f"state={quoteattr(s.ext_state)}>{text}</ExtensionRuntimeSettings>")
            else:
                body.append(f"<RuntimeSettings seqNo=\"{s.seq}\">{text}</RuntimeSettings>")
        settings.append(f"<Plugin name={quoteattr(h.name)} version={quoteattr(h.version)}>{''.join(body)}</Plugin>")
    features = "".join(f"<RequiredFeature><Name>{escape(f)}</Name></RequiredFeature>" for f in required_features)
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            f'<Extensions version="1.0.0.0" goalStateIncarnation="{incarnation}">'
            f"<RequiredFeatures>{features}</RequiredFeatures>"
            f'<StatusUploadBlob statusBlobType="BlockBlob">{escape(status_blob)}</StatusUploadBlob>'
            f"<Plugins>{''.join(plugins)}</Plugins><PluginSettings>{''.join(settings)}</PluginSettings>"
            f'<InVMGoalStateMetaData inSvdSeqNo="{incarnation}" createdOnTicks="{created_on_ticks}" '
            'activityId="11111111-2222-3333-4444-555555555555" correlationId="66666666-7777-8888-9999-000000000000" />'
            "</Extensions>")


def vm_settings_json(handlers: list, source: str = "FastTrack", seq: int = 1, status_blob: str = "",
                     ticks: int = 638000000000000000) -> str:
    goal_states = []
    for h in handlers:
        item: dict = {"name": h.name, "version": h.version, "location": h.manifest_uri, "state": h.state,
                      "autoUpgrade": False, "isMultiConfig": h.multi_config, "settingsSeqNo": 0, "settings": []}
        if h.failover_uri:
            item["failoverLocation"] = h.failover_uri
        for s in h.settings:
            entry: dict = {"publicSettings": json.dumps(s.public) if s.public is not None else None}
            if s.protected is not None:
                entry["protectedSettings"] = s.protected
                entry["protectedSettingsCertThumbprint"] = s.thumbprint
            if h.multi_config:
                entry.update(seqNo=s.seq, extensionName=s.ext_name, extensionState=s.ext_state)
            else:
                item["settingsSeqNo"] = s.seq
            item["settings"].append(entry)
        levels = [s for s in h.settings if s.depends_on_level is not None]
        if levels:
            item["dependsOn"] = [dict({"dependencyLevel": s.depends_on_level, "dependsOnExtension": []},
                                      **({"name": s.ext_name} if h.multi_config else {})) for s in levels]
        goal_states.append(item)
    return json.dumps({"hostGAPluginVersion": "1.0.8.159", "vmSettingsSchemaVersion": "0.0",
                       "activityId": "a33f6f53-43d6-4625-b322-1a39651a00c9",
                       "correlationId": "9a47a2a2-e740-4bfc-b11b-4f2f7cfe7d2e", "inSvdSeqNo": seq,
                       "extensionsLastModifiedTickCount": ticks, "extensionGoalStatesSource": source,
                       "statusUploadBlob": {"statusBlobType": "BlockBlob", "value": status_blob},
                       "requiredFeatures": [{"name": "MultipleExtensionsPerHandler"}], "gaFamilies": [],
                       "extensionGoalStates": goal_states}, indent=1)


class ArtifactServer:
    """Serves ``files`` ({path: bytes}) on 127.0.0.1 directly and through a HostGAPlugin-like
    ``/extensionArtifact`` (artifact named by ``x-ms-artifact-location``). ``fail_direct`` paths answer 404 on
    the direct channel; ``corrupt`` maps a path to how many times a truncated body is sent first."""

    def __init__(self) -> None:
        self.files: dict = {}
        self.fail_direct: set = set()
        self.corrupt: dict = {}
        self.requests: list = []
        self._lock = threading.Lock()
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/versions":
                    return self._send(200, b'["2015-09-01", "2012-11-30"]')
                if self.path == "/extensionArtifact":
                    uri = self.headers.get("x-ms-artifact-location", "")
                    path = "/" + uri.split("/", 3)[3] if uri.count("/") >= 3 else ""
                    return self._serve(path, "hgap")
                return self._serve(self.path, "direct")

            def _serve(self, path: str, channel: str) -> None:
                with server._lock:
                    server.requests.append((channel, path))
                    if channel == "direct" and path in server.fail_direct:
                        return self._send(404, b"not found")
                    data = server.files.get(path)
                    if data is not None and server.corrupt.get(path, 0) > 0:
                        server.corrupt[path] -= 1
                        data = data[: len(data) // 2]
                if data is None:
                    return self._send(404, b"not found")
                return self._send(200, data)

            def _send(self, code: int, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="ArtifactServer", daemon=True)
        self._thread.start()

    def add(self, path: str, data: Any) -> str:
        self.files[path] = data.encode("utf-8") if isinstance(data, str) else data
        return self.base + path

    def publish_handler(self, name: str, versions: dict) -> str:
        """Publish packages ``{version: folder-or-zip-bytes}`` and their manifest; return the manifest URL."""
        listing = {}
        for version, source in versions.items():
            data = source if isinstance(source, bytes) else build_zip(source)
            listing[version] = [self.add(f"/packages/{name}__{version}.zip", data)]
        return self.add(f"/manifests/{name}_manifest.xml", manifest_xml(listing))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def make_certificate(lib_dir: str) -> str:
    """A tenant-like certificate: writes ``<THUMB>.crt``/``<THUMB>.prv`` (0600) and returns the thumbprint."""
    import datetime
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    from guestagent.osutil import system

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "Windows Azure CRP Certificate Generator")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    thumb = hashlib.sha1(der).hexdigest().upper()
    system.write_file(os.path.join(lib_dir, f"{thumb}.crt"), cert.public_bytes(serialization.Encoding.PEM),
                      mode=0o600)
    system.write_file(os.path.join(lib_dir, f"{thumb}.prv"), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), mode=0o600)
    return thumb


def encrypt_settings(settings: dict, lib_dir: str, thumb: str) -> str:
    """Protected settings as the platform sends them: base64 DER CMS EnvelopedData to the certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    from guestagent.osutil import system

    cert = x509.load_pem_x509_certificate(system.read_bytes(os.path.join(lib_dir, f"{thumb}.crt")))
    der = (pkcs7.PKCS7EnvelopeBuilder().set_data(json.dumps(settings).encode("utf-8")).add_recipient(cert)
           .encrypt(serialization.Encoding.DER, []))
    return base64.b64encode(der).decode("ascii")
