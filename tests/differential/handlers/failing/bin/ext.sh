#!/bin/sh
# Differential tier's failing extension: install succeeds; enable writes an error status (its code a
# string, as CustomScript writes codes), prints on stdout and stderr and exits 1.
op="$1"
seq="${ConfigSequenceNumber:-0}"
echo "failing extension: $op (seq $seq)"
case "$op" in
    enable)
        mkdir -p status
        now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
        printf '[{"version": 1.0, "timestampUTC": "%s", "status": {"name": "Failing", "operation": "Enable", "status": "error", "code": "12", "formattedMessage": {"lang": "en-US", "message": "Enable failed on purpose"}}}]\n' \
            "$now" > "status/$seq.status"
        echo "enable failed on purpose" >&2
        exit 1
        ;;
esac
exit 0
