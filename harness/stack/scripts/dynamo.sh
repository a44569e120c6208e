#!/usr/bin/env bash
# NVIDIA Dynamo (ai-dynamo 1.6.1): its frontend with the KV router in front of HARNESS_NUM_WORKERS mocker
# engines, on loopback, CPU only. No etcd, no NATS: file discovery in a per-stack directory, the TCP request
# plane and the ZMQ event plane (so two stacks at once never see each other).
#
# HARNESS_ROUTER_POLICY picks the router mode:
#   kv_events  --router-mode kv                        (the default: the router indexes the mockers' KV events)
#   kv_approx  --router-mode kv --no-router-kv-events  (the router predicts caches from its own decisions)
#   any other  --router-mode <policy>                  (round-robin, random, ... : Dynamo's own modes)
#
# Dynamo runs from its own environment: HARNESS_DYNAMO_PYTHON, else $HARNESS_DYNAMO_VENV/bin/python, else a
# .venv-dynamo next to the checkout or in the current directory (`make dynamo` builds one).
# Knobs: HARNESS_DYNAMO_GPU_BLOCKS (1024 per mocker), HARNESS_DYNAMO_SPEEDUP (10), HARNESS_DYNAMO_LOG (the
# frontend's DYN_LOG filter; the default keeps [ROUTING] records at debug and the rest at info).
#
# Components: worker<i> (a mocker; its DYN_SYSTEM_PORT is worker port i, serving /metrics) and router (the
# frontend on HARNESS_HTTP_PORT). Readiness: the mockers' own /health stays 503 in 1.6.1, so the stack is ready
# when the frontend's /health lists one `generate` instance per mocker and /v1/models lists HARNESS_MODEL.
source "${HARNESS_LIB_SH:-$(dirname "${BASH_SOURCE[0]}")/lib.sh}"
require_env HARNESS_MODEL

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

find_dynamo_python() {
  local c
  for c in "${HARNESS_DYNAMO_PYTHON:-}" "${HARNESS_DYNAMO_VENV:+$HARNESS_DYNAMO_VENV/bin/python}" \
    "$here/../../../.venv-dynamo/bin/python" "$PWD/.venv-dynamo/bin/python"; do
    [ -n "$c" ] && [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}
DYN_PY=$(find_dynamo_python) || die "dynamo: no Dynamo environment (set HARNESS_DYNAMO_PYTHON, or run \`make dynamo\` \
to build .venv-dynamo with ai-dynamo==1.6.1)"
"$DYN_PY" -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("dynamo.mocker") and u.find_spec("dynamo.frontend") else 1)' \
  || die "dynamo: $DYN_PY cannot import dynamo.frontend and dynamo.mocker (pip install ai-dynamo==1.6.1 ai-dynamo-runtime==1.6.1)"

n=${HARNESS_NUM_WORKERS:-1}
[ -n "${HARNESS_WORKER_PORTS:-}" ] || HARNESS_WORKER_PORTS=$(alloc_ports "$n")
[ -n "${HARNESS_HTTP_PORT:-}" ] || HARNESS_HTTP_PORT=$(alloc_ports 1)
read -r -a ports <<<"$HARNESS_WORKER_PORTS"
[ "${#ports[@]}" -ge "$n" ] || die "HARNESS_WORKER_PORTS has ${#ports[@]} ports for $n workers"

state="$HARNESS_LOG_DIR/${HARNESS_LOG_PREFIX}dynamo"
model_dir="$state/model"
mkdir -p "$state/kv" "$state/cache" "$state/home" || die "dynamo: cannot create $state"
"$DYN_PY" "$here/../dynamo.py" "$model_dir" --family "${HARNESS_MM_FAMILY:-qwen3_vl}" \
  --max-model-len "$HARNESS_MAX_MODEL_LEN" >/dev/null || die "dynamo: cannot write the model directory $model_dir"
# The frontend's start-up line names this directory, not HARNESS_MODEL: say it is the model served.
echo "HARNESS_SERVED_MODEL path=$model_dir"

planes=(--discovery-backend file --request-plane tcp --event-plane zmq)
# HOME too: the frontend copies model cards into ~/.cache/dynamo/mdc; a per-stack home keeps stacks apart.
export DYN_FILE_KV="$state/kv" HOME="$state/home" XDG_CACHE_HOME="$state/cache" HF_HUB_OFFLINE=1 \
  DYN_TCP_RPC_HOST=127.0.0.1 DYN_EVENT_PLANE_HOST=127.0.0.1 DYN_SYSTEM_HOST=127.0.0.1 \
  DYN_TCP_RESPONSE_STREAM_HOST=127.0.0.1 DYN_SDK_DISABLE_ANSI_LOGGING=${DYN_SDK_DISABLE_ANSI_LOGGING:-1} \
  DYN_MM_ALLOW_INTERNAL=1  # the gate's images are served on loopback: Dynamo refuses those URLs without it

case "${HARNESS_ROUTER_POLICY:-kv_events}" in
  kv_events | kv) mode=(--router-mode kv) ;;
  kv_approx) mode=(--router-mode kv --no-router-kv-events) ;;
  *) mode=(--router-mode "$HARNESS_ROUTER_POLICY") ;;
esac
# shellcheck disable=SC2206
extra_router=($HARNESS_EXTRA_ROUTER_ARGS)
# shellcheck disable=SC2206
extra_worker=($HARNESS_EXTRA_WORKER_ARGS)

# Phase 1: every component at once (mockers register through the discovery directory whenever they are up).
for ((i = 0; i < n; i++)); do
  spawn "worker$i" env DYN_SYSTEM_PORT="${ports[$i]}" DYN_LOG="${HARNESS_DYNAMO_WORKER_LOG:-info}" \
    "$DYN_PY" -m dynamo.mocker --model-path "$model_dir" --model-name "$HARNESS_MODEL" \
    --block-size "$HARNESS_BLOCK_SIZE" --max-model-len "$HARNESS_MAX_MODEL_LEN" \
    --num-gpu-blocks-override "${HARNESS_DYNAMO_GPU_BLOCKS:-1024}" --speedup-ratio "${HARNESS_DYNAMO_SPEEDUP:-10}" \
    "${planes[@]}" "${extra_worker[@]}"
  WORKER_URLS+=("http://127.0.0.1:${ports[$i]}")
done
# [ROUTING] records are DEBUG lines of the kv_selection target; everything else at info keeps the log small.
spawn router env DYN_LOG="${HARNESS_DYNAMO_LOG:-info,dynamo_llm::kv_router::routing_host::kv_selection=debug}" \
  "$DYN_PY" -m dynamo.frontend --http-host 127.0.0.1 --http-port "$HARNESS_HTTP_PORT" \
  --kv-cache-block-size "$HARNESS_BLOCK_SIZE" "${mode[@]}" "${planes[@]}" "${extra_router[@]}"
phase launch

# Phase 2: one deadline for all; the first component to die fails the phase, naming it.
front="http://127.0.0.1:$HARNESS_HTTP_PORT"
dynamo_ready() {
  local health models
  health=$(curl -fsS -m 2 "$front/health" 2>/dev/null) || return 1
  [ "$(grep -o '"endpoint":"generate"' <<<"$health" | wc -l)" -ge "$n" ] || return 1
  models=$(curl -fsS -m 2 "$front/v1/models" 2>/dev/null) || return 1
  grep -qF "\"id\":\"$HARNESS_MODEL\"" <<<"$models"
}
command -v curl >/dev/null 2>&1 || die "dynamo: curl is needed to probe the frontend"
deadline=$((SECONDS + HARNESS_READY_TIMEOUT))
until dynamo_ready; do
  for i in "${!PIDS[@]}"; do
    if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
      wait "${PIDS[$i]}"
      rc=$?
      tail -n 20 "$(log_file "${NAMES[$i]}")" >&2
      die "${NAMES[$i]} exited with code $rc before it was ready (log: $(log_file "${NAMES[$i]}"))"
    fi
  done
  [ "$SECONDS" -ge "$deadline" ] && die "router not ready at $front after ${HARNESS_READY_TIMEOUT}s \
(waiting for $n generate instance(s) in /health and $HARNESS_MODEL in /v1/models)"
  sleep 0.2
done
phase ready
FRONT_URL=$front
serve
