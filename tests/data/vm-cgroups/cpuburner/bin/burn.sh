#!/bin/sh
# VM-tier test extension (tests/vm/test_vm_cgroups.py): on enable it records the cgroup it runs in and
# burns CPU for a fixed wall time, reading its cgroup's cpu.stat before and after, so the host can
# compare the CPU it got with the quota of its slice. Everything goes to /var/tmp/vmtier-cpuburner.json.
op="$1"
base="${AZURE_GUEST_AGENT_EXTENSION_PATH:-$(pwd)}"
seq="${ConfigSequenceNumber:-0}"
echo "$op seq=$seq" >> "$base/operations.log"
case "$op" in
    enable)
        python3 - "${BURN_SECONDS:-12}" <<'PY'
import json, os, sys, time
seconds = float(sys.argv[1])
cgroup = open("/proc/self/cgroup").read().strip()
rel = cgroup.split("::", 1)[1] if "::" in cgroup else ""
scope_dir = "/sys/fs/cgroup" + rel
slice_dir = os.path.dirname(scope_dir)
def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        return "ERROR " + str(e)
def usage(d):
    for line in read(os.path.join(d, "cpu.stat")).splitlines():
        k, _, v = line.partition(" ")
        if k == "usage_usec":
            return int(v)
    return -1
t0, u0, s0 = time.monotonic(), usage(slice_dir), usage(scope_dir)
p0 = time.process_time()
while time.monotonic() - t0 < seconds:
    pass
wall, p1 = time.monotonic() - t0, time.process_time()
u1, s1 = usage(slice_dir), usage(scope_dir)
report = {"pid": os.getpid(), "cgroup": cgroup, "wall_s": wall, "process_cpu_s": p1 - p0,
          "slice_usage_usec": u1 - u0, "scope_usage_usec": s1 - s0,
          "slice_cpu_max": read(os.path.join(slice_dir, "cpu.max")),
          "slice_memory_max": read(os.path.join(slice_dir, "memory.max")),
          "slice_cpu_stat": read(os.path.join(slice_dir, "cpu.stat"))}
with open("/var/tmp/vmtier-cpuburner.json.tmp", "w") as f:
    json.dump(report, f)
os.replace("/var/tmp/vmtier-cpuburner.json.tmp", "/var/tmp/vmtier-cpuburner.json")
PY
        mkdir -p "$base/status"
        now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
        printf '[{"version": 1.0, "timestampUTC": "%s", "status": {"name": "CpuBurner", "operation": "Enable", "status": "success", "code": 0, "formattedMessage": {"lang": "en-US", "message": "burned (seq %s)"}}}]\n' \
            "$now" "$seq" > "$base/status/$seq.status.tmp" && mv "$base/status/$seq.status.tmp" "$base/status/$seq.status"
        ;;
esac
exit 0
