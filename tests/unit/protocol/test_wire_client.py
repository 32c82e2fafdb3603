"""WireProtocol against the loopback double: goal state, health, status upload, HGAP, artifacts, history."""

import base64
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from loopback import Fault, Loopback

from guestagent.conf import Config
from guestagent.errors import (
    ProtocolError,
    ProtocolNotFoundError,
    VmSettingsNotSupported,
    VmSettingsSupportStopped,
)
from guestagent.protocol.status import build_vm_status
from guestagent.protocol.wire import WireProtocol, detect, from_files
from guestagent.protocol.wireserver import health_report_body

LIB = "/var/lib/waagent"


@pytest.fixture
def fab():
    lb = Loopback().start()
    yield lb
    lb.stop()


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def proto(tmp_root, fab, sleeps):
    return detect(Config(), LIB, endpoint_ip="127.0.0.1", wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                  sleep=sleeps.append, transport_cert=False)


def paths(fab):
    return [(r.method, r.path.split("&")[0]) for r in fab.requests]


def test_detect_fetches_in_upstream_order_and_writes_files(proto, fab, tmp_root):
    assert paths(fab) == [("GET", "/?comp=versions"), ("GET", "/machine/?comp=goalstate"), ("GET", "/vmSettings"),
                          ("GET", "/machine/0a1b?comp=config"), ("GET", "/machine/0a1b?comp=config"),
                          ("GET", "/machine/0a1b?comp=config")]
    kinds = [r.path for r in fab.requests[3:]]
    assert "extensionsConfig" in kinds[0] and "hostingEnvironmentConfig" in kinds[1] and "sharedConfig" in kinds[2]
    gs = proto.goal_state
    assert gs.incarnation == "1" and gs.container_id.startswith("5e3b1c2a")
    assert gs.role_instance_id.endswith("vm-test_IN_0")
    assert gs.document.deployment_id == "0a1b2c3d-aaaa-4bbb-8ccc-ddddeeeeffff"
    assert gs.hosting_env.deployment_name == "f00dcafe0123456789abcdef00000001"
    lib = tmp_root / "var/lib/waagent"
    assert (lib / "WireServerEndpoint").read_text() == "127.0.0.1"
    assert (lib / "Protocol").read_text() == "WireProtocol"
    assert (lib / "SharedConfig.xml").read_text() == fab.doc("shared_config.xml").decode()
    assert (lib / "GoalState.1.xml").read_text() == "<xml>empty placeholder file</xml>"
    for r in fab.requests[1:]:
        if r.port == fab.wire_port:
            assert r.headers["x-ms-agent-name"] == "WALinuxAgent" and r.headers["x-ms-version"] == "2012-11-30"
    assert "x-ms-agent-name" not in fab.requests[0].headers


def test_history_folder_is_redacted(proto, fab, tmp_root):
    folders = list((tmp_root / "var/lib/waagent/history").iterdir())
    assert len(folders) == 1 and folders[0].name.endswith("__1")
    assert oct(folders[0].stat().st_mode & 0o777) == "0o700"
    saved = (folders[0] / "ExtensionsConfig.xml").read_text()
    assert "sig=" not in saved and "TUlJUFJPVEVDVEVE" not in saved and "***REDACTED***" in saved
    assert {p.name for p in folders[0].iterdir()} >= {"GoalState.xml", "ExtensionsConfig.xml",
                                                      "HostingEnvironmentConfig.xml", "SharedConfig.xml"}


def test_same_incarnation_fetches_only_the_goal_state(proto, fab):
    n = len(fab.requests)
    gs = proto.update_goal_state()
    # vmSettings answered 404 at detection: not asked again for 6 hours
    assert paths(fab)[n:] == [("GET", "/machine/?comp=goalstate")]
    assert gs is proto.goal_state
    fab.incarnation = "2"
    gs2 = proto.update_goal_state()
    assert gs2.incarnation == "2" and len(paths(fab)) == n + 1 + 4


def test_from_files_fast_path_no_traffic(proto, fab, tmp_root):
    n = len(fab.requests)
    p2 = from_files(Config(), LIB, wire_port=fab.wire_port, hgap_port=fab.hgap_port)
    assert p2.endpoint == "127.0.0.1" and len(fab.requests) == n
    assert p2.update_goal_state().incarnation == "1"


def test_from_files_missing_endpoint_uses_well_known(tmp_root):
    assert from_files(Config(), LIB).endpoint == "168.63.129.16"


def test_role_instance_missing_is_retried(proto, fab, sleeps):
    fab.faults.append(Fault("comp=goalstate", status=200, body=fab.doc("goal_state_no_role_instance.xml"), count=2))
    assert proto.update_goal_state().incarnation == "1"
    assert sleeps[-2:] == [0.5, 0.5]
    fab.faults.append(Fault("comp=goalstate", status=200, body=fab.doc("goal_state_no_role_instance.xml"), count=6))
    with pytest.raises(ProtocolError, match="without a RoleInstance"):
        proto.update_goal_state()


@pytest.mark.parametrize("fault", [Fault("comp=goalstate", status=500, count=2), Fault("comp=goalstate", status=503),
                                   Fault("comp=goalstate", status=429), Fault("comp=goalstate", reset=True),
                                   Fault("comp=goalstate", truncated=True), Fault("comp=goalstate", delay=0.6)],
                         ids=["500", "503", "429", "reset", "truncated", "slow"])
def test_goal_state_survives_transient_faults(proto, fab, fault, sleeps):
    proto.http.timeout = 0.3  # the slow answer (0.6 s) times out and is retried
    n, expected = len(fab.requests), fault.count + 1
    fab.faults.append(fault)
    assert proto.update_goal_state(force=True).incarnation == "1"
    gets = [r for r in fab.requests[n:] if r.path == "/machine/?comp=goalstate"]
    assert len(gets) == expected


@pytest.mark.parametrize("body", [b"<GoalState><Incarnation>", b"{json: 1}", b""], ids=["truncated", "json", "empty"])
def test_malformed_goal_state_is_a_protocol_error_and_next_call_works(proto, fab, body):
    before = proto.goal_state
    fab.faults.append(Fault("comp=goalstate", status=200, body=body or b" "))
    with pytest.raises(ProtocolError):
        proto.update_goal_state(force=True)
    assert proto.goal_state is before
    assert proto.update_goal_state(force=True).incarnation == "1"


def test_sub_document_failure_fails_the_update(proto, fab):
    fab.faults.append(Fault("type=sharedConfig", status=404))
    with pytest.raises(ProtocolError, match="Error fetching goal state"):
        proto.update_goal_state(force=True)
    fab.faults.append(Fault("type=hostingEnvironmentConfig", status=200, body=b"<Hosting"))
    with pytest.raises(ProtocolError, match="Error fetching goal state"):
        proto.update_goal_state(force=True)
    assert proto.update_goal_state(force=True).hosting_env.role_name == "vm-test"


def test_410_on_wireserver(proto, fab):
    from guestagent.errors import ResourceGoneError

    fab.faults.append(Fault("comp=goalstate", status=410))
    with pytest.raises(ResourceGoneError):
        proto.update_goal_state()


def test_versions_unsupported(tmp_root, fab):
    fab.overrides["comp=versions"] = lambda seen: (200, {}, fab.doc("versions_unsupported.xml"))
    with pytest.raises(ProtocolNotFoundError, match="No protocol found"):
        detect(Config(), LIB, endpoint_ip="127.0.0.1", wire_port=fab.wire_port, hgap_port=fab.hgap_port,
               sleep=lambda s: None, attempts=2, transport_cert=False)
    assert not (tmp_root / "var/lib/waagent/Protocol").exists()


def test_health_reports_exact_bodies(proto, fab):
    proto.report_ready()
    proto.report_not_ready("Provisioning", "Starting")
    proto.report_not_ready("ProvisioningFailed", "x<y & z>" + "d" * 5000)
    head = ('<?xml version="1.0" encoding="utf-8"?><Health xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema"><GoalStateIncarnation>1</GoalStateIncarnation><Container>'
            '<ContainerId>5e3b1c2a-1111-4222-8333-944455566677</ContainerId><RoleInstanceList><Role><InstanceId>'
            '0a1b2c3d-aaaa-4bbb-8ccc-ddddeeeeffff.vm-test_IN_0</InstanceId><Health><State>')
    assert fab.health[0].decode() == head + "Ready</State></Health></Role></RoleInstanceList></Container></Health>"
    assert fab.health[1].decode() == head + ("NotReady</State><Details><SubStatus>Provisioning</SubStatus>"
                                             "<Description>Starting</Description></Details></Health></Role>"
                                             "</RoleInstanceList></Container></Health>")
    desc = fab.health[2].decode().split("<Description>")[1].split("</Description>")[0]
    assert desc.startswith("x&lt;y &amp; z&gt;") and len(desc) == 3686 + 3 + 4 + 3
    health = next(r for r in fab.requests if r.path == "/machine?comp=health")
    assert health.headers["content-type"] == "text/xml;charset=utf-8"


def test_health_retries_30_times_with_15s_base(proto, fab, sleeps):
    fab.faults.append(Fault("comp=health", status=500, count=29))
    proto.report_ready()
    assert sleeps[:3] == [30, 45, 75] and len(sleeps) == 29


def test_health_body_helper_without_substatus():
    assert "<Details>" not in health_report_body("1", "c", "i", "Ready")


def test_role_properties_and_telemetry(proto, fab):
    proto.report_role_properties("ABCDEF")
    proto.post_telemetry('<?xml version="1.0"?><TelemetryData version="1.0"></TelemetryData>')
    assert fab.telemetry == [b'<?xml version="1.0"?><TelemetryData version="1.0"></TelemetryData>']
    rp = next(r for r in fab.requests if "roleProperties" in r.path)
    assert b'<Property name="CertificateThumbprint" value="ABCDEF" />' in rp.body


def _status(proto):
    return build_vm_status(Config(), proto.goal_state, [{"handlerName": "H", "status": "Ready",
                                                     "formattedMessage": {"lang": "en-US", "message":
                                                                          "see https://a/b?sv=1&sig=zz"}}],
                           computer_name="vm", os_name="debian", os_version="12", now=0)


def test_status_upload_block_blob_via_hgap(proto, fab):
    assert proto.upload_status(_status(proto)) == "HostGAPlugin"
    blob = json.loads(bytes(fab.blobs["/storage/vm-test.status"]))
    assert blob["aggregateStatus"]["handlerAggregateStatus"][0]["formattedMessage"]["message"] == \
        "see https://a/b?<redacted>"
    env = fab.hgap_status[0]
    assert list(env) == ["content", "headers", "requestUri"]
    assert [h["headerName"] for h in env["headers"]] == ["Content-Length", "x-ms-blob-type", "x-ms-date",
                                                         "x-ms-version"]
    put = next(r for r in fab.requests if r.path == "/status")
    assert put.headers["x-ms-containerid"] == proto.goal_state.container_id
    assert put.headers["x-ms-host-config-name"] == proto.goal_state.role_config_name
    assert put.headers["x-ms-version"] == "2015-09-01"


def test_status_upload_page_blob_via_hgap_pads_with_spaces(tmp_root, fab):
    fab.blob_type = "PageBlob"
    proto = detect(Config(), LIB, endpoint_ip="127.0.0.1", wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                   sleep=lambda s: None, transport_cert=False)
    status = _status(proto)
    proto.upload_status(status)
    raw = bytes(fab.blobs["/storage/vm-test.status"])
    assert len(raw) % 512 == 0 and raw.rstrip(b" ") == json.dumps(status).encode()
    create, page = fab.hgap_status[0], fab.hgap_status[1]
    assert "content" not in create and "comp=page" in page["requestUri"]
    assert [h["headerName"] for h in page["headers"]] == ["Content-Length", "x-ms-date", "x-ms-range",
                                                          "x-ms-page-write", "x-ms-version"]
    assert base64.b64decode(page["content"]) == raw


@pytest.mark.parametrize("blob_type", ["BlockBlob", "PageBlob"])
def test_status_direct_fallback(tmp_root, fab, blob_type):
    fab.blob_type = blob_type
    fab.faults.append(Fault("PUT /status", status=500, count=100))
    proto = detect(Config(), LIB, endpoint_ip="127.0.0.1", wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                   sleep=lambda s: None, transport_cert=False)
    status = _status(proto)
    assert proto.upload_status(status) == "Direct"
    raw = bytes(fab.blobs["/storage/vm-test.status"])
    assert raw.rstrip(b"\0") == json.dumps(status).encode()
    direct = [r for r in fab.requests if r.path.startswith("/storage/") and r.method == "PUT"]
    assert direct[0].headers["x-ms-blob-type"] == blob_type and direct[0].headers["x-ms-version"] == "2014-02-14"


def test_status_hgap_410_skips_cycle_and_refreshes(proto, fab):
    fab.faults.append(Fault("PUT /status", status=410))
    assert proto.upload_status(_status(proto)) == "Skipped"
    assert "/storage/vm-test.status" not in fab.blobs
    assert fab.requests[-1].path == "/machine/?comp=goalstate"


def test_status_both_channels_fail(proto, fab):
    fab.faults += [Fault("PUT /status", status=400, count=10), Fault("PUT /storage", status=404, count=10)]
    with pytest.raises(ProtocolError, match="either channel"):
        proto.upload_status(_status(proto))


def test_status_saved_in_history(proto, fab, tmp_root):
    proto.upload_status(_status(proto))
    folder = next((tmp_root / "var/lib/waagent/history").iterdir())
    assert json.loads((folder / "waagent_status.json").read_text())["version"] == "1.1"


def test_status_without_blob_url(tmp_root, fab):
    fab.overrides["type=extensionsConfig"] = lambda seen: (200, {}, fab.doc("ext_conf.xml").replace(
        b"StatusUploadBlob", b"Ignored"))
    proto = detect(Config(), LIB, endpoint_ip="127.0.0.1", wire_port=fab.wire_port, hgap_port=fab.hgap_port,
                   sleep=lambda s: None, transport_cert=False)
    with pytest.raises(ProtocolNotFoundError, match="Status upload uri is missing"):
        proto.upload_status(_status(proto))


# --- HGAP vmSettings -----------------------------------------------------------------------------------
VM = {"hostGAPluginVersion": "1.0.8.133", "vmSettingsSchemaVersion": "0.0", "activityId": "a", "correlationId": "c",
      "inSvdSeqNo": 3, "extensionsLastModifiedTickCount": 638999999999999999, "extensionGoalStatesSource": "FastTrack",
      "statusUploadBlob": {"statusBlobType": "BlockBlob", "value": "http://x/s?sig=1"}, "gaFamilies": [],
      "extensionGoalStates": []}


def enable(proto, fab, doc):
    """Detection saw a 404 (FastTrack off for 6 h); the plugin now offers vmSettings."""
    fab.vm_settings = json.dumps(doc) if isinstance(doc, dict) else doc
    proto.host_plugin._not_supported_until = 0.0


def test_vm_settings_etag_304_and_fast_track_file(proto, fab, tmp_root):
    enable(proto, fab, VM)
    r1 = proto.fetch_vm_settings()
    assert r1.updated and r1.etag == "1111"
    r2 = proto.fetch_vm_settings()
    assert not r2.updated and r2.text == r1.text
    assert fab.requests[-1].headers["if-none-match"] == "1111"
    ft = json.loads((tmp_root / "var/lib/waagent/fast_track.json").read_text())
    assert ft == {"timestamp": "2025-11-28T17:33:19.999999Z"} or ft["timestamp"].startswith("2025-")
    hdr = fab.requests[-1].headers
    assert hdr["x-ms-containerid"] and hdr["x-ms-host-config-name"] and hdr["x-ms-client-correlationid"]


def test_vm_settings_goal_state_selection(proto, fab):
    enable(proto, fab, VM)
    gs = proto.update_goal_state()
    assert gs.extensions_goal_state.source == "FastTrack" and gs.extensions_goal_state.id == "etag_1111"
    assert gs.history_folder.endswith("__1-1111") and gs.fast_track_supported


def test_vm_settings_fabric_source_is_ignored(proto, fab):
    enable(proto, fab, dict(VM, extensionGoalStatesSource="Fabric"))
    assert proto.update_goal_state().extensions_goal_state.source == "Fabric"
    assert proto.goal_state.extensions_goal_state.id == "incarnation_1"


def test_vm_settings_support_stopped(proto, fab):
    enable(proto, fab, VM)
    proto.update_goal_state()
    fab.vm_settings = None
    with pytest.raises(VmSettingsSupportStopped):
        proto.fetch_vm_settings()
    with pytest.raises(VmSettingsNotSupported):
        proto.fetch_vm_settings()


def test_vm_settings_support_stopped_in_update_uses_wireserver(proto, fab):
    enable(proto, fab, VM)
    proto.update_goal_state()
    fab.vm_settings = None
    gs = proto.update_goal_state()
    assert gs.extensions_goal_state.id == "incarnation_1" and gs.extensions_goal_state.is_outdated


def test_vm_settings_old_hgap_is_unsupported(proto, fab):
    enable(proto, fab, dict(VM, hostGAPluginVersion="1.0.8.100"))
    with pytest.raises(VmSettingsNotSupported):
        proto.fetch_vm_settings()


@pytest.mark.parametrize("status", [500, 502, 400])
def test_vm_settings_errors_fail_the_update(proto, fab, status):
    enable(proto, fab, VM)
    fab.faults.append(Fault("GET /vmSettings", status=status))
    with pytest.raises(ProtocolError):
        proto.update_goal_state()
    assert proto.update_goal_state().extensions_goal_state.source == "FastTrack"


def test_vm_settings_missing_etag(proto, fab):
    enable(proto, fab, VM)
    fab.overrides["GET /vmSettings"] = lambda seen: (200, {}, b"{}")
    with pytest.raises(ProtocolError, match="does not include an Etag header"):
        proto.fetch_vm_settings()


def test_vm_settings_410_refreshes_and_retries(proto, fab):
    enable(proto, fab, VM)
    fab.faults.append(Fault("GET /vmSettings", status=410))
    assert proto.fetch_vm_settings().updated
    assert [r.path for r in fab.requests[-3:]] == ["/vmSettings", "/machine/?comp=goalstate", "/vmSettings"]


def test_vm_settings_parse_error_saved_once(proto, fab, tmp_root):
    from guestagent.errors import VmSettingsParseError

    enable(proto, fab, '{"hostGAPluginVersion": "1.0.8.133", "extensionGoalStatesSource": "FastTrack", '
                       '"extensionGoalStates": "not a list", "protectedSettings": "SECRETSECRET"}')
    with pytest.raises(VmSettingsParseError):
        proto.update_goal_state()
    folders = [p for p in (tmp_root / "var/lib/waagent/history").iterdir() if p.name.endswith("__1111")]
    assert len(folders) == 1
    assert "SECRETSECRET" not in (folders[0] / "VmSettings.json").read_text()


# --- artifacts --------------------------------------------------------------------------------------------
def test_artifact_direct_then_hgap_flips_channel(proto, fab):
    import guestagent.protocol.wire as facade

    facade._direct_is_primary = True
    fab.artifacts["/storage/pkg.zip"] = b"PK\x03\x04zip"
    url = f"{fab.base}/storage/pkg.zip"
    assert proto.download_artifact([url]) == b"PK\x03\x04zip"
    assert facade._direct_is_primary
    fab.faults.append(Fault("GET /storage/pkg.zip", status=404))
    assert proto.download_artifact([url]) == b"PK\x03\x04zip"
    assert not facade._direct_is_primary
    hgap = [r for r in fab.requests if r.path == "/extensionArtifact"][-1]
    assert hgap.headers["x-ms-artifact-location"] == url
    facade._direct_is_primary = True


def test_artifact_all_fail(proto, fab):
    from guestagent.errors import ExtensionError

    with pytest.raises(ExtensionError) as err:
        proto.download_artifact([f"{fab.base}/storage/none1", f"{fab.base}/storage/none2"])
    assert err.value.code == 1001


def test_manifest_location_header(proto, fab):
    import guestagent.protocol.wire as facade

    fab.artifacts["/storage/m.xml"] = b"<PluginVersionManifest/>"
    fab.artifacts["/storage/p.zip"] = b"zip"
    assert proto.download_manifest([f"{fab.base}/storage/m.xml"]) == "<PluginVersionManifest/>"
    facade._direct_is_primary = False
    try:
        proto.download_artifact([f"{fab.base}/storage/p.zip"])
    finally:
        facade._direct_is_primary = True
    hgap = [r for r in fab.requests if r.path == "/extensionArtifact"][-1]
    assert hgap.headers["x-ms-artifact-manifest-location"] == f"{fab.base}/storage/m.xml"


def test_hgap_unavailable(proto, fab):
    fab.hgap_versions = b"[]"
    fab.faults.append(Fault("PUT /status", status=500, count=0))
    proto.host_plugin.is_initialized = False
    assert proto.upload_status(_status(proto)) == "Direct"


def test_hgap_log_upload_and_health(proto, fab):
    proto.upload_logs(b"PK zip")
    put = next(r for r in fab.requests if r.path == "/vmAgentLog")
    assert put.headers["x-ms-vmagentlog-deploymentid"] == "0a1b2c3d-aaaa-4bbb-8ccc-ddddeeeeffff"
    assert put.headers["x-ms-client-name"] == "WALinuxAgent" and put.body == b"PK zip"
    assert proto.host_plugin.health()


def test_wire_protocol_requires_endpoint():
    with pytest.raises(ProtocolError):
        WireProtocol("", LIB)
