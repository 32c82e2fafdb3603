"""The Fabric: WireServer, HostGAPlugin, storage and IMDS emulators sharing one scenario and one log.

    with Fabric() as fab:                    # built-in default scenario, ephemeral loopback ports
        ... point the agent at fab.host / fab.wire_port / fab.hgap_port ...
        fab.faults.add("vmsettings", status=500, count=2)
        fab.advance()                        # next goal state
        fab.wait_for(lambda: fab.status_blob)

Everything the VM sends is kept in memory (``requests``, ``health_reports``, ``telemetry``,
``status_blob``, ...) and, with a ``state_dir``, also on disk for ``guestagent fabric status``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import quote

from guestagent.fabric import hostplugin, imds, storage, wireserver
from guestagent.fabric.faults import BODY_MODES, KINDS, SEND_MODES, Fault, FaultSet
from guestagent.fabric.httpd import Request, Response, start_servers
from guestagent.fabric.ovf import build_ovf_env
from guestagent.fabric.packages import PackageCache
from guestagent.fabric.scenario import ExtensionSpec, Scenario, SettingsSpec, Step, default_scenario
from guestagent.fabric.signing import PackageSigner

_TICKS_AT_EPOCH = 621355968000000000
_SIG_RE = re.compile(r"(sig=)[^&\s\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Hide SAS signatures (even fake ones: the log must never teach bad habits)."""
    return _SIG_RE.sub(r"\1<redacted>", text)


def _now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class GoalView:
    """A consistent snapshot of what the fabric currently serves."""

    step_index: int
    wire_step: Step
    ft_step: Optional[Step]
    incarnation: str
    container_id: str
    config_name: str
    wire_ticks: int
    vm_ticks: int
    etag: str
    activity_id: str
    correlation_id: str
    vm_settings_mode: str

    @property
    def vm_step(self) -> Step:
        return self.ft_step or self.wire_step


class Fabric:
    def __init__(self, scenario: Optional[Scenario] = None, host: str = "127.0.0.1", wire_port: int = 0,
                 hgap_port: int = 0, imds_port: int = 0, imds_host: Optional[str] = None, storage_port: int = 0,
                 state_dir: Union[str, Path, None] = None, public_wire_url: Optional[str] = None,
                 public_storage_url: Optional[str] = None):
        """public_wire_url / public_storage_url: the base URLs the VM must use when it reaches the fabric
        through a forward (e.g. ``http://168.63.129.16``); by default URLs use the host the client asked
        for and the fabric's own ports."""
        self.scenario = scenario or default_scenario()
        self.public_wire_url = public_wire_url.rstrip("/") if public_wire_url else None
        self.public_storage_url = public_storage_url.rstrip("/") if public_storage_url else None
        self.host = host
        self.imds_host = imds_host or host
        self.wire_port, self.hgap_port, self.imds_port, self.storage_port = wire_port, hgap_port, imds_port, storage_port
        self.state_dir = Path(state_dir) if state_dir else None
        self.faults = FaultSet()
        self.requests: List[Dict[str, Any]] = []
        self.health_reports: List[Dict[str, Any]] = []
        self.telemetry: List[Dict[str, Any]] = []
        self.status_blob: Optional[Dict[str, Any]] = None
        self.status_uploads: List[Dict[str, Any]] = []
        self.vm_agent_logs: List[Dict[str, Any]] = []
        self.records: Dict[str, List[Any]] = {"roleproperties": [], "healthservice": []}
        self.blobs = storage.BlobStore()
        self.packages = PackageCache()
        self.signer = PackageSigner(self.state_dir)
        if any(e.signature for step in self.scenario.steps for e in step.extensions):
            self.signer.prepare()
        self.on_request: Optional[Callable[[Dict[str, Any]], None]] = None
        self.sas_sig = quote(secrets.token_urlsafe(18))
        self.vm_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"guestagent-fabric/{self.scenario.name}"))
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._servers: list = []
        self._step = 0
        self._activated: Dict[int, int] = {}
        self._last_ticks = 0
        self._pfx: Optional[bytes] = None
        self._protected: Dict[Tuple, Tuple[str, str]] = {}
        self._imds_doc: Optional[Dict[str, Any]] = None
        self.claimed_at: Optional[float] = None  # wall time the pooled VM was claimed
        self._activate(0)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Fabric:
        if self._servers:
            return self
        if self.state_dir:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        specs = [("wire", self.host, self.wire_port, self._dispatch),
                 ("hgap", self.host, self.hgap_port, self._dispatch),
                 ("storage", self.host, self.storage_port, self._dispatch),
                 ("imds", self.imds_host, self.imds_port, self._dispatch)]
        self._servers = start_servers(specs)
        self.wire_port, self.hgap_port, self.storage_port, self.imds_port = (
            s.server_address[1] for s in self._servers)
        self._save_state()
        return self

    def stop(self) -> None:
        servers, self._servers = self._servers, []
        stoppers = [threading.Thread(target=srv.stop) for srv in servers]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()

    def connections(self, role: str) -> int:
        """TCP connections the ``role`` server ("wire", "hgap", "storage", "imds") has accepted."""
        return next(srv.connections for srv in self._servers if srv.role == role)

    def __enter__(self) -> Fabric:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.wire_port}"

    # ------------------------------------------------------------ goal-state steps
    def _activate(self, index: int) -> None:
        ticks = max(_TICKS_AT_EPOCH + int(time.time() * 10_000_000), self._last_ticks + 10_000_000)
        self._last_ticks = ticks
        self._activated[index] = ticks
        self._step = index

    def set_step(self, n: int) -> None:
        if not 0 <= n < len(self.scenario.steps):
            raise IndexError(f"scenario {self.scenario.name!r} has steps 0..{len(self.scenario.steps) - 1}, not {n}")
        with self._lock:
            self._activate(n)
            self._changed.notify_all()
        self._save_state()

    def advance(self) -> int:
        """Go to the next step (a new incarnation, or a new FastTrack goal state); returns its index."""
        self.set_step(self._step + 1)
        return self._step

    @property
    def step(self) -> int:
        return self._step

    def view(self) -> GoalView:
        with self._lock:
            sc, cur = self.scenario, self._step
            steps = sc.steps
            wire_index = next((i for i in range(cur, -1, -1) if not steps[i].fast_track), None)
            if wire_index is None:
                # The scenario starts with FastTrack: the VM's first goal state reaches it through both
                # channels at the same instant (a tie, which the agent resolves to ExtensionsConfig).
                wire_step, wire_ticks = steps[0], self._activated[0]
            else:
                wire_step, wire_ticks = steps[wire_index], self._activated[wire_index]
            ft_step = steps[cur] if steps[cur].fast_track else None
            vm_ticks = self._activated[cur] if ft_step else wire_ticks
            container = steps[cur].container_id or wire_step.container_id or sc.container_id
            inc = wire_step.incarnation
            mode = steps[cur].vm_settings or sc.vm_settings
            return GoalView(cur, wire_step, ft_step, inc, container,
                            f"{self.vm_id}.{inc}.{self.vm_id}.{inc}._{sc.vm_name}.1.xml", wire_ticks, vm_ticks,
                            str(vm_ticks), str(uuid.uuid5(uuid.NAMESPACE_OID, f"activity/{vm_ticks}")),
                            str(uuid.uuid5(uuid.NAMESPACE_OID, f"correlation/{vm_ticks}")), mode)

    # ------------------------------------------------------------ URLs (always back at this fabric)
    def wire_base(self, host: Optional[str] = None) -> str:
        return self.public_wire_url or f"http://{_url_host(host or self.host)}:{self.wire_port}"

    def storage_base(self, host: Optional[str] = None) -> str:
        return self.public_storage_url or f"http://{_url_host(host or self.host)}:{self.storage_port}"

    def _sas(self, perm: str) -> str:
        return f"sv=2018-03-28&sr=b&sk=system-1&sig={self.sas_sig}&se=9999-01-01T00%3a00%3a00Z&sp={perm}"

    def status_blob_url(self, host: Optional[str] = None) -> str:
        return f"{self.storage_base(host)}/$system/{self.scenario.vm_name}.{self.vm_id}.status?{self._sas('w')}"

    def artifacts_profile_url(self, host: Optional[str] = None) -> str:
        return f"{self.storage_base(host)}/$system/{self.scenario.vm_name}.{self.vm_id}.vmSettings?{self._sas('r')}"

    def manifest_url(self, host: Optional[str], name: str, failover: bool = False) -> str:
        # safe="": a hostile name ("../x") travels as one path segment, as the real storage would get it
        return f"{self.storage_base(host)}/{'failover' if failover else 'manifests'}/{quote(name, safe='')}_manifest.xml"

    def package_url(self, host: Optional[str], name: str, version: str) -> str:
        return f"{self.storage_base(host)}/packages/{quote(name, safe='')}__{quote(version, safe='')}"

    def agent_manifest_url(self, host: Optional[str] = None) -> str:
        return f"{self.storage_base(host)}/manifests/{storage.AGENT_FAMILY_MANIFEST}_manifest.xml"

    # ------------------------------------------------------------ secrets and documents
    def tenant_certs(self):
        return self.scenario.tenant_certs(self.state_dir / "certs" if self.state_dir else None)

    def tenant_pfx(self) -> bytes:
        with self._lock:
            if self._pfx is None:
                from guestagent.fabric.crypto import build_pfx

                self._pfx = build_pfx(self.tenant_certs())
            return self._pfx

    def protected_settings(self, ext: ExtensionSpec, item: SettingsSpec) -> Tuple[str, str]:
        """(thumbprint, base64 CMS) — encrypted once per settings item so every fetch sees the same blob."""
        from guestagent.fabric.crypto import TENANT_CERT_NAME, protect_settings

        plain = json.dumps(item.protected).encode("utf-8")
        key = (ext.name, ext.version, item.name, item.seq_no, plain)
        with self._lock:
            if key not in self._protected:
                tenant = next(c for c in self.tenant_certs() if c.name == TENANT_CERT_NAME)
                self._protected[key] = (tenant.thumbprint, protect_settings(plain, tenant))
            return self._protected[key]

    def claim(self) -> None:
        """A customer claims the pooled VM: reprovisiondata answers from now on. ValueError when the
        scenario has no pool or the VM was claimed already (a second claim changes nothing)."""
        with self._lock:
            if self.scenario.pps is None:
                raise ValueError("this scenario has no pre-provisioning pool (no 'pps')")
            if self.claimed_at is not None:
                raise ValueError("the VM was claimed already")
            self.claimed_at = time.time()

    def reprovision_data(self) -> Optional[str]:
        """The customer's ovf-env.xml once claimed, else None."""
        pool = self.scenario.pps
        if pool is None or self.claimed_at is None:
            return None
        if pool.body is not None:
            return pool.body
        return build_ovf_env(self.scenario, ovf=pool.customer)

    def encoded_signature(self, ext: ExtensionSpec) -> str:
        """The extension's ``encodedSignature``: the scenario's literal one, or the fabric's signature of the
        package it serves for that version ("" when unsigned or the package is missing)."""
        if not ext.signature:
            return ext.encoded_signature
        for pkg in self.scenario.handler_versions(ext.name):
            if pkg.version == ext.version:
                try:
                    return self.signer.encoded_signature(self.packages.zip_of(pkg.path), ext.signature)
                except (OSError, ValueError):
                    return ""
        return ""

    def imds_document(self) -> Dict[str, Any]:
        if self._imds_doc is None:
            self._imds_doc = self.scenario.imds or imds.default_document(self.scenario, self.vm_id)
        return self._imds_doc

    # ------------------------------------------------------------ what the VM sent
    def record(self, kind: str, doc: Any) -> None:
        with self._lock:
            self.records.setdefault(kind, []).append(doc)
            self._changed.notify_all()
        self._append_jsonl(f"{kind}.jsonl", {"time": _now_iso(), **(doc if isinstance(doc, dict) else {"doc": doc})})

    def record_health(self, report: Dict[str, Any]) -> None:
        report = {"time": _now_iso(), **report}
        with self._lock:
            self.health_reports.append(report)
            self._changed.notify_all()
        self._append_jsonl("health.jsonl", report)

    def record_telemetry(self, events: List[Dict[str, Any]]) -> None:
        with self._lock:
            self.telemetry.extend(events)
            self._changed.notify_all()
        for event in events:
            self._append_jsonl("telemetry.jsonl", event)

    def record_vm_agent_log(self, body: bytes, headers: Dict[str, str]) -> None:
        entry = {"time": _now_iso(), "size": len(body),
                 "headers": {k: redact(v) for k, v in headers.items() if k.startswith("x-ms-")}}
        with self._lock:
            index = len(self.vm_agent_logs)
            self.vm_agent_logs.append({**entry, "data": body})
            self._changed.notify_all()
        if self.state_dir:
            folder = self.state_dir / "vmagentlog"
            folder.mkdir(exist_ok=True)
            _write_private(folder / f"{index:04d}.zip", body)
            self._append_jsonl("vmagentlog.jsonl", {**entry, "file": f"vmagentlog/{index:04d}.zip"})

    def apply_blob_write(self, uri: str, headers: Dict[str, str], content: bytes, via: str) -> Response:
        path, query = storage.split_url(uri)
        if not path.startswith("/$system/") or not path.endswith(".status"):
            return Response.text(400, f"not a status blob: {redact(uri)}")
        if query.get("sig") != self.sas_sig:
            return Response.text(403, "AuthenticationFailed: Server failed to authenticate the request.")
        resp = self.blobs.write(path, query, {k.lower(): v for k, v in headers.items()}, content)
        if resp.status == 201:
            blob = self.blobs.get(path)
            doc = storage.decode_status(bytes(blob.data)) if blob else None
            if doc is not None:
                with self._lock:
                    self.status_blob = doc
                    self.status_uploads.append({"time": _now_iso(), "via": via, "type": blob.blob_type})
                    self._changed.notify_all()
                if self.state_dir:
                    _write_private(self.state_dir / "status.json", json.dumps(doc, indent=2).encode())
        return resp

    def storage_request(self, outer: Request, location: str) -> Response:
        """HGAP's artifact proxy: answer from our own storage, without the storage's fault queue."""
        path, query = storage.split_url(location)
        inner = Request("GET", location, path, query, {}, b"", outer.host, "storage")
        kind = storage.classify(inner)
        if kind is None or kind == "status_blob":
            return Response.text(404, "BlobNotFound")
        return storage.handle(self, inner, kind)

    # ------------------------------------------------------------ helpers for tests and tools
    def requests_of(self, kind: str) -> List[Dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["kind"] == kind]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Block until predicate() is truthy (re-checked on every recorded event); returns its value."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate()
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fabric: condition not met within {timeout} s")
                self._changed.wait(min(left, 0.5))

    # ------------------------------------------------------------ request handling
    def _classify(self, req: Request) -> str:
        if req.role == "wire":
            if req.path.startswith("/fabric/"):
                return "control"
            return wireserver.classify(req) or "unknown"
        if req.role == "hgap":
            return hostplugin.classify(req) or "unknown"
        if req.role == "storage":
            return storage.classify(req) or "unknown"
        return imds.classify(req) or "unknown"

    def _answer(self, kind: str, req: Request) -> Response:
        if kind == "unknown":
            return Response.text(404, "The requested resource was not found.")
        if kind == "control":
            from guestagent.fabric.control import handle as control

            return control(self, req)
        if req.role == "wire":
            return wireserver.handle(self, req, kind)
        if req.role == "hgap":
            return hostplugin.handle(self, req, kind)
        if req.role == "storage":
            return storage.handle(self, req, kind)
        return imds.handle(self.imds_document(), req, self.reprovision_data())

    def _dispatch(self, handler, req: Request, started: float) -> None:
        kind = self._classify(req)
        fault = self.faults.take(kind) if kind in KINDS else None
        resp: Optional[Response] = None
        try:
            if fault and fault.delay:
                time.sleep(fault.delay)
            if not (fault and fault.reset):
                resp = self._faulted(fault, kind, req) if fault else self._answer(kind, req)
        except Exception as exc:  # the server survives anything a handler does
            resp = Response.text(500, f"fabric error: {type(exc).__name__}: {exc}")
        # Logged before the answer leaves, so a client that got its answer always finds it in the log.
        self._log(req, kind, resp.status if resp else None, time.monotonic() - started, fault)
        try:
            if resp is None:
                handler.reset()
            else:
                handler._write(resp, fault.body if fault and fault.body in SEND_MODES else None)
        except OSError:
            pass  # the client went away

    def _faulted(self, fault: Fault, kind: str, req: Request) -> Response:
        if fault.status is not None:
            text = fault.body if fault.body not in (None, *BODY_MODES, "no_role_instance") else _reason(fault.status)
            return Response.text(fault.status, text)
        resp = self._answer(kind, req)
        if fault.body == "malformed":
            resp.body = resp.body[: max(1, len(resp.body) // 2)] + b"\x00<<malformed"
        elif fault.body == "no_role_instance":
            resp.body = re.sub(rb"<RoleInstanceList>.*</RoleInstanceList>", b"", resp.body, flags=re.S)
        elif fault.body not in (None, *BODY_MODES):
            resp.body = fault.body.encode("utf-8")
        return resp

    def _log(self, req: Request, kind: str, status: Optional[int], duration: float, fault: Optional[Fault]) -> None:
        entry = {"time": _now_iso(), "kind": kind, "method": req.method, "path": redact(req.target),
                 "status": status if status is not None else "reset", "duration": round(duration, 6),
                 "headers": {k: redact(v) for k, v in req.headers.items()}, "role": req.role}
        if fault:
            entry["fault"] = {k: v for k, v in fault.to_dict().items() if v not in (None, False) and k != "fired"}
        with self._lock:
            self.requests.append(entry)
            self._changed.notify_all()
        self._append_jsonl("requests.jsonl", entry)
        callback = self.on_request
        if callback:
            try:
                callback(entry)
            except Exception:
                pass

    # ------------------------------------------------------------ state directory
    def _append_jsonl(self, name: str, doc: Dict[str, Any]) -> None:
        if not self.state_dir:
            return
        line = json.dumps(doc, default=str) + "\n"
        with self._lock:
            fd = os.open(str(self.state_dir / name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(line)

    def _save_state(self) -> None:
        if not self.state_dir:
            return
        view = self.view()
        doc = {"pid": os.getpid(), "scenario": self.scenario.name,
               "source": str(self.scenario.source) if self.scenario.source else None,
               "host": self.host, "wire_port": self.wire_port, "hgap_port": self.hgap_port,
               "storage_port": self.storage_port, "imds_host": self.imds_host, "imds_port": self.imds_port,
               "step": view.step_index, "incarnation": view.incarnation, "etag": view.etag,
               "steps": len(self.scenario.steps)}
        _write_private(self.state_dir / "fabric.json", json.dumps(doc, indent=2).encode())


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Fault"


def _write_private(path: Path, data: bytes) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
