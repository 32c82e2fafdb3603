"""WireServer endpoint discovery (spec 01 §1): protocol/endpoint files, DHCP helper, detection loop.

The detection loop takes a ``probe(endpoint) -> protocol`` callable (the facade's versions + transport
cert + goal state), so this module knows nothing about HTTP. Sleep and attempt count are injectable.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, TypeVar

from guestagent import log
from guestagent.errors import AgentError, ProtocolNotFoundError
from guestagent.osutil import system

KNOWN_WIRESERVER_IP = "168.63.129.16"
ENDPOINT_FILE = "WireServerEndpoint"
PROTOCOL_FILE = "Protocol"
PROTOCOL_NAME = "WireProtocol"
DETECT_ATTEMPTS = 360
DETECT_INTERVAL = 10.0

T = TypeVar("T")


def _conf(conf: Any, key: str, default: Any) -> Any:
    if conf is None:
        return default
    try:
        value = conf.get(key, default)
    except Exception:
        return default
    return default if value is None else value


def read_endpoint(lib_dir: str) -> str:
    """The endpoint file's IP; missing/empty → error logged and the well-known address."""
    text = system.read_text(os.path.join(lib_dir, ENDPOINT_FILE), default="") or ""
    if text.strip():
        return text.strip()
    log.error("[ProtocolError] Endpoint file {0} is missing or empty; using {1}",
              os.path.join(lib_dir, ENDPOINT_FILE), KNOWN_WIRESERVER_IP)
    return KNOWN_WIRESERVER_IP


def protocol_file_present(lib_dir: str) -> bool:
    text = system.read_text(os.path.join(lib_dir, PROTOCOL_FILE), default="") or ""
    return text.strip() == PROTOCOL_NAME


def write_files(lib_dir: str, endpoint: str) -> None:
    system.write_file(os.path.join(lib_dir, ENDPOINT_FILE), endpoint)
    system.write_file(os.path.join(lib_dir, PROTOCOL_FILE), PROTOCOL_NAME)


def clear_files(lib_dir: str) -> None:
    for name in (ENDPOINT_FILE, PROTOCOL_FILE):
        system.remove(os.path.join(lib_dir, name))


def detect(conf: Any, lib_dir: str, probe: Callable[[str], T], *, endpoint_ip: Optional[str] = None,
           sleep: Optional[Callable[[float], None]] = None, attempts: Optional[int] = None,
           dhcp: Any = None) -> T:
    """Up to 360 attempts 10 s apart (01 §1.3). ``endpoint_ip`` skips DHCP (tests, Protocol.EndpointDiscovery
    other than dhcp uses the endpoint file / well-known IP instead)."""
    import time

    sleep = sleep or time.sleep
    attempts = DETECT_ATTEMPTS if attempts is None else attempts
    clear_files(lib_dir)
    use_dhcp = str(_conf(conf, "Protocol.EndpointDiscovery", "dhcp")).lower() == "dhcp" and endpoint_ip is None
    if use_dhcp and dhcp is None:
        from guestagent.protocol.dhcp import DhcpHelper

        dhcp = DhcpHelper(conf)
    endpoint: Optional[str] = None
    last: Optional[BaseException] = None
    for attempt in range(1, attempts + 1):
        try:
            if endpoint is None:
                if endpoint_ip is not None:
                    endpoint = endpoint_ip
                elif use_dhcp:
                    endpoint = dhcp.discover()
                else:
                    endpoint = read_endpoint(lib_dir)
            if not endpoint:
                raise ProtocolNotFoundError("No WireServer endpoint")
            protocol = probe(endpoint)
            write_files(lib_dir, endpoint)
            log.info("Protocol endpoint is {0}; WireProtocol detected", endpoint)
            return protocol
        except (AgentError, OSError) as e:
            last = e
            log.info("Protocol detection attempt {0} failed: {1}", attempt, e)
            endpoint = None
            if dhcp is not None:
                dhcp.skip_cache = True
        if attempt < attempts:
            sleep(DETECT_INTERVAL)
    raise ProtocolNotFoundError("No protocol found.", last)
