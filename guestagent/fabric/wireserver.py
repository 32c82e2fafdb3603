"""Emulated WireServer: the goal state and its sub-documents, health, telemetry, HealthService.

Documents are rendered from the fabric's own templates (shaped after the platform's samples), never
with the agent's serialisers. URLs inside documents point back at the fabric, on the host name the
client used to reach it, and are XML-escaped.
"""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any, Dict, List, Optional
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

from guestagent.fabric.httpd import Request, Response
from guestagent.fabric.scenario import ExtensionSpec, SettingsSpec

if TYPE_CHECKING:
    from guestagent.fabric.server import Fabric, GoalView

PROTOCOL_VERSION = "2012-11-30"
MAX_XML = 4 * 1024 * 1024
_CONFIG_KINDS = {"hostingEnvironmentConfig": "hostingenv", "sharedConfig": "sharedconfig",
                 "extensionsConfig": "extensionsconfig", "fullConfig": "fullconfig"}


class BadDocument(ValueError):
    """A document the VM posted cannot be parsed."""


def classify(req: Request) -> Optional[str]:
    comp = req.query.get("comp", "").lower()
    path = req.path.rstrip("/")
    if path == "" and comp == "versions":
        return "versions"
    if path == "/HealthService" or path.lower() == "/healthservice":
        return "healthservice"
    if path == "/machine":
        return {"goalstate": "goalstate", "health": "health", "roleproperties": "roleproperties",
                "telemetrydata": "telemetrydata"}.get(comp)
    if path.startswith("/machine/"):
        if comp == "config":
            return _CONFIG_KINDS.get(req.query.get("type", ""))
        if comp == "certificates":
            return "certificates"
        if comp == "remoteaccess":
            return "remoteaccess"
    return None


def handle(fab: Fabric, req: Request, kind: str) -> Response:
    view = fab.view()
    if kind == "versions":
        return Response.xml(versions_xml())
    if kind == "goalstate":
        return Response.xml(goal_state_xml(fab, view, req.host))
    if kind == "hostingenv":
        return Response.xml(hosting_env_xml(fab, view))
    if kind in ("sharedconfig", "fullconfig"):
        return Response.xml(shared_config_xml(fab, view))
    if kind == "extensionsconfig":
        return Response.xml(extensions_config_xml(fab, view, req.host))
    if kind == "certificates":
        return _certificates(fab, view, req)
    if kind == "remoteaccess":
        return _remote_access(fab, view, req)
    if req.method != "POST":
        return Response.text(405, f"{kind} needs POST")
    try:
        if kind == "health":
            fab.record_health(parse_health(req.body))
            return Response(200)
        if kind == "roleproperties":
            fab.record("roleproperties", parse_role_properties(req.body))
            return Response(202)
        if kind == "telemetrydata":
            fab.record_telemetry(parse_telemetry(req.body))
            return Response(200)
        if kind == "healthservice":
            doc = json.loads(req.body.decode("utf-8"))
            if not isinstance(doc, dict) or not isinstance(doc.get("Observations"), list):
                raise BadDocument("HealthService body needs an 'Observations' list")
            fab.record("healthservice", doc)
            return Response(200)
    except (BadDocument, ValueError, UnicodeDecodeError) as exc:
        return Response.text(400, f"Bad request: {exc}")
    return Response.text(404, "not found")


# ------------------------------------------------------------------ documents

def versions_xml() -> str:
    return ('<?xml version="1.0" encoding="utf-8"?>\n<Versions>\n'
            f"  <Preferred>\n    <Version>{PROTOCOL_VERSION}</Version>\n  </Preferred>\n"
            "  <Supported>\n    <Version>2010-12-15</Version>\n    <Version>2010-28-10</Version>\n  </Supported>\n"
            "</Versions>\n")


def _config_url(fab: Fabric, view: GoalView, host: str, query: str) -> str:
    return (f"{fab.wire_base(host)}/machine/{quote(view.container_id)}/{quote(fab.scenario.role_instance_id)}"
            f"?{query}&incarnation={quote(view.incarnation)}")


def goal_state_xml(fab: Fabric, view: GoalView, host: str) -> str:
    sc = fab.scenario
    step = view.wire_step

    def url(tag: str, query: str) -> str:
        return f"          <{tag}>{escape(_config_url(fab, view, host, query))}</{tag}>\n"

    remote = ""
    if step.remote_access is not None:
        remote = f"    <RemoteAccessInfo>{escape(_config_url(fab, view, host, 'comp=remoteaccess'))}</RemoteAccessInfo>\n"
    config = url("HostingEnvironmentConfig", "comp=config&type=hostingEnvironmentConfig")
    config += url("SharedConfig", "comp=config&type=sharedConfig")
    if step.extensions_config:
        config += url("ExtensionsConfig", "comp=config&type=extensionsConfig")
    config += url("FullConfig", "comp=config&type=fullConfig")
    if step.certificates:
        config += url("Certificates", "comp=certificates")
    config += f"          <ConfigName>{escape(view.config_name)}</ConfigName>\n"
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            '<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xsi:noNamespaceSchemaLocation="goalstate10.xsd">\n'
            "  <Version>2010-12-15</Version>\n"
            f"  <Incarnation>{escape(view.incarnation)}</Incarnation>\n"
            "  <Machine>\n    <ExpectedState>Started</ExpectedState>\n"
            "    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>\n"
            "    <LBProbePorts>\n      <Port>16001</Port>\n    </LBProbePorts>\n"
            "    <ExpectHealthReport>FALSE</ExpectHealthReport>\n  </Machine>\n"
            f"  <Container>\n    <ContainerId>{escape(view.container_id)}</ContainerId>\n{remote}"
            "    <RoleInstanceList>\n      <RoleInstance>\n"
            f"        <InstanceId>{escape(sc.role_instance_id)}</InstanceId>\n"
            "        <State>Started</State>\n        <Configuration>\n"
            f"{config}"
            "        </Configuration>\n      </RoleInstance>\n    </RoleInstanceList>\n  </Container>\n"
            "</GoalState>\n")


def _deployment_xml(fab: Fabric, view: GoalView) -> str:
    """The Deployment and Incarnation elements HostingEnvironmentConfig and SharedConfig both carry."""
    sc = fab.scenario
    return (f"  <Deployment name={quoteattr(sc.deployment_name)} guid=\"{{{view.container_id}}}\" incarnation=\"0\">\n"
            f"    <Service name={quoteattr(sc.role_name + 'Service')} guid=\"{{00000000-0000-0000-0000-000000000000}}\" />\n"
            f"    <ServiceInstance name={quoteattr(sc.deployment_name + '.0')} "
            "guid=\"{00000000-0000-0000-0000-000000000000}\" />\n  </Deployment>\n"
            f"  <Incarnation number=\"1\" instance={quoteattr(sc.vm_name)} "
            "guid=\"{00000000-0000-0000-0000-000000000000}\" />\n")


def hosting_env_xml(fab: Fabric, view: GoalView) -> str:
    sc = fab.scenario
    return (f'<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation={quoteattr(view.incarnation)}>\n'
            "  <StoredCertificates />\n"
            + _deployment_xml(fab, view)
            + f"  <Role guid=\"{{00000000-0000-0000-0000-000000000000}}\" name={quoteattr(sc.role_name)} "
            "hostingEnvironmentVersion=\"1\" software=\"\" softwareType=\"ApplicationPackage\" entryPoint=\"\" "
            "parameters=\"\" settleTimeSeconds=\"10\" />\n"
            "  <HostingEnvironmentSettings name=\"full\" runtime=\"rd_fabric_stable.runtimePackage_1.0.0.8.zip\">\n"
            "    <CAS mode=\"full\" />\n    <PrivilegeLevel mode=\"max\" />\n"
            "    <AdditionalProperties><CgiHandlers></CgiHandlers></AdditionalProperties>\n"
            "  </HostingEnvironmentSettings>\n  <ApplicationSettings />\n  <ResourceReferences />\n"
            "</HostingEnvironmentConfig>\n")


def shared_config_xml(fab: Fabric, view: GoalView) -> str:
    sc = fab.scenario
    address = fab.imds_document()["network"]["interface"][0]["ipv4"]["ipAddress"][0]["privateIpAddress"]
    return (f'<SharedConfig version="1.0.0.0" goalStateIncarnation={quoteattr(view.incarnation)}>\n'
            + _deployment_xml(fab, view)
            + f"  <Role guid=\"{{00000000-0000-0000-0000-000000000000}}\" name={quoteattr(sc.role_name)} "
            "settleTimeSeconds=\"10\" />\n"
            "  <LoadBalancerSettings timeoutSeconds=\"0\" waitLoadBalancerProbeCount=\"8\">\n"
            f"    <Probes>\n      <Probe name={quoteattr(sc.role_name)} />\n    </Probes>\n  </LoadBalancerSettings>\n"
            "  <OutputEndpoints />\n  <Instances>\n"
            f"    <Instance id={quoteattr(sc.vm_name)} address={quoteattr(address)}>\n"
            "      <FaultDomains randomId=\"0\" updateId=\"0\" updateCount=\"0\" />\n      <InputEndpoints />\n"
            "    </Instance>\n  </Instances>\n</SharedConfig>\n")


def runtime_settings(fab: Fabric, ext: ExtensionSpec, item: SettingsSpec) -> Dict[str, Any]:
    """handlerSettings of one settings item; protected settings encrypted to the tenant certificate."""
    handler: Dict[str, Any] = {}
    if item.protected is not None:
        thumb, blob = fab.protected_settings(ext, item)
        handler["protectedSettingsCertThumbprint"] = thumb
        handler["protectedSettings"] = blob
    if item.public is not None:
        handler["publicSettings"] = item.public
    return handler


def extensions_config_xml(fab: Fabric, view: GoalView, host: str) -> str:
    sc, step = fab.scenario, view.wire_step
    out = ['<?xml version="1.0" encoding="utf-8"?>\n',
           f'<Extensions version="1.0.0.0" goalStateIncarnation={quoteattr(view.incarnation)}>'
           '<GuestAgentExtension xmlns:i="http://www.w3.org/2001/XMLSchema-instance">\n'
           "  <GAFamilies>\n    <GAFamily>\n      <Name>Prod</Name>\n"
           f"      <Uris>\n        <Uri>{escape(fab.agent_manifest_url(host))}</Uri>\n      </Uris>\n"
           "    </GAFamily>\n  </GAFamilies>\n"
           f"  <Location>{escape(sc.location)}</Location>\n  <ServiceName>CRP</ServiceName>\n"
           "</GuestAgentExtension>\n"]
    if step.required_features:
        out.append("<RequiredFeatures>\n" + "".join(
            f"  <RequiredFeature>\n    <Name>{escape(f)}</Name>\n    <Value>1.0</Value>\n  </RequiredFeature>\n"
            for f in step.required_features) + "</RequiredFeatures>\n")
    out.append(f"<StatusUploadBlob statusBlobType={quoteattr(step.status_blob_type)}>"
               f"{escape(fab.status_blob_url(host))}</StatusUploadBlob>\n")
    out.append("<Plugins>\n")
    for ext in step.extensions:
        signature = fab.encoded_signature(ext)
        sig = f" encodedSignature={quoteattr(signature)}" if signature else ""
        out.append(f"  <Plugin name={quoteattr(ext.name)} version={quoteattr(ext.version)} "
                   f"location={quoteattr(fab.manifest_url(host, ext.name))} "
                   f"failoverlocation={quoteattr(fab.manifest_url(host, ext.name, failover=True))} "
                   f"state={quoteattr(ext.state)} autoUpgrade=\"false\" runAsStartupTask=\"false\" isJson=\"true\" "
                   f"useExactVersion=\"true\"{sig} />\n")
    for i in range(step.extra_plugins):  # a huge plugin list: disabled fillers the VM never installs
        name = quoteattr(f"Fabric.Filler.P{i}")
        out.append(f"  <Plugin name={name} version=\"1.0.0\" location={quoteattr(fab.manifest_url(host, 'filler'))} "
                   "state=\"disabled\" autoUpgrade=\"false\" runAsStartupTask=\"false\" isJson=\"true\" "
                   "useExactVersion=\"true\" />\n")
    out.append("</Plugins>\n<PluginSettings>\n")
    for ext in step.extensions:
        if not ext.settings:
            continue
        out.append(f"  <Plugin name={quoteattr(ext.name)} version={quoteattr(ext.version)}>\n")
        for item in ext.settings:
            if item.dependency_level is not None:
                name = f" name={quoteattr(item.name)}" if ext.multi_config and item.name else ""
                deps = "".join(f"      <DependsOnExtension{''.join(f' {k}={quoteattr(v)}' for k, v in d.items())} />\n"
                               for d in item.depends_on)
                out.append(f"    <DependsOn dependencyLevel=\"{item.dependency_level}\"{name}>\n{deps}    </DependsOn>\n")
        for item in ext.settings:
            doc = json.dumps({"runtimeSettings": [{"handlerSettings": runtime_settings(fab, ext, item)}]})
            if ext.multi_config:
                out.append(f"    <ExtensionRuntimeSettings seqNo=\"{item.seq_no}\" name={quoteattr(item.name or '')} "
                           f"state={quoteattr(item.state)}>{escape(doc)}</ExtensionRuntimeSettings>\n")
            else:
                out.append(f"    <RuntimeSettings seqNo=\"{item.seq_no}\">{escape(doc)}</RuntimeSettings>\n")
        out.append("  </Plugin>\n")
    for i in range(step.extra_plugins):
        out.append(f"  <Plugin name=\"Fabric.Filler.P{i}\" version=\"1.0.0\">\n    <RuntimeSettings seqNo=\"0\">"
                   "{&quot;runtimeSettings&quot;: [{&quot;handlerSettings&quot;: {&quot;publicSettings&quot;: {}}}]}"
                   "</RuntimeSettings>\n  </Plugin>\n")
    out.append("</PluginSettings>\n")
    if sc.artifacts_profile:
        out.append(f"<InVMArtifactsProfileBlob>{escape(fab.artifacts_profile_url(host))}</InVMArtifactsProfileBlob>\n")
    out.append(f"<InVMGoalStateMetaData inSvdSeqNo={quoteattr(view.incarnation)} createdOnTicks=\"{view.wire_ticks}\" "
               f"activityId={quoteattr(view.activity_id)} correlationId={quoteattr(view.correlation_id)} />\n")
    out.append("</Extensions>\n")
    return "".join(out)


def _certificates(fab: Fabric, view: GoalView, req: Request) -> Response:
    from guestagent.fabric.crypto import CIPHERS, FabricCryptoError, envelope, load_transport_cert, wrap64

    cipher = req.header("x-ms-cipher-name") or "DES_EDE3_CBC"
    if cipher not in CIPHERS:
        return Response.text(400, f"unsupported x-ms-cipher-name {cipher!r}")
    try:
        transport = load_transport_cert(req.header("x-ms-guest-agent-public-x509-cert"))
        data = envelope(fab.tenant_pfx(), transport, cipher)
    except FabricCryptoError as exc:
        return Response.text(400, str(exc))
    return Response.xml('<?xml version="1.0" encoding="utf-8"?>\n'
                        '<CertificateFile xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                        'xsi:noNamespaceSchemaLocation="certificates10.xsd">\n'
                        f"  <Version>{PROTOCOL_VERSION}</Version>\n"
                        f"  <Incarnation>{escape(view.incarnation)}</Incarnation>\n"
                        "  <Format>Pkcs7BlobWithPfxContents</Format>\n"
                        f"  <Data>{wrap64(data)}</Data>\n</CertificateFile>\n")


def _remote_access(fab: Fabric, view: GoalView, req: Request) -> Response:
    from guestagent.fabric.crypto import FabricCryptoError, envelope, load_transport_cert

    users = view.wire_step.remote_access
    if users is None:
        return Response.text(404, "no remote access document in this goal state")
    try:
        transport = load_transport_cert(req.header("x-ms-guest-agent-public-x509-cert"))
        cipher = req.header("x-ms-cipher-name") or "AES128_CBC"
        parts = []
        for user in users:
            blob = base64.b64encode(envelope(user.password.encode("utf-16-le"), transport, cipher)).decode()
            groups = "".join(f"<GroupName>{escape(g)}</GroupName>" for g in user.groups)
            parts.append(f"    <User>\n      <Name>{escape(user.name)}</Name>\n      <Password>{blob}</Password>\n"
                         f"      <Expiration>{escape(user.expiration)}</Expiration>\n"
                         f"      <Groups>{groups}</Groups>\n    </User>\n")
    except FabricCryptoError as exc:
        return Response.text(400, str(exc))
    return Response.xml('<?xml version="1.0" encoding="utf-8"?>\n<RemoteAccess>\n  <Version>1</Version>\n'
                        f"  <Incarnation>{escape(view.incarnation)}</Incarnation>\n  <Users>\n"
                        + "".join(parts) + "  </Users>\n</RemoteAccess>\n")


# ------------------------------------------------------------------ what the VM posts

def _parse_xml(body: bytes) -> ET.Element:
    if len(body) > MAX_XML:
        raise BadDocument(f"document larger than {MAX_XML} bytes")
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise BadDocument("DTDs and entities are not accepted")
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise BadDocument(f"malformed XML: {exc}") from None


def _find_text(root: ET.Element, tag: str) -> Optional[str]:
    el = root.find(f".//{tag}")
    return None if el is None else (el.text or "")


def parse_health(body: bytes) -> Dict[str, Any]:
    root = _parse_xml(body)
    if root.tag != "Health":
        raise BadDocument(f"expected <Health>, got <{root.tag}>")
    state = _find_text(root, "State")
    if state is None:
        raise BadDocument("health report without <State>")
    return {"incarnation": _find_text(root, "GoalStateIncarnation"), "container_id": _find_text(root, "ContainerId"),
            "instance_id": _find_text(root, "InstanceId"), "state": state,
            "substatus": _find_text(root, "SubStatus"), "description": _find_text(root, "Description")}


def parse_role_properties(body: bytes) -> Dict[str, Any]:
    root = _parse_xml(body)
    if root.tag != "RoleProperties":
        raise BadDocument(f"expected <RoleProperties>, got <{root.tag}>")
    props = {p.get("name"): p.get("value") for p in root.iter("Property")}
    return {"container_id": _find_text(root, "ContainerId"), "instance_id": _find_text(root, "Id"),
            "properties": props}


_TYPES = {"mt:uint64": int, "mt:float64": float, "mt:bool": lambda v: v == "True"}


def parse_telemetry(body: bytes) -> List[Dict[str, Any]]:
    root = _parse_xml(body)
    if root.tag != "TelemetryData":
        raise BadDocument(f"expected <TelemetryData>, got <{root.tag}>")
    events = []
    for provider in root.findall("Provider"):
        pid = provider.get("id") or ""
        for event in provider.findall("Event"):
            params_root = _parse_xml(b"<Params>" + (event.text or "").encode("utf-8") + b"</Params>")
            params: Dict[str, Any] = {}
            for p in params_root.findall("Param"):
                name, value, typ = p.get("Name"), p.get("Value", ""), p.get("T", "mt:wstr")
                if name is None:
                    raise BadDocument("telemetry Param without Name")
                try:
                    params[name] = _TYPES.get(typ, str)(value)
                except ValueError:
                    raise BadDocument(f"telemetry Param {name} value {value!r} is not {typ}") from None
            try:
                event_id = int(event.get("id") or "")
            except ValueError:
                raise BadDocument(f"telemetry Event id {event.get('id')!r} is not an integer") from None
            events.append({"provider": pid, "event_id": event_id, "params": params})
    return events
