#!/bin/sh
# Fault-matrix handler: enable leaves a daemon behind (setsid, all descriptors closed) and exits at once.
op="$1"
base="${AZURE_GUEST_AGENT_EXTENSION_PATH:-$(pwd)}"
seq="${ConfigSequenceNumber:-0}"
case "$op" in
    enable)
        setsid sh -c 'exec sleep 600' </dev/null >/dev/null 2>&1 &
        sh -c 'sleep 600 & exit 0' </dev/null >/dev/null 2>&1
        mkdir -p "$base/status"
        printf '[{"version": 1.0, "timestampUTC": "%s", "status": {"name": "Forking", "operation": "Enable", "status": "success", "code": 0, "formattedMessage": {"lang": "en-US", "message": "Enable succeeded"}}}]\n' \
            "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$base/status/$seq.status"
        ;;
esac
exit 0
