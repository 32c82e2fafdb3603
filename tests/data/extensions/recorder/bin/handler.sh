#!/bin/sh
# Test handler: records every call with its environment in $EXT_TEST_CALLS; its behaviour per command is
# steered by files $EXT_TEST_CTRL/<version>.<op> or $EXT_TEST_CTRL/<op> containing
# "fail <rc>", "hang", "garbage", "nostatus", "textcode" or "error".
op="$1"
ver="$AZURE_GUEST_AGENT_EXTENSION_VERSION"
calls="${EXT_TEST_CALLS:-./calls.log}"
echo "$op $ver seq=$ConfigSequenceNumber ext=${ConfigExtensionName:-} uninstall=${AZURE_GUEST_AGENT_UNINSTALL_CMD_EXIT_CODE:-} disable=${AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODE:-} disables=${AZURE_GUEST_AGENT_DISABLE_CMD_EXIT_CODES_MULTIPLE_EXTENSIONS:-} VERSION=${VERSION:-} from=${AZURE_GUEST_AGENT_UPDATING_FROM_VERSION:-} path=$AZURE_GUEST_AGENT_EXTENSION_PATH cwd=$(pwd) wire=$AZURE_GUEST_AGENT_WIRE_PROTOCOL_ADDRESS features=$AZURE_GUEST_AGENT_EXTENSION_SUPPORTED_FEATURES" >> "$calls"
ctrl="${EXT_TEST_CTRL:-/nonexistent}"
behaviour=""
for f in "$ctrl/$ver.$op" "$ctrl/$op"; do
    if [ -f "$f" ]; then behaviour="$(cat "$f")"; break; fi
done
case "$behaviour" in
    hang) sleep 600 ;;
    fail*) echo "failing $op on purpose"; echo "stderr of $op" >&2; exit "${behaviour#fail }" ;;
esac
echo "$op done"
if [ "$op" = enable ]; then
    prefix=""
    [ -n "$ConfigExtensionName" ] && prefix="$ConfigExtensionName."
    status="status/${prefix}${ConfigSequenceNumber}.status"
    case "$behaviour" in
        garbage) echo "this is not json {" > "$status" ;;
        nostatus) ;;
        textcode) printf '[{"version": 1.0, "timestampUTC": "2025-01-01T00:00:00Z", "status": {"name": "x", "operation": "Enable", "status": "success", "code": "E42", "formattedMessage": {"lang": "en-US", "message": "text code"}, "substatus": [{"name": "S", "status": "success", "code": "7", "formattedMessage": {"lang": "en-US", "message": "s"}}]}}]' > "$status" ;;
        error) printf '[{"version": 1.0, "timestampUTC": "2025-01-01T00:00:00Z", "status": {"name": "x", "operation": "Enable", "status": "error", "code": 7, "formattedMessage": {"lang": "en-US", "message": "enable reported an error"}}}]' > "$status" ;;
        *) printf '[{"version": 1.0, "timestampUTC": "2025-01-01T00:00:00Z", "status": {"name": "x", "operation": "Enable", "status": "success", "code": "0", "formattedMessage": {"lang": "en-US", "message": "enabled seq %s"}, "substatus": [{"name": "StdOut", "status": "success", "code": 0, "formattedMessage": {"lang": "en-US", "message": "hello"}}]}}]' "$ConfigSequenceNumber" > "$status" ;;
    esac
    printf '[{"version": 1.0, "heartbeat": {"status": "ready", "code": 0, "formattedMessage": {"lang": "en-US", "message": "alive"}}}]' > heartbeat.log
fi
exit 0
