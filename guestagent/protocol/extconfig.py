"""ExtensionsConfig XML and vmSettings JSON → one extensions goal state model (spec 03 §1–§4).

Parse at the edge: everything downstream (the handler lifecycle, status reporting, history) works on the
typed models here and never sees raw XML/JSON. An error confined to one handler marks only that handler
invalid (``invalid_setting_reason``, reported as its status, 04 §13); anything else fails the whole
document (``ExtensionsConfigError`` / ``VmSettingsParseError``) with the reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from guestagent.errors import ExtensionsConfigError, VmSettingsParseError
from guestagent.protocol import xml
from guestagent.timestamps import MIN_TIMESTAMP, ticks_to_timestamp

ZERO_GUID = "00000000-0000-0000-0000-000000000000"
REQUESTED_STATES = ("enabled", "disabled", "uninstall")
BLOB_TYPES = ("BlockBlob", "PageBlob")
#: HGAP version from which vmSettings carries a usable encodedSignature (03 §1).
MIN_HGAP_FOR_SIGNATURE = (1, 0, 8, 159)


# --- models ----------------------------------------------------------------------------------------------
@dataclass
class ExtensionSettings:
    """One settings item: a single-config handler's settings, or one extension of a multi-config handler."""

    name: str
    sequence_number: int
    public_settings: Any = None
    protected_settings: Optional[str] = field(default=None, repr=False)
    certificate_thumbprint: Optional[str] = None
    dependency_level: int = 0
    state: str = "enabled"

    def handler_settings(self) -> dict:
        """The ``handlerSettings`` object of the settings file, keys in upstream's order (03 §10)."""
        return {"publicSettings": self.public_settings, "protectedSettings": self.protected_settings,
                "protectedSettingsCertThumbprint": self.certificate_thumbprint}


@dataclass
class Extension:
    """One handler (``Publisher.Type``) requested by the goal state."""

    name: str
    version: str
    state: str
    manifest_uris: list = field(default_factory=list)
    supports_multi_config: bool = False
    encoded_signature: str = ""
    settings: list = field(default_factory=list)
    invalid_setting_reason: Optional[str] = None
    #: The name or version is not safe to join into a path: nothing of this handler may touch the disk.
    unsafe: bool = False

    @property
    def full_name(self) -> str:
        return f"{self.name}-{self.version}"


@dataclass
class AgentFamily:
    name: str
    uris: list = field(default_factory=list)
    version: Optional[str] = None
    from_version: Optional[str] = None
    is_version_from_rsm: Optional[bool] = None
    is_vm_enabled_for_rsm_upgrades: Optional[bool] = None


@dataclass
class ExtensionsGoalState:
    """What the agent is asked to do with extensions, whichever channel it came from."""

    id: str
    source: str                      # "Fabric" | "FastTrack" | "UNKNOWN" | "Empty"
    channel: str                     # "WireServer" | "HostGAPlugin" | "Empty"
    incarnation: str = ""
    etag: str = ""
    svd_sequence_number: str = ""
    activity_id: str = ZERO_GUID
    correlation_id: str = ZERO_GUID
    created_on_ticks: int = 0
    created_on_timestamp: str = MIN_TIMESTAMP
    status_upload_blob: Optional[str] = field(default=None, repr=False)
    status_upload_blob_type: str = "BlockBlob"
    required_features: list = field(default_factory=list)
    on_hold: bool = False
    artifacts_profile_blob: Optional[str] = field(default=None, repr=False)
    agent_families: list = field(default_factory=list)
    extensions: list = field(default_factory=list)
    host_ga_plugin_version: Optional[str] = None
    schema_version: Optional[str] = None
    supports_encoded_signature: bool = False
    is_outdated: bool = False
    warnings: list = field(default_factory=list)

    def get_extension(self, name: str) -> Optional[Extension]:
        for ext in self.extensions:
            if ext.name == name:
                return ext
        return None


def empty_goal_state(incarnation: str) -> ExtensionsGoalState:
    """The goal state used when the WireServer goal state has no ExtensionsConfig (03 §1 "Empty")."""
    return ExtensionsGoalState(id=f"incarnation_{incarnation}", source="Empty", channel="Empty",
                               incarnation=incarnation, svd_sequence_number=incarnation)


# --- validation at the edge (issue 13) ------------------------------------------------------------------------
# Names and numbers from the fabric become folder and file names and command environments; they are checked
# here, before anything is joined into a path. Upstream applies no rule when parsing (its folder pattern only
# reads names without '-' back); these rules refuse only what could never be a real handler.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_VERSION = re.compile(r"[0-9]{1,9}(?:\.[0-9]{1,9})*")
_SEQ_NO = re.compile(r"[0-9]{1,18}")
MAX_NAME = 200      # "<name>-<version>" and ".<name>-<version>.unpacking" stay under NAME_MAX (255)
MAX_VERSION = 40


def _bad_name(value: Any, max_len: int = MAX_NAME) -> Optional[str]:
    """Why ``value`` is not a safe handler or extension name (None when it is)."""
    if not isinstance(value, str) or not value:
        return "empty or not a string"
    if len(value) > max_len:
        return f"longer than {max_len} characters"
    if not _NAME.fullmatch(value) or ".." in value:
        return "only letters, digits, '.', '_' and '-' are allowed, starting with a letter or digit, no '..'"
    return None


def handler_name_error(name: Any) -> Optional[str]:
    why = _bad_name(name)
    return None if why is None else f"Invalid handler name {name!r}: {why}"


def version_error(version: Any) -> Optional[str]:
    if isinstance(version, str) and len(version) <= MAX_VERSION and _VERSION.fullmatch(version):
        return None
    return f"Invalid handler version {version!r}: expected dotted numbers (e.g. 1.2.3)"


def extension_name_error(name: Any) -> Optional[str]:
    why = _bad_name(name)
    return None if why is None else f"Invalid multi-config extension name {name!r}: {why}"


def seq_no_from_json(value: Any, name: str) -> int:
    """A JSON sequence number: an integer, not a bool, float or string, and not negative."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10 ** 18:
        raise ExtensionsConfigError(f"Invalid sequence number {value!r} for the Extension: {name} "
                                    f"(expected a non-negative integer)")
    return value


def seq_no_from_xml(value: str, name: str) -> int:
    if not _SEQ_NO.fullmatch(value):
        raise ExtensionsConfigError(f"Invalid sequence number {value!r} for the Extension: {name} "
                                    f"(expected a non-negative integer)")
    return int(value)


def _refuse_unsafe(ext: Extension) -> bool:
    """Mark ``ext`` invalid and unsafe when its name or version may not become a folder name."""
    reason = handler_name_error(ext.name) or version_error(ext.version)
    if reason is None:
        return False
    ext.invalid_setting_reason, ext.unsafe = reason, True
    return True


def _check_extension_names(ext: Extension) -> None:
    """A multi-config extension name becomes a file name: one bad name refuses the handler (its settings,
    which would be written under that name, are dropped)."""
    if not ext.supports_multi_config:
        return
    for settings in ext.settings:
        reason = extension_name_error(settings.name)
        if reason is not None:
            ext.settings = []
            raise ExtensionsConfigError(reason)


# --- helpers -----------------------------------------------------------------------------------------------
def _to_id(value: Any) -> str:
    return value if isinstance(value, str) and value else ZERO_GUID


def _to_int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _version_tuple(text: Optional[str]) -> tuple:
    try:
        return tuple(int(p) for p in str(text).split("."))
    except ValueError:
        return ()


def _bool_or_none(text: Optional[str]) -> Optional[bool]:
    if text is None:
        return None
    if isinstance(text, bool):
        return text
    return str(text).strip().lower() == "true"


def _blob_type(value: Any, warnings: list) -> str:
    if value in BLOB_TYPES:
        return value
    warnings.append(f"Bad blob type: expected BlockBlob or PageBlob, got {value!r}; using BlockBlob")
    return "BlockBlob"


# --- ExtensionsConfig XML (03 §2) ----------------------------------------------------------------------------
def parse_extensions_config(xml_text: str, incarnation: str = "") -> ExtensionsGoalState:
    """Parse the WireServer ExtensionsConfig document; raise ExtensionsConfigError for a broken document."""
    try:
        root = xml.parse(xml_text, what="ExtensionsConfig")
        return _from_extensions_config(root, incarnation)
    except ExtensionsConfigError:
        raise
    except Exception as e:
        raise ExtensionsConfigError(f"Error parsing ExtensionsConfig (incarnation: {incarnation}): {e}") from None


def _from_extensions_config(root: Any, incarnation: str) -> ExtensionsGoalState:
    warnings: list = []
    meta = xml.find(root, "InVMGoalStateMetaData")
    ticks = _to_int(xml.attr(meta, "createdOnTicks"), 0)
    blob = xml.find(root, "StatusUploadBlob")
    blob_url = (xml.text(blob) or "").strip() or None
    profile = (xml.findtext(root, "InVMArtifactsProfileBlob") or "").strip() or None
    egs = ExtensionsGoalState(
        id=f"incarnation_{incarnation}", source="Fabric", channel="WireServer", incarnation=incarnation,
        svd_sequence_number=incarnation,
        activity_id=_to_id(xml.attr(meta, "activityId")), correlation_id=_to_id(xml.attr(meta, "correlationId")),
        created_on_ticks=ticks,
        created_on_timestamp=ticks_to_timestamp(xml.attr(meta, "createdOnTicks")) if meta is not None
        else MIN_TIMESTAMP,
        status_upload_blob=blob_url,
        status_upload_blob_type=_blob_type(xml.attr(blob, "statusBlobType"), warnings) if blob is not None
        else "BlockBlob",
        artifacts_profile_blob=profile, supports_encoded_signature=True, warnings=warnings)
    for feature in xml.findall(xml.find(root, "RequiredFeatures"), "RequiredFeature"):
        name = xml.findtext(feature, "Name")
        if name:
            egs.required_features.append(name)
    for fam in xml.findall(xml.find(root, "GAFamilies"), "GAFamily"):
        egs.agent_families.append(AgentFamily(
            name=xml.findtext(fam, "Name") or "",
            uris=[(xml.text(u) or "").strip() for u in xml.findall(xml.find(fam, "Uris"), "Uri")],
            version=xml.findtext(fam, "Version"), from_version=xml.findtext(fam, "FromVersion"),
            is_version_from_rsm=_bool_or_none(xml.findtext(fam, "IsVersionFromRSM")),
            is_vm_enabled_for_rsm_upgrades=_bool_or_none(xml.findtext(fam, "IsVMEnabledForRSMUpgrades"))))
    plugin_settings: dict = {}
    for node in xml.findall(xml.find(root, "PluginSettings"), "Plugin"):
        plugin_settings.setdefault((xml.attr(node, "name") or "").lower(), []).append(node)
    for plugin in xml.findall(xml.find(root, "Plugins"), "Plugin"):
        ext = Extension(name=xml.attr(plugin, "name", "") or "", version=xml.attr(plugin, "version", "") or "",
                        state=xml.attr(plugin, "state", "") or "",
                        encoded_signature=xml.attr(plugin, "encodedSignature", "") or "")
        for what, value in (("name", ext.name), ("version", ext.version)):
            if not value:
                warnings.append(f"Extensions.Plugins.Plugin.{what} is None for ExtensionConfig, logging error")
        egs.extensions.append(ext)
        if _refuse_unsafe(ext):
            continue
        try:
            _parse_plugin(ext, plugin)
            _parse_plugin_settings(ext, plugin_settings.get(ext.name.lower(), []), warnings)
            _check_extension_names(ext)
        except ExtensionsConfigError as e:
            ext.invalid_setting_reason = e.msg
    return egs


def _parse_plugin(ext: Extension, plugin: Any) -> None:
    if not ext.state:
        raise ExtensionsConfigError("Received empty Extensions.Plugins.Plugin.state, failing Handler")
    for name in ("location", "failoverlocation"):
        value = (xml.attr(plugin, name) or "").strip()
        if value:
            ext.manifest_uris.append(value)
    for node in xml.findall(xml.find(plugin, "additionalLocations"), "additionalLocation"):
        value = (xml.text(node) or "").strip()
        if value:
            ext.manifest_uris.append(value)


def _parse_plugin_settings(ext: Extension, mine: list, warnings: list) -> None:
    """``mine``: the PluginSettings/Plugin nodes with this handler's name (indexed once per document)."""
    if not mine:
        return
    same = [p for p in mine if xml.attr(p, "version") == ext.version]
    if len(same) != len(mine):
        found = ", ".join(sorted({xml.attr(p, "version") or "" for p in mine}))
        msg = (f"Extension PluginSettings Version Mismatch! Expected PluginSettings version: {ext.version} "
               f"for Extension: {ext.name} but found versions: ({found})")
        warnings.append(msg)
        raise ExtensionsConfigError(msg)
    if len(same) > 1:
        raise ExtensionsConfigError(f"Multiple plugin settings found for the same extension: {ext.name} and "
                                    f"version: {ext.version} (Expected: 1; Available: {len(same)})")
    node = same[0]
    runtime = xml.findall(node, "RuntimeSettings")
    ext_runtime = xml.findall(node, "ExtensionRuntimeSettings")
    if runtime and ext_runtime:
        raise ExtensionsConfigError("Both RuntimeSettings and ExtensionRuntimeSettings found for the same "
                                    f"extension: {ext.name} and version: {ext.version}")
    depends_on = xml.findall(node, "DependsOn")
    if runtime:
        if len(runtime) > 1:
            raise ExtensionsConfigError(f"Multiple RuntimeSettings found for the same extension: {ext.name} and "
                                        f"version: {ext.version} (Expected: 1; Available: {len(runtime)})")
        if len(depends_on) > 1:
            raise ExtensionsConfigError("Extension Handler can only have a single dependsOn node for Single "
                                        f"config extensions. Found: {len(depends_on)}")
        level = _level(depends_on[0] if depends_on else None, ext.name, warnings)
        _add_settings(ext, runtime[0], ext.name, level, "enabled", warnings)
    elif ext_runtime:
        levels: dict = {}
        for dep in depends_on:
            name = xml.attr(dep, "name")
            if not name:
                raise ExtensionsConfigError("No Name not specified for DependsOn object in ExtensionRuntimeSettings "
                                            "for MultiConfig!")
            levels[name] = _level(dep, name, warnings)
        ext.supports_multi_config = True
        for node in ext_runtime:
            name = xml.attr(node, "name")
            if not name:
                raise ExtensionsConfigError("Extension Name not specified for ExtensionRuntimeSettings for "
                                            "MultiConfig!")
            state = (xml.attr(node, "state") or "").lower() or "enabled"
            _add_settings(ext, node, name, levels.get(name, 0), state, warnings)


def _level(node: Any, name: str, warnings: list) -> int:
    if node is None:
        return 0
    try:
        return int(xml.attr(node, "dependencyLevel"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        warnings.append(f"Could not parse dependencyLevel for handler {name}. Setting it to 0")
        return 0


def _add_settings(ext: Extension, node: Any, name: str, level: int, state: str, warnings: list) -> None:
    seq_no = xml.attr(node, "seqNo")
    if seq_no in (None, ""):
        raise ExtensionsConfigError(f"SeqNo not specified for the Extension: {name}")
    seq = seq_no_from_xml(seq_no, name)  # type: ignore[arg-type]
    try:
        doc = json.loads(xml.text(node) or "")
        items = doc["runtimeSettings"]
        if not isinstance(items, list):
            raise ValueError("runtimeSettings is not an array")
        parsed = []
        for item in items:
            hs = item["handlerSettings"]
            if not isinstance(hs, dict):
                raise ValueError("handlerSettings is not an object")
            parsed.append(ExtensionSettings(
                name=name, sequence_number=seq, state=state, dependency_level=level,
                public_settings=hs.get("publicSettings"), protected_settings=hs.get("protectedSettings"),
                certificate_thumbprint=hs.get("protectedSettingsCertThumbprint")))
    except (ValueError, KeyError, TypeError) as e:
        # Keep name + seqNo so a status can still be reported for this sequence number (03 §2.3).
        warnings.append(f"Invalid extension settings for {name}: {e}")
        ext.settings.append(ExtensionSettings(name=name, sequence_number=seq, state=state, dependency_level=level))
        return
    ext.settings.extend(parsed)


# --- vmSettings JSON (03 §3) ---------------------------------------------------------------------------------
class _Folded(dict):
    """A dict whose keys are matched case-insensitively (HGAP is inconsistent about case)."""

    @classmethod
    def of(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return cls((str(k).casefold(), cls.of(v)) for k, v in value.items())
        if isinstance(value, list):
            return [cls.of(v) for v in value]
        return value

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.casefold(), default)

    def need(self, key: str, where: str) -> Any:
        value = super().get(key.casefold())
        if value is None:
            raise VmSettingsParseError(f"Missing '{key}' in {where}")
        return value


def _list(value: Any, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise VmSettingsParseError(f"{what} should be an array")
    return value


def _obj(value: Any, what: str) -> _Folded:
    if not isinstance(value, _Folded):
        raise VmSettingsParseError(f"{what} should be an object")
    return value


def parse_vm_settings(json_text: str, etag: str) -> ExtensionsGoalState:
    """Parse the HostGAPlugin vmSettings document; any violation rejects the whole document."""
    try:
        doc = json.loads(json_text)
    except (ValueError, TypeError) as e:
        raise VmSettingsParseError(f"Error parsing vmSettings [HGAP: unknown Etag: {etag}]: invalid JSON: {e}") \
            from None
    if not isinstance(doc, dict):
        raise VmSettingsParseError(f"Error parsing vmSettings [Etag: {etag}]: the document is not a JSON object")
    vm = _Folded.of(doc)
    try:
        return _from_vm_settings(vm, etag)
    except VmSettingsParseError as e:
        raise VmSettingsParseError(f"Error parsing vmSettings [HGAP: {vm.get('hostGAPluginVersion')} "
                                   f"Etag: {etag}]: {e.msg}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise VmSettingsParseError(f"Error parsing vmSettings [HGAP: {vm.get('hostGAPluginVersion')} "
                                   f"Etag: {etag}]: {type(e).__name__}: {e}") from None


def _from_vm_settings(vm: _Folded, etag: str) -> ExtensionsGoalState:
    warnings: list = []
    hgap = vm.get("hostGAPluginVersion")
    ticks = vm.get("extensionsLastModifiedTickCount")
    seq = vm.get("inSvdSeqNo")
    on_hold = vm.get("onHold")
    egs = ExtensionsGoalState(
        id=f"etag_{etag}", source=vm.get("extensionGoalStatesSource") or "UNKNOWN", channel="HostGAPlugin",
        etag=etag, svd_sequence_number=str(seq) if seq not in (None, "") else ZERO_GUID,
        activity_id=_to_id(vm.get("activityId")), correlation_id=_to_id(vm.get("correlationId")),
        created_on_ticks=_to_int(ticks, 0), created_on_timestamp=ticks_to_timestamp(ticks),
        on_hold=bool(_bool_or_none(on_hold)) if on_hold is not None else False,
        host_ga_plugin_version=str(hgap) if hgap is not None else None,
        schema_version=vm.get("vmSettingsSchemaVersion"),
        supports_encoded_signature=hgap is not None and _version_tuple(hgap) >= MIN_HGAP_FOR_SIGNATURE,
        warnings=warnings)
    blob = vm.get("statusUploadBlob")
    if blob is not None:
        blob = _obj(blob, "statusUploadBlob")
        egs.status_upload_blob = str(blob.need("value", "statusUploadBlob")).strip()
        egs.status_upload_blob_type = _blob_type(blob.get("statusBlobType"), warnings)
    for feature in _list(vm.get("requiredFeatures"), "requiredFeatures"):
        name = _obj(feature, "requiredFeatures[]").get("name")
        if name is None:
            raise VmSettingsParseError("A required feature is missing the 'name' property")
        egs.required_features.append(name)
    for fam in _list(vm.get("gaFamilies"), "gaFamilies"):
        fam = _obj(fam, "gaFamilies[]")
        egs.agent_families.append(AgentFamily(
            name=fam.need("name", "gaFamilies[]"), uris=list(_list(fam.get("uris"), "gaFamilies[].uris")),
            version=fam.get("version"), from_version=fam.get("fromVersion"),
            is_version_from_rsm=_bool_or_none(fam.get("isVersionFromRSM")),
            is_vm_enabled_for_rsm_upgrades=_bool_or_none(fam.get("isVMEnabledForRSMUpgrades"))))
    for item in _list(vm.get("extensionGoalStates"), "extensionGoalStates"):
        egs.extensions.append(_vm_extension(_obj(item, "extensionGoalStates[]"), warnings))
    return egs


def _vm_extension(item: _Folded, warnings: list) -> Extension:
    name = item.need("name", "extensionGoalStates[]")
    where = f"extension {name}"
    ext = Extension(name=name, version=str(item.need("version", where)), state=item.need("state", where),
                    encoded_signature=item.get("encodedSignature") or "")
    if ext.state not in REQUESTED_STATES:
        raise VmSettingsParseError(f"Invalid extension state: {ext.state} ({name})")
    if _refuse_unsafe(ext):
        return ext
    try:
        _vm_extension_settings(ext, item, where, warnings)
    except ExtensionsConfigError as e:
        ext.invalid_setting_reason = e.msg
    return ext


def _vm_extension_settings(ext: Extension, item: _Folded, where: str, warnings: list) -> None:
    """Locations, settings and dependencies of one handler; ExtensionsConfigError refuses only this handler,
    VmSettingsParseError the whole document."""
    name = ext.name
    multi = item.get("isMultiConfig")
    if multi is not None and not isinstance(multi, bool):
        raise ExtensionsConfigError(f"Invalid isMultiConfig {multi!r} for the Extension: {name} "
                                    f"(expected true or false)")
    ext.supports_multi_config = bool(multi)
    for key in ("location", "failoverLocation"):
        value = item.get(key)
        if value:
            ext.manifest_uris.append(value)
    ext.manifest_uris.extend(u for u in _list(item.get("additionalLocations"), "additionalLocations") if u)
    settings_list = _list(item.get("settings"), f"'settings' ({where})")
    if not ext.supports_multi_config and len(settings_list) > 1:
        raise VmSettingsParseError(f"Single-config extension includes multiple settings (extension: {name})")
    for s in settings_list:
        s = _obj(s, f"settings ({where})")
        public = s.get("publicSettings")
        if isinstance(public, str):
            public = json.loads(public) if public.strip() else None
        protected = s.get("protectedSettings")
        thumb = s.get("protectedSettingsCertThumbprint")
        if protected is not None and thumb is None:
            raise VmSettingsParseError(f"The certificate thumbprint for protected settings is missing ({where})")
        if ext.supports_multi_config:
            ext_name = s.need("extensionName", where)
            settings = ExtensionSettings(name=ext_name, sequence_number=seq_no_from_json(s.need("seqNo", where),
                                                                                         str(ext_name)),
                                         state=str(s.need("extensionState", where)).lower())
        else:
            settings = ExtensionSettings(name=name, sequence_number=seq_no_from_json(
                item.need("settingsSeqNo", where), name), state=ext.state)
        settings.public_settings, settings.protected_settings, settings.certificate_thumbprint = public, protected, thumb
        ext.settings.append(settings)
    _check_extension_names(ext)
    depends_on = _list(item.get("dependsOn"), f"dependsOn ({where})")
    if ext.supports_multi_config:
        by_name = {s.name: s for s in ext.settings}
        for dep in depends_on:
            dep = _obj(dep, f"dependsOn ({where})")
            dep_name = dep.need("name", f"dependsOn ({where})")
            if dep_name not in by_name:
                raise VmSettingsParseError(f"dependsOn refers to {dep_name}, which is not in the settings ({where})")
            by_name[dep_name].dependency_level = int(dep.get("dependencyLevel") or 0)
            _check_depends_on_list(dep, where, warnings)
    elif depends_on:
        if len(depends_on) != 1:
            raise VmSettingsParseError(f"dependsOn should be an array with exactly one item for single-config "
                                       f"extensions ({where})")
        dep = _obj(depends_on[0], f"dependsOn ({where})")
        _check_depends_on_list(dep, where, warnings)
        if ext.settings:
            ext.settings[0].dependency_level = int(dep.get("dependencyLevel") or 0)
        else:
            warnings.append(f"Single-config extension {name} has a dependsOn but no settings; ignoring it")


def _check_depends_on_list(dep: _Folded, where: str, warnings: list) -> None:
    if dep.get("dependsOnExtension") is None:
        warnings.append(f"dependsOn without dependsOnExtension ({where})")
