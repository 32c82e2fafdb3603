#!/bin/sh
# Fabric sample extension: records each operation and, on enable, writes a success status file.
# cwd is the handler's base dir; ConfigSequenceNumber / ConfigExtensionName come from the agent.
op="$1"
base="${AZURE_GUEST_AGENT_EXTENSION_PATH:-$(pwd)}"
seq="${ConfigSequenceNumber:-0}"
ext="${ConfigExtensionName:-}"
echo "$op seq=$seq ext=$ext" >> "$base/operations.log"
echo "sample extension: $op (seq $seq${ext:+, extension $ext})"
case "$op" in
    enable)
        mkdir -p "$base/status"
        name="${ext:+$ext.}$seq.status"
        now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
        printf '[{"version": 1.0, "timestampUTC": "%s", "status": {"name": "Sample", "operation": "Enable", "status": "success", "code": 0, "formattedMessage": {"lang": "en-US", "message": "Enable succeeded (seq %s)"}}}]\n' \
            "$now" "$seq" > "$base/status/$name.tmp" && mv "$base/status/$name.tmp" "$base/status/$name"
        ;;
esac
exit 0
