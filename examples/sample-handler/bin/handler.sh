#!/bin/sh
# A minimal, well-behaved extension handler in POSIX shell, showing the handler contract of the Azure
# Linux guest agent: one script for every command (install, enable, disable, update, uninstall).
#
#   * the agent runs it from the package root (cwd) with ConfigSequenceNumber and
#     AZURE_GUEST_AGENT_EXTENSION_* in the environment;
#   * settings arrive in config/<seq>.settings; protected settings stay encrypted there and are decrypted
#     here with the tenant certificate <lib>/<THUMBPRINT>.crt/.prv (never printed);
#   * enable reports through status/<seq>.status and heartbeat.log, and is idempotent: the agent may run it
#     again for a sequence number it already handled (mrseq remembers the last one).
#
# Try it with:  guestagent ext-test examples/sample-handler
set -u
op="${1:?usage: handler.sh install|enable|disable|update|uninstall}"
seq="${ConfigSequenceNumber:-0}"
base="${AZURE_GUEST_AGENT_EXTENSION_PATH:-$(pwd)}"
lib="$(dirname "$base")"
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

write_status() {  # status code message
    printf '[{"version": 1.0, "timestampUTC": "%s", "status": {"name": "SampleHandler", "operation": "%s", "status": "%s", "code": %s, "formattedMessage": {"lang": "en-US", "message": "%s"}, "substatus": [{"name": "StdOut", "status": "success", "code": 0, "formattedMessage": {"lang": "en-US", "message": "sample handler, sequence number %s"}}]}}]\n' \
        "$(now)" "$op" "$1" "$2" "$3" "$seq" > "status/$seq.status.tmp" && mv "status/$seq.status.tmp" "status/$seq.status"
}

heartbeat() {
    printf '[{"version": 1.0, "heartbeat": {"status": "ready", "code": 0, "formattedMessage": {"lang": "en-US", "message": "sample handler is alive"}}}]\n' > heartbeat.log
}

json_string() {  # key file -> first string value of "key"
    sed -n "s/.*\"$1\": *\"\\([^\"]*\\)\".*/\\1/p" "$2" | head -n 1
}

case "$op" in
install|uninstall|disable)
    echo "sample handler: $op (seq $seq)"
    ;;
update)
    echo "sample handler: update from ${AZURE_GUEST_AGENT_UPDATING_FROM_VERSION:-?} to ${VERSION:-?}"
    ;;
enable)
    if [ "$(cat mrseq 2>/dev/null)" = "$seq" ] && [ -f "status/$seq.status" ]; then
        echo "sample handler: sequence number $seq already handled"
        heartbeat
        exit 0
    fi
    mkdir -p status
    write_status transitioning 0 "enabling"
    settings="config/$seq.settings"
    secret_note="no protected settings"
    thumb="$(json_string protectedSettingsCertThumbprint "$settings" 2>/dev/null)"
    if [ -n "$thumb" ]; then
        secret_note="protected settings could not be decrypted"
        if command -v openssl >/dev/null 2>&1 && command -v base64 >/dev/null 2>&1; then
            bytes="$(json_string protectedSettings "$settings" | base64 -d 2>/dev/null \
                | openssl smime -decrypt -inform DER -recip "$lib/$thumb.crt" -inkey "$lib/$thumb.prv" 2>/dev/null \
                | wc -c)"
            [ "${bytes:-0}" -gt 0 ] && secret_note="protected settings decrypted ($bytes bytes)"
        fi
    fi
    echo "sample handler: enable (seq $seq): $secret_note"
    write_status success 0 "Enable succeeded: $secret_note"
    echo "$seq" > mrseq
    heartbeat
    ;;
*)
    echo "unknown command $op" >&2
    exit 2
    ;;
esac
exit 0
