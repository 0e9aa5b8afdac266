#!/bin/sh
# Enroll once (when the state directory holds no enrollment), then run the agent.
#   FEDADAMW_COORDINATOR      HOST:PORT of the coordinator's agent port
#   FEDADAMW_TOKEN_FILE       a file holding this agent's single-use enrollment token
#   FEDADAMW_CA_CERT          the coordinator's CA certificate
#   FEDADAMW_ENROLL_ADDRESS   HOST:PORT of enrollment (optional; default: the agent port + 1)
#   FEDADAMW_STATE_DIR        the agent's state directory (optional; default: /state)
# Any arguments go to `fedadamw-edge run`.
set -eu
STATE="${FEDADAMW_STATE_DIR:-/state}"
if [ ! -f "$STATE/agent.json" ]; then
    until [ -s "$FEDADAMW_TOKEN_FILE" ] && [ -s "$FEDADAMW_CA_CERT" ]; do
        echo "waiting for the enrollment token and the CA certificate" >&2
        sleep 2
    done
    fedadamw-edge enroll --coordinator "$FEDADAMW_COORDINATOR" \
        ${FEDADAMW_ENROLL_ADDRESS:+--enroll-address "$FEDADAMW_ENROLL_ADDRESS"} \
        --token "$(cat "$FEDADAMW_TOKEN_FILE")" --ca-cert "$FEDADAMW_CA_CERT" \
        --state-dir "$STATE" --label "$(hostname)"
fi
exec fedadamw-edge run --state-dir "$STATE" --log-format json "$@"
