#!/bin/sh
# Fault-matrix handler: install takes 10 s and records its start and end (with its pid) so the tier can
# show that two installs never overlap after the ext-handler is killed mid-install (issue 13 W3).
op="$1"
base="${AZURE_GUEST_AGENT_EXTENSION_PATH:-$(pwd)}"
seq="${ConfigSequenceNumber:-0}"
record=/var/log/azure/Fabric.Faults.Slow/installs.log
case "$op" in
    install)
        mkdir -p "$(dirname "$record")"
        echo "start $(date +%s.%N) $$" >> "$record"
        sleep 10
        echo "end $(date +%s.%N) $$" >> "$record"
        ;;
    enable)
        mkdir -p "$base/status"
        printf '[{"version": 1.0, "timestampUTC": "%s", "status": {"name": "Slow", "operation": "Enable", "status": "success", "code": 0, "formattedMessage": {"lang": "en-US", "message": "Enable succeeded"}}}]\n' \
            "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$base/status/$seq.status"
        ;;
esac
exit 0
