#!/bin/sh
# Chat with an mlctl endpoint using curl. The key is read from its 0600 file, so it
# never lands in your shell history.
#   MLCTL_ENDPOINT=http://127.0.0.1:8001/v1 MLCTL_MODEL=... MLCTL_API_KEY_FILE=... sh examples/curl.sh
set -eu
: "${MLCTL_ENDPOINT:?set MLCTL_ENDPOINT (printed by mlctl deploy)}"
: "${MLCTL_MODEL:?set MLCTL_MODEL}"
auth="X-No-Auth: 1"
if [ -n "${MLCTL_API_KEY_FILE:-}" ]; then
    auth="Authorization: Bearer $(cat "$MLCTL_API_KEY_FILE")"
fi
curl -sS --fail-with-body "$MLCTL_ENDPOINT/chat/completions" \
    -H "$auth" \
    -H "Content-Type: application/json" \
    -d "{\"model\": \"$MLCTL_MODEL\", \"max_tokens\": 16,
         \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}"
echo
