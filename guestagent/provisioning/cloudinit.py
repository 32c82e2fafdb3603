"""Is cloud-init provisioning this VM? (spec 05 §3.1) And waiting for what it produces (§3.4).

The question is asked at every start (Provisioning.Agent=auto); the waits only when cloud-init
provisions, so what they need (the ovf-env.xml model, SSH key files) loads with them."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Callable, Optional, TypeVar

from guestagent import log
from guestagent.errors import CommandError, ProtocolError, ProvisionError
from guestagent.osutil import system

if TYPE_CHECKING:
    from guestagent.provisioning.ovfenv import OvfEnv

WAIT_SECONDS = 1800
T = TypeVar("T")


def _systemd_enabled() -> bool:
    try:
        result = system.run(["systemctl", "is-enabled", "cloud-init-local.service"], timeout=60, check=False)
    except CommandError as e:
        log.info("Unable to get cloud-init enabled status from systemctl: {0}", e)
        return False
    return result.returncode == 0 and (result.stdout + result.stderr).replace("\n", "") == "enabled"


def _service_enabled() -> bool:
    try:
        result = system.run(["service", "cloud-init", "status"], timeout=60, check=False)
    except CommandError as e:
        log.info("Unable to get cloud-init enabled status from service: {0}", e)
        return False
    return result.returncode == 0


def cloud_init_is_enabled() -> bool:
    enabled = _systemd_enabled() or _service_enabled()
    log.info("cloud-init is enabled: {0}", enabled)
    return enabled


def _log_interval(retry: int, interval: int) -> tuple[bool, int]:
    """Upstream's throttle: log at retry 0, then every 10, 20, 40 … 320 retries."""
    if retry % interval == 0:
        return True, min(interval * 2, 320)
    return False, interval


def _poll_for(path: str, read: Callable[[str], Optional[T]], waiting: str, not_enabled: str, max_retry: int,
              sleep_time: float, sleep: Callable[[float], None]) -> Optional[T]:
    """Upstream's wait on a file cloud-init produces: once a ``sleep_time``, throttled log lines.

    ``read`` returns the result, or None to keep waiting; the caller raises when this returns None."""
    interval = 10
    for retry in range(max_retry):
        if system.path(path).is_file():
            result = read(path)
            if result is not None:
                return result
        if retry < max_retry - 1:
            should_log, interval = _log_interval(retry, interval)
            if should_log:
                log.info(waiting, path, max_retry - retry, sleep_time)
                if not cloud_init_is_enabled():
                    log.warn(not_enabled)
            sleep(sleep_time)
    return None


def wait_for_ovf_env(lib_dir: str, max_retry: int = WAIT_SECONDS, sleep_time: float = 1.0,
                     sleep: Callable[[float], None] = time.sleep) -> OvfEnv:
    """Poll for the ovf-env.xml cloud-init copies into ``lib_dir``; parse it (errors → ProvisionError)."""
    from guestagent.provisioning.ovfenv import parse_ovf_env

    path = os.path.join(lib_dir, "ovf-env.xml")

    def read(p: str) -> OvfEnv:
        try:
            return parse_ovf_env(system.read_text(p, errors="replace") or "")
        except ProtocolError as e:
            raise ProvisionError(f"OVF xml could not be parsed [{p}]: {e}")

    env = _poll_for(path, read, "Waiting for cloud-init to copy ovf-env.xml to {0} [{1} retries remaining, "
                    "sleeping {2}s between retries]", "cloud-init does not appear to be enabled",
                    max_retry, sleep_time, sleep)
    if env is None:
        raise ProvisionError(f"Giving up, ovf-env.xml was not copied to {path} after {max_retry * sleep_time}s")
    return env


def wait_for_host_key(ssh_dir: str, key_type: str, max_retry: int = WAIT_SECONDS, sleep_time: float = 1.0,
                      sleep: Callable[[float], None] = time.sleep) -> str:
    """Poll for ``ssh_host_<type>_key.pub`` (cloud-init generates it) and return its thumbprint."""
    from guestagent.osutil import ssh

    key_type = "rsa" if key_type == "auto" else key_type
    path = os.path.join(ssh_dir, f"ssh_host_{key_type}_key.pub")

    def read(p: str) -> Optional[str]:
        log.info("ssh host key found at: {0}", p)
        try:
            thumbprint = ssh.host_key_thumbprint(ssh_dir, key_type)
        except ProvisionError:
            log.warn("Could not get thumbprint from {0}", p)
            return None
        log.info("Thumbprint obtained from : {0}", p)
        return thumbprint

    thumbprint = _poll_for(path, read, "Waiting for ssh host key be generated at {0} [{1} attempts remaining, "
                           "sleeping {2}s between retries]", "cloud-init does not appear to be running",
                           max_retry, sleep_time, sleep)
    if thumbprint is None:
        raise ProvisionError(f"Giving up, ssh host key was not found at {path} after {max_retry * sleep_time}s")
    return thumbprint
