"""``waagent -collect-logs [-full]`` and the periodic collection (spec 05 §15).

The archive is built from upstream's manifest (``ll``/``echo``/``copy`` lines with $LIB_DIR, $LOG_DIR,
$AGENT_LOG), must-collect files first, files over 30 MiB replaced by their tail, 150 MiB in total.
Unlike upstream, text files pass through the agent's redaction (passwords, protected settings, SAS
signatures, private keys) on their way into the archive — a support bundle must not carry secrets.
The periodic run starts this same command through ``systemd-run`` in the log collector's limited
scope and uploads the result through HostGAPlugin ``/vmAgentLog``.
"""

from __future__ import annotations

import glob
import heapq
import os
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from guestagent import events, log
from guestagent.cli import CliArgs
from guestagent.conf import Config
from guestagent.osutil import atomic, cgroupfs, system
from guestagent.periodic import Operation
from guestagent.timestamps import utc_seconds

if TYPE_CHECKING:  # the context imports these modules
    from guestagent.exthandler.cgroups import CGroupConfigurator
    from guestagent.exthandler.context import ThreadContext

FILE_LIMIT = 30 * 1024 * 1024
TOTAL_LIMIT = 150 * 1024 * 1024
MAX_ERRORS = 8
REDACT_LIMIT = 32 * 1024 * 1024
BINARY_EXTENSIONS = (".gz", ".zip", ".xz")
GRACEFUL_KILL, INVALID_CGROUPS, UNEXPECTED_CGROUP_PATH = 3, 2, 4

_COMMON_LOGS = ["$AGENT_LOG*", "/var/log/dmesg*", "/var/log/syslog*", "/var/log/auth*"]
_EXTENSION_FILES = ["$LIB_DIR/ovf-env.xml", "$LIB_DIR/waagent_status.json", "$LIB_DIR/*/status/*.status",
                    "$LIB_DIR/*/config/*.settings", "$LIB_DIR/*/config/HandlerState",
                    "$LIB_DIR/*/config/HandlerStatus", "$LIB_DIR/error.json", "$LIB_DIR/history/*.zip"]
#: (command, argument) pairs — the facts of upstream's MANIFEST_NORMAL / MANIFEST_FULL.
MANIFEST_NORMAL: list[tuple[str, str]] = [
    ("echo", "### Probing Directories ###"), ("ll", "/var/log"), ("ll", "$LIB_DIR"),
    ("echo", "### Gathering Configuration Files ###"),
    *[("copy", p) for p in ("/etc/*-release", "/etc/HOSTNAME", "/etc/hostname", "/etc/waagent.conf")],
    ("echo", ""), ("echo", "### Gathering Log Files ###"),
    *[("copy", p) for p in [*_COMMON_LOGS, "$LOG_DIR/*/*", "$LOG_DIR/*/*/*", "$LOG_DIR/custom-script/handler.log"]],
    ("echo", ""), ("echo", "### Gathering Extension Files ###"),
    *[("copy", p) for p in _EXTENSION_FILES], ("echo", ""),
]
MANIFEST_FULL: list[tuple[str, str]] = [
    ("echo", "### Probing Directories ###"), ("ll", "/var/log"), ("ll", "$LIB_DIR"), ("ll", "/etc/udev/rules.d"),
    ("echo", "### Gathering Configuration Files ###"),
    *[("copy", p) for p in (
        "$LIB_DIR/provisioned", "/etc/fstab", "/etc/ssh/sshd_config", "/boot/grub*/grub.c*", "/boot/grub*/menu.lst",
        "/etc/*-release", "/etc/HOSTNAME", "/etc/hostname", "/etc/network/interfaces",
        "/etc/network/interfaces.d/*.cfg", "/etc/netplan/50-cloud-init.yaml", "/etc/nsswitch.conf",
        "/etc/resolv.conf", "/run/systemd/resolve/stub-resolv.conf", "/run/resolvconf/resolv.conf",
        "/etc/sysconfig/iptables", "/etc/sysconfig/network", "/etc/sysconfig/network/ifcfg-eth*",
        "/etc/sysconfig/network/routes", "/etc/sysconfig/network-scripts/ifcfg-eth*",
        "/etc/sysconfig/network-scripts/route-eth*", "/etc/sysconfig/SuSEfirewall2", "/etc/ufw/ufw.conf",
        "/etc/waagent.conf", "/var/lib/dhcp/dhclient.eth0.leases", "/var/lib/dhclient/dhclient-eth0.leases",
        "/var/lib/wicked/lease-eth0-dhcp-ipv4.xml", "/run/systemd/netif/leases/2")],
    ("echo", ""), ("echo", "### Gathering Log Files ###"),
    *[("copy", p) for p in (
        "$AGENT_LOG*", "/var/log/syslog*", "/var/log/rsyslog*", "/var/log/messages*", "/var/log/kern*",
        "/var/log/dmesg*", "/var/log/dpkg*", "/var/log/yum*", "/var/log/cloud-init*", "/var/log/boot*",
        "/var/log/auth*", "/var/log/secure*", "$LOG_DIR/*/*", "$LOG_DIR/*/*/*", "$LOG_DIR/custom-script/handler.log",
        "$LOG_DIR/run-command/handler.log")],
    ("echo", ""), ("echo", "### Gathering Extension Files ###"),
    *[("copy", p) for p in (
        "$LIB_DIR/ovf-env.xml", "$LIB_DIR/*/status/*.status", "$LIB_DIR/*/config/*.settings",
        "$LIB_DIR/*/config/HandlerState", "$LIB_DIR/*/config/HandlerStatus", "$LIB_DIR/SharedConfig.xml",
        "$LIB_DIR/ManagedIdentity-*.json", "$LIB_DIR/*/error.json", "$LIB_DIR/waagent_status.json",
        "$LIB_DIR/history/*.zip")],
    ("echo", ""), ("echo", "### Gathering Disk Info ###"), ("diskinfo", ""),
    ("echo", "### Gathering Guest ProxyAgent Log Files ###"), ("copy", "/var/log/azure-proxy-agent/*"), ("echo", ""),
]


class Results:
    """results.txt: ``YYYY-MM-DDTHH:MM:SSZ LEVEL message`` lines, reset at each run."""

    def __init__(self, path: str):
        self.path = path
        with open(path, "wb"):
            pass

    def write(self, level: str, message: str) -> None:
        stamp = utc_seconds()
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"{stamp} {level} {message}\n")

    def info(self, message: str) -> None:
        self.write("INFO", message)

    def warning(self, message: str) -> None:
        self.write("WARNING", message)

    def error(self, message: str) -> None:
        self.write("ERROR", message)


class LogCollector:
    def __init__(self, config: Config, full: bool = False):
        self.full = full
        self.lib_dir = config.lib_dir
        self.log_dir = config.extension_log_dir
        self.agent_log = log.LOG_FILE
        self.out_dir = os.path.join(self.lib_dir, "logcollector")
        self.truncated_dir = os.path.join(self.out_dir, "truncated")
        self.archive = os.path.join(self.out_dir, "logs.zip")
        self.results_path = os.path.join(self.out_dir, "results.txt")

    # Paths: the manifest speaks of the machine's paths; system.path maps them under the test root.
    def _real(self, p: str) -> str:
        return str(system.path(p))

    def _virtual(self, real: str) -> str:
        root = str(system.get_root()).rstrip("/")
        return real[len(root):] if root and real.startswith(root + "/") else real

    def _expand(self, value: str) -> str:
        return value.replace("$LIB_DIR", self.lib_dir).replace("$LOG_DIR", self.log_dir) \
            .replace("$AGENT_LOG", self.agent_log)

    def must_collect(self) -> list[str]:
        patterns = [self.agent_log, f"{self.lib_dir}/waagent_status.json", f"{self.lib_dir}/history/*.zip",
                    f"{self.log_dir}/*/*", f"{self.log_dir}/*/*/*", f"{self.agent_log}.*"]
        out: list[str] = []
        for p in patterns:
            out += sorted(self._virtual(m) for m in glob.glob(self._real(p)))
        return out

    def process_manifest(self, results: Results) -> set[str]:
        results.info(f"Using {self.lib_dir} as $LIB_DIR")
        results.info(f"Using {self.log_dir} as $LOG_DIR")
        results.info(f"Using {self.agent_log} as $AGENT_LOG")
        files: set[str] = set()
        for command, value in (MANIFEST_FULL if self.full else MANIFEST_NORMAL):
            value = self._expand(value)
            if command == "ll":
                res = system.run(["ls", "-alF", self._real(value)], check=False, timeout=60, log=False)
                if res.returncode != 0:
                    results.error(f"Command: [ls -alF {value}], return code: [{res.returncode}], stdout: "
                                  f"[{res.stdout}] stderr: [{res.stderr}]")
                else:
                    results.info(f"Output of command [ls -alF {value}]:\n{res.stdout}")
            elif command == "echo":
                results.info(value)
            elif command == "copy":
                for match in glob.glob(self._real(value)):
                    if os.path.isfile(match):
                        results.info(self._virtual(match))
                        files.add(self._virtual(match))
        return files

    def _truncate(self, path: str, results: Results) -> Optional[str]:
        if os.path.splitext(path)[1] in BINARY_EXTENSIONS:
            results.warning(f"Discarding large binary file {path}")
            return None
        target = os.path.join(self.truncated_dir, path.replace(os.sep, "_"))
        real_target, real_src = self._real(target), self._real(path)
        if os.path.exists(real_target) and os.path.getmtime(real_src) < os.path.getmtime(real_target):
            return target
        with open(real_src, "rb") as src, open(real_target, "wb") as dst:
            src.seek(max(0, os.path.getsize(real_src) - FILE_LIMIT))
            while chunk := src.read(1024 * 1024):
                dst.write(chunk)
        return target

    def select(self, files: set[str], results: Results) -> tuple[list[str], int]:
        """Priority order (must-collect first), truncating big files, until the 150 MiB budget is used."""
        results.info("### Preparing list of files to add to archive ###")
        must = self.must_collect()
        queue = [(must.index(f) if f in must else 999_999_999, f) for f in files]
        heapq.heapify(queue)
        total = 0
        chosen: list[str] = []
        while queue:
            _, path = heapq.heappop(queue)
            try:
                real_size = os.path.getsize(self._real(path))
            except FileNotFoundError:
                results.warning(f"File {path} does not exist, skipping collection for this file")
                continue
            size = min(real_size, FILE_LIMIT)
            if total + size > TOTAL_LIMIT:
                results.warning("Archive too big, done with adding files.")
                break
            if real_size <= FILE_LIMIT:
                chosen.append(path)
                results.info(f"Adding file {path}, size {size} b")
            else:
                truncated = self._truncate(path, results)
                if truncated is None:
                    continue
                chosen.append(truncated)
                results.info(f"Adding truncated file {truncated}, size {size} b")
            total += size
        msg = f"Uncompressed archive size is {total} b"
        results.info(msg)
        events.add_event(events.WALAEventOperation.LogCollection, message=msg, lib_dir=self.lib_dir)
        return chosen, total

    def archive_name(self, path: str) -> str:
        if path.startswith(self.truncated_dir + "/"):
            return "truncated_" + path[len(self.truncated_dir):].lstrip("/").replace("/", "_")
        return path.lstrip("/")

    def _content(self, path: str) -> bytes:
        data = system.read_bytes(path)
        if path.endswith(BINARY_EXTENSIONS) or len(data) > REDACT_LIMIT or b"\0" in data[:8192]:
            return data
        text = data.decode("utf-8", errors="surrogateescape")
        return log.redact(text).encode("utf-8", errors="surrogateescape")

    def collect(self) -> tuple[str, int]:
        for d in (self.out_dir, self.truncated_dir):
            system.mkdir(d, mode=0o700)
        results = Results(self._real(self.results_path))
        start = time.time()
        results.info(f"Starting log collection at {utc_seconds(start)}")
        results.info(f"Using log collection mode {'full' if self.full else 'normal'}")
        chosen: list[str] = []
        try:
            chosen, total = self.select(self.process_manifest(results), results)
            results.info("### Creating compressed archive ###")
            errors = 0
            import zipfile  # here: the ext-handler imports this module but collects in its own process

            with atomic.Replacing(self._real(self.archive), 0o600) as f, \
                    zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for path in chosen:
                    try:
                        zf.writestr(self.archive_name(path), self._content(path))
                    except FileNotFoundError:
                        results.warning(f"File {path} does not exist, skipping collection for this file")
                    except Exception as e:
                        errors += 1
                        if errors >= MAX_ERRORS:
                            raise RuntimeError(f"Too many errors, giving up. Last error: {e}") from None
                        results.warning(f"Failed to add file {path} to the archive: {e}")
                elapsed = int((time.time() - start) * 1000)
                results.info(f"Finishing log collection at {utc_seconds()}")
                results.info(f"Elapsed time: {elapsed} ms")
                zf.write(results.path, arcname="results.txt")
            return self.archive, total
        except Exception as e:
            results.error(f"Failed to collect logs: {e}")
            raise
        finally:
            keep = {os.path.basename(p) for p in chosen if p.startswith(self.truncated_dir)}
            for name in os.listdir(self._real(self.truncated_dir)):
                if name not in keep:
                    system.remove(os.path.join(self.truncated_dir, name))


def _in_logcollector_scope() -> bool:
    text = system.read_text("/proc/self/cgroup", default="") or ""
    return "azure-walinuxagent-logcollector.slice/collect-logs.scope" in text


ANON_LIMIT, CACHE_LIMIT, MAX_THROTTLED_EVENTS_V2 = 25 * 1024 * 1024, 155 * 1024 * 1024, 10
MONITOR_PERIOD = 2.0


def own_cgroup(hierarchy: Any, proc_self_cgroup: str) -> Optional[tuple[str, str]]:
    """(cpu cgroup dir, memory cgroup dir) of this process when both controllers are usable, else None
    (upstream: "At least one required controller is missing" → exit 2)."""
    if not hierarchy.supported:
        return None
    if hierarchy.version == cgroupfs.V2:
        rel = cgroupfs.process_cgroup_path(proc_self_cgroup, cgroupfs.V2)
        if rel is None or not {"cpu", "memory"} <= set(hierarchy.v2_root_controllers):
            return None
        path = os.path.join(hierarchy.v2_root, rel.lstrip("/"))
        return path, path
    mounts = hierarchy.v1_mounts or {}
    cpu_rel = cgroupfs.process_cgroup_path(proc_self_cgroup, cgroupfs.V1, "cpu")
    mem_rel = cgroupfs.process_cgroup_path(proc_self_cgroup, cgroupfs.V1, "memory")
    if not ("cpu" in mounts and "memory" in mounts and cpu_rel and mem_rel):
        return None
    return os.path.join(mounts["cpu"], cpu_rel.lstrip("/")), os.path.join(mounts["memory"], mem_rel.lstrip("/"))


def memory_over_limit(usage: Any) -> Optional[str]:
    """Upstream's limits for the collector: anon + swap 25 MiB, cache 155 MiB, 10 MemoryHigh events (v2)."""
    anon = usage.anon + (usage.swap or 0)
    if anon > ANON_LIMIT:
        return f"Log collector anon + swap memory limit {ANON_LIMIT} bytes exceeded. The reported usage is {anon} bytes."
    if usage.cache > CACHE_LIMIT:
        return f"Log collector cache memory limit {CACHE_LIMIT} bytes exceeded. The reported usage is {usage.cache} bytes."
    if (usage.throttled_events or 0) > MAX_THROTTLED_EVENTS_V2:
        return (f"Log collector memory throttled events limit {MAX_THROTTLED_EVENTS_V2} exceeded. The reported "
                f"number of throttled events is {usage.throttled_events}.")
    return None


def _start_memory_monitor(memory_path: str, version: str) -> None:
    """Every 2 s: over a limit → event and exit 3 at once (the parent then stops periodic collection)."""
    controller = cgroupfs.MemoryController(memory_path, version)

    def watch() -> None:
        while True:
            try:
                reason = memory_over_limit(controller.usage())
            except Exception as e:  # a monitor problem never stops the collection
                log.periodic(3600, log.WARNING, "Log collector monitor: {0}", e)
                reason = None
            if reason:
                print(reason, file=sys.stderr)
                events.add_event(events.WALAEventOperation.LogCollection, message=reason, is_success=False)
                sys.stderr.flush()
                os._exit(GRACEFUL_KILL)
            time.sleep(MONITOR_PERIOD)

    threading.Thread(target=watch, name="LogCollectorMonitorHandler", daemon=True).start()


def _check_scope() -> int:
    """The periodic run's own checks (05 §15.3): in the collector's slice (3 tries, 5 s apart) → 4;
    cpu and memory controllers usable → else 2; then the memory monitor. 0 when all is well."""
    for attempt in range(3):
        if _in_logcollector_scope():
            break
        if attempt < 2:
            time.sleep(5)
    else:
        print("The log collector is not running in its expected cgroup", file=sys.stderr)
        return UNEXPECTED_CGROUP_PATH
    hierarchy = cgroupfs.detect_host()
    paths = own_cgroup(hierarchy, system.read_text("/proc/self/cgroup", default="") or "")
    if paths is None:
        print("At least one required controller is missing. The following controllers are required for the log "
              f"collector to run: ['cpu', 'memory'] ({hierarchy.reason or hierarchy.version})", file=sys.stderr)
        return INVALID_CGROUPS
    _start_memory_monitor(paths[1], hierarchy.version)
    return 0


def run_collect_logs(args: CliArgs, config: Config) -> int:
    """``waagent -collect-logs [-full]``; exit 1 on failure. Under systemd-run (the periodic run) the
    process first checks it really is in the log collector's scope (else exit 4)."""
    if os.environ.get("GUESTAGENT_LOGCOLLECTOR_SCOPE") == "1":
        code = _check_scope()
        if code:
            return code
    collector = LogCollector(config, full=args.full)
    try:
        archive, _total = collector.collect()
    except Exception as e:
        print(f"Log collection failed: {e}", file=sys.stderr)
        return 1
    print(f"Log collection successfully completed. Archive can be found at {archive} and detailed log output "
          f"can be found at {collector.results_path}")
    return 0


class PeriodicLogCollection:
    """CollectLogsHandler: run the collector in its scope, then PUT the archive to HGAP /vmAgentLog."""

    def __init__(self, ctx: ThreadContext, configurator: CGroupConfigurator):
        self.ctx = ctx
        self.configurator = configurator
        self.stopped_reason: Optional[str] = None
        self.unexpected_path_failures = 0
        self.uploads = 0

    def command(self) -> list[str]:
        argv = [sys.executable, "-u", sys.argv[0] if sys.argv and sys.argv[0] else "waagent", "-collect-logs"]
        return self.configurator.logcollector_command(argv)

    def run(self) -> None:
        if self.stopped_reason:
            return
        if self.collect():
            self.send()

    def _event(self, ok: bool, msg: str) -> None:
        events.add_event(events.WALAEventOperation.LogCollection, is_success=ok, message=msg, log_event=False,
                         lib_dir=self.ctx.lib_dir)

    def collect(self) -> bool:
        """The collector in its scope; exit 2/3 (or 4 three times) stop periodic collection until restart."""
        log.info("Starting log collection...")
        env = dict(os.environ, GUESTAGENT_LOGCOLLECTOR_SCOPE="1")
        start = time.monotonic()
        res = system.run(self.command(), check=False, timeout=3600, env=env)
        elapsed = int((time.monotonic() - start) * 1000)
        if res.returncode == 0:
            self.unexpected_path_failures = 0
            size = os.path.getsize(system.path(os.path.join(self.ctx.lib_dir, "logcollector", "logs.zip")))
            msg = f"Successfully collected logs. Archive size: {size} b, elapsed time: {elapsed} ms."
            log.info("{0}", msg)
            self._event(True, msg)
            return True
        if res.returncode == UNEXPECTED_CGROUP_PATH:
            self.unexpected_path_failures += 1
            if self.unexpected_path_failures < 3:
                log.info("Log collector cgroup is not in the expected path, will attempt log collection in next "
                         "iteration.")
            else:
                self.stopped_reason = "cgroup not in expected path in multiple runs"
        elif res.returncode == INVALID_CGROUPS:
            self.stopped_reason = "process error"
        elif res.returncode == GRACEFUL_KILL:
            self.stopped_reason = "exceeded process memory limit"
        error = f"Log Collector exited with code {res.returncode}"
        if self.stopped_reason:
            log.info("Disabling periodic log collection until service restart due to {0}.", self.stopped_reason)
        else:
            log.info("{0}", error)
        detail = res.stderr.strip()[-500:]
        self._event(False, f"Failed to collect logs. Elapsed time: {elapsed} ms. Error: {error}"
                           + (f" {detail}" if detail else ""))
        return False

    def send(self) -> None:
        archive = os.path.join(self.ctx.lib_dir, "logcollector", "logs.zip")
        try:
            self.ctx.protocol.upload_logs(system.read_bytes(archive))
        except Exception as e:
            msg = f"Failed to upload logs. Error: {e}"
            log.warn("{0}", msg)
            self._event(False, msg)
            return
        self.uploads += 1
        log.info("Successfully uploaded logs.")
        self._event(True, "Successfully uploaded logs.")


def is_periodic_collection_allowed(config: Config, configurator: Any) -> bool:
    """Logs.Collect and a way to limit the collector: cgroups enabled, or (even with the agent's cgroups
    off) a v2 hierarchy with Debug.EnableCgroupV2ResourceLimiting — upstream's ``enabled or (v2 and switch)``."""
    return config.logs_collect and bool(configurator.enabled or _v2_limiting(config, configurator))


def _v2_limiting(config: Config, configurator: Any) -> bool:
    """v2 in use and Debug.EnableCgroupV2ResourceLimiting on (upstream's getter defaults to on)."""
    return bool(configurator.using_v2 and config.debug_enable_cgroup_v2_resource_limiting)


def operations(ctx: ThreadContext) -> list[Operation]:
    configurator = ctx.cgroups
    configurator.initialize()
    allowed = is_periodic_collection_allowed(ctx.config, configurator)
    v2_limiting = _v2_limiting(ctx.config, configurator)
    msg = (f"Checking if log collection is allowed at this time [{allowed}]. All three conditions must be met: "
           f"1. configuration enabled [{ctx.config.logs_collect}], 2. cgroups v1 enabled "
           f"[{configurator.enabled}] OR cgroups v2 is in use and v2 resource limiting configuration enabled "
           f"[{v2_limiting}], 3. python supported: [True]")
    log.info("{0}", msg)
    events.add_event(events.WALAEventOperation.LogCollection, is_success=allowed, message=msg, log_event=False,
                     lib_dir=ctx.lib_dir)
    if not allowed:
        return []
    job = PeriodicLogCollection(ctx, configurator)
    return [Operation("CollectLogs", job.run, ctx.config.logs_collect_period,
                      initial_delay=ctx.config.debug_log_collector_initial_delay)]
