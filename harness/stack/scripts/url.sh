#!/usr/bin/env bash
# An already-running stack (`harness run --url`): starts nothing; follows the launch contract for it.
#
# HARNESS_URL          the stack's front door (required)
# HARNESS_URL_WORKERS  its workers' own URLs, space-separated (optional: /metrics, the render endpoint)
# HARNESS_URL_ROUTER_LOG  the router's log file (optional): mirrored as this stack's router log, so the gate
#                      reads its [ROUTING] records and its start-up line
#
# Ready when the front door answers GET /v1/models. Components: `attached` (exits when the front door stops
# answering three probes in a row: the stack went away under the gate) and `router` (the log mirror).
source "${HARNESS_LIB_SH:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"
require_env HARNESS_URL
front=${HARNESS_URL%/}
command -v curl >/dev/null 2>&1 || die "url: curl is needed to probe $front"

deadline=$((SECONDS + HARNESS_READY_TIMEOUT))
until curl -fsS -m 2 -o /dev/null "$front/v1/models" 2>/dev/null; do
  [ "$SECONDS" -ge "$deadline" ] && die "router not reachable at $front/v1/models after ${HARNESS_READY_TIMEOUT}s"
  sleep 0.2
done
phase reach

if [ -n "${HARNESS_URL_ROUTER_LOG:-}" ]; then
  [ -r "$HARNESS_URL_ROUTER_LOG" ] || die "router log $HARNESS_URL_ROUTER_LOG is not a readable file"
  spawn router tail -n +1 -F "$HARNESS_URL_ROUTER_LOG"
fi
# shellcheck disable=SC2016
spawn attached bash -c 'fails=0
while [ "$fails" -lt 3 ]; do
  if curl -fsS -m 2 -o /dev/null "$1"; then fails=0; else fails=$((fails + 1)); fi
  sleep 1
done
echo "front door $1 stopped answering"; exit 1' _ "$front/v1/models"

read -r -a workers <<<"${HARNESS_URL_WORKERS:-}"
if [ "${#workers[@]}" -gt 0 ]; then
  joined=$(IFS=,; echo "${workers[*]}")
  echo "HARNESS_WORKERS urls=$joined"
fi
FRONT_URL=$front
serve
