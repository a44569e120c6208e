#!/usr/bin/env bash
# Shared helpers for launch scripts. Source it; do not run it.
#
# Contract (harness/contract.py names every variable and line; README "Launch scripts"): scripts read only
# environment variables and print one line
#   HARNESS_READY url=<front door>
# once the stack serves, then stay in the foreground until a component dies (exit non-zero, naming it) or
# they are signalled. Phase timings are printed as `HARNESS_PHASE name=<phase> seconds=<s>`.
#
# Inputs: HARNESS_MODEL HARNESS_BACKEND(sim|vllm) HARNESS_NUM_WORKERS HARNESS_HTTP_PORT HARNESS_WORKER_PORTS
#   HARNESS_KV_CACHE_BYTES HARNESS_LOG_DIR HARNESS_ROUTER(proxy|vllm-router|sglang-router|none)
#   HARNESS_ROUTER_POLICY SINGLE_GPU CUDA_VISIBLE_DEVICES HARNESS_EXTRA_WORKER_ARGS
# Optional: HARNESS_PYTHON HARNESS_MAX_MODEL_LEN HARNESS_BLOCK_SIZE HARNESS_LOG_PREFIX HARNESS_READY_TIMEOUT HARNESS_SERIAL_BOOT
#   HARNESS_ROUTER_METRICS_PORT HARNESS_ADAPTER_DIR HARNESS_ENABLE_LORA HARNESS_ASSET_DIR HARNESS_MM_FAMILY
#   HARNESS_EXTRA_ROUTER_ARGS HARNESS_SIM_SPEEDUP HARNESS_MEDIA_HOSTS
#   HARNESS_KV_EVENTS=1 (workers publish KV events over ZMQ, the proxy consumes them; HARNESS_KV_EVENTS_PORTS
#   names the publisher ports, else they are allocated)

set -uo pipefail

HARNESS_PYTHON=${HARNESS_PYTHON:-python3}
HARNESS_BACKEND=${HARNESS_BACKEND:-sim}
HARNESS_LOG_DIR=${HARNESS_LOG_DIR:-$(mktemp -d)}
HARNESS_LOG_PREFIX=${HARNESS_LOG_PREFIX:-}
HARNESS_READY_TIMEOUT=${HARNESS_READY_TIMEOUT:-120}
HARNESS_MAX_MODEL_LEN=${HARNESS_MAX_MODEL_LEN:-8192}
HARNESS_BLOCK_SIZE=${HARNESS_BLOCK_SIZE:-16}
HARNESS_ROUTER=${HARNESS_ROUTER:-none}
HARNESS_ROUTER_POLICY=${HARNESS_ROUTER_POLICY:-}
HARNESS_EXTRA_WORKER_ARGS=${HARNESS_EXTRA_WORKER_ARGS:-}
HARNESS_EXTRA_ROUTER_ARGS=${HARNESS_EXTRA_ROUTER_ARGS:-}
# Where http(s) image URLs may point (--allowed-media-hosts of the sim worker and the proxy): the harness's image
# server as host:port when the runner names it; without it, the explicit opt-in to every loopback port.
HARNESS_MEDIA_HOSTS=${HARNESS_MEDIA_HOSTS:-loopback}
mkdir -p "$HARNESS_LOG_DIR"

PIDS=()        # every component we started, in start order
NAMES=()       # their names, same order
WORKER_URLS=()
KV_EVENT_PORTS=()  # per worker, when HARNESS_KV_EVENTS=1
_T0=$(date +%s.%N)
_PHASE_T=$_T0

harness_log() { echo "[launch] $*" >&2; }

die() {
  echo "HARNESS_FAILED $*"
  harness_log "FAILED: $*"
  exit 1
}

require_env() {
  local v
  for v in "$@"; do
    [ -n "${!v:-}" ] || die "environment variable $v is required"
  done
}

log_file() { echo "$HARNESS_LOG_DIR/${HARNESS_LOG_PREFIX}$1.log"; }

# phase NAME: print the seconds since the previous phase ended.
phase() {
  local now
  now=$(date +%s.%N)
  echo "HARNESS_PHASE name=$1 seconds=$(awk -v a="$_PHASE_T" -v b="$now" 'BEGIN{printf "%.3f", b-a}')"
  _PHASE_T=$now
}

cleanup() {
  local pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  # Components' own children (vLLM's engine processes, ...) share our process group when we lead it.
  if [ "$(ps -o pgid= -p $$ 2>/dev/null | tr -d ' ')" = "$$" ]; then
    trap '' TERM
    kill -TERM -- -$$ 2>/dev/null
  fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# spawn NAME CMD...: run a component in the background, output to its log file.
spawn() {
  local name=$1
  shift
  "$@" >"$(log_file "$name")" 2>&1 &
  PIDS+=($!)
  NAMES+=("$name")
  harness_log "started $name (pid $!): $*"
}

http_ok() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -m 2 -o /dev/null "$1" 2>/dev/null
  else
    "$HARNESS_PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" \
      >/dev/null 2>&1
  fi
}

# gpu_for INDEX: the device a worker gets (all share the first one under SINGLE_GPU=1).
gpu_for() {
  local devices
  IFS=',' read -r -a devices <<<"${CUDA_VISIBLE_DEVICES:-0}"
  if [ "${SINGLE_GPU:-0}" = 1 ]; then echo "${devices[0]}"; else echo "${devices[$(($1 % ${#devices[@]}))]}"; fi
}

# vllm_scale_out_flag VERSION: what `vllm serve` needs to expose /v1/chat/completions/render (the offsets the gate
# compares against). Opt-in since vLLM PR #54579 (env VLLM_ENABLE_SCALE_OUT_ENDPOINTS=1, always exported below),
# a flag since v0.30 (PR #55176, `--enable-scale-out`, vllm/entrypoints/openai/cli_args.py); older releases
# serve render unconditionally and reject the unknown flag, so it is passed from 0.30 on only.
vllm_scale_out_flag() {
  local major minor
  IFS=. read -r major minor _ <<<"${1#v}"
  major=${major%%[!0-9]*} minor=${minor%%[!0-9]*}
  if [ "${major:-0}" -gt 0 ] || [ "${minor:-0}" -ge 30 ]; then echo --enable-scale-out; fi
}

# start_worker INDEX PORT: phase-1 launch of one worker for the configured backend.
start_worker() {
  local i=$1 port=$2 gpu
  gpu=$(gpu_for "$i")
  local lora=()
  if [ "${HARNESS_ENABLE_LORA:-0}" = 1 ]; then lora=(--enable-lora --max-loras 4 --max-lora-rank 64); fi
  # shellcheck disable=SC2206
  local extra=($HARNESS_EXTRA_WORKER_ARGS)
  # vLLM's KV-cache event publisher (``KVEventsConfig``, vllm/config/kv_events.py); the simulated engine reads the
  # same JSON and publishes the same ZMQ messages.
  if [ "${HARNESS_KV_EVENTS:-0}" = 1 ]; then
    extra+=(--kv-events-config "{\"enable_kv_cache_events\": true, \"publisher\": \"zmq\", \"endpoint\": \"tcp://127.0.0.1:${KV_EVENT_PORTS[$i]}\"}")
  fi
  case "$HARNESS_BACKEND" in
    sim)
      # Real-time step costs (speedup 1) so concurrent requests overlap as they would on a GPU.
      local sim=(--sim-gpu-index "$gpu" --speedup "${HARNESS_SIM_SPEEDUP:-1}" --enable-prompt-tokens-details)
      [ -n "${HARNESS_ASSET_DIR:-}" ] && sim+=(--asset-dir "$HARNESS_ASSET_DIR")
      [ -n "${HARNESS_MM_FAMILY:-}" ] && sim+=(--mm-family "$HARNESS_MM_FAMILY")
      # shellcheck disable=SC2206
      sim+=(--allowed-media-hosts $HARNESS_MEDIA_HOSTS)
      spawn "worker$i" env PYTHONHASHSEED=0 "$HARNESS_PYTHON" -m harness.sim.worker --model "$HARNESS_MODEL" \
        --host 127.0.0.1 --port "$port" --worker-name "worker$i" --kv-cache-memory-bytes "$HARNESS_KV_CACHE_BYTES" \
        --max-model-len "$HARNESS_MAX_MODEL_LEN" --block-size "$HARNESS_BLOCK_SIZE" "${sim[@]}" "${lora[@]}" \
        "${extra[@]}"
      ;;
    vllm)
      # HARNESS_VLLM_VERSION pins the version when `vllm --version` cannot be asked (wrappers, containers).
      HARNESS_VLLM_VERSION=${HARNESS_VLLM_VERSION:-$(vllm --version 2>/dev/null | tail -n 1)}
      [ -n "$HARNESS_VLLM_VERSION" ] || harness_log "vllm --version said nothing: render endpoints stay off unless" \
        "HARNESS_VLLM_VERSION (>= 0.30 adds --enable-scale-out) or HARNESS_EXTRA_WORKER_ARGS says otherwise"
      # shellcheck disable=SC2207
      local scale_out=($(vllm_scale_out_flag "$HARNESS_VLLM_VERSION"))
      spawn "worker$i" env PYTHONHASHSEED=0 CUDA_VISIBLE_DEVICES="$gpu" VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 \
        VLLM_SERVER_DEV_MODE=1 VLLM_ENABLE_SCALE_OUT_ENDPOINTS=1 vllm serve "$HARNESS_MODEL" --host 127.0.0.1 --port "$port" \
        --served-model-name "$HARNESS_MODEL" --kv-cache-memory-bytes "$HARNESS_KV_CACHE_BYTES" \
        --max-model-len "$HARNESS_MAX_MODEL_LEN" --block-size "$HARNESS_BLOCK_SIZE" --enable-prefix-caching \
        --enable-prompt-tokens-details \
        --enforce-eager --limit-mm-per-prompt '{"image":4}' "${scale_out[@]}" "${lora[@]}" "${extra[@]}"
      ;;
    *) die "unknown HARNESS_BACKEND=$HARNESS_BACKEND (sim|vllm)" ;;
  esac
  WORKER_URLS+=("http://127.0.0.1:$port")
}

# wait_ready URL PID NAME: wait for URL to answer 200; fail fast if PID exits; give up at the deadline.
wait_ready() {
  wait_all_ready "$1" "$2" "$3"
}

# wait_all_ready URL PID NAME [URL PID NAME ...]: phase 2. Polls every component each round, so the first one
# to die fails the phase at once (naming it and its exit code), whichever it is; one deadline for all.
wait_all_ready() {
  local deadline=$((SECONDS + HARNESS_READY_TIMEOUT))
  local -a pending=("$@")
  while [ "${#pending[@]}" -gt 0 ]; do
    local still=() i
    for ((i = 0; i < ${#pending[@]}; i += 3)); do
      local url=${pending[$i]} pid=${pending[$((i + 1))]} name=${pending[$((i + 2))]}
      if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid"
        local rc=$?
        tail -n 20 "$(log_file "$name")" >&2
        die "$name exited with code $rc before it was ready (log: $(log_file "$name"))"
      fi
      http_ok "$url" || still+=("$url" "$pid" "$name")
    done
    pending=("${still[@]}")
    [ "${#pending[@]}" -eq 0 ] && break
    [ "$SECONDS" -ge "$deadline" ] && die "${pending[2]} not ready at ${pending[0]} after ${HARNESS_READY_TIMEOUT}s"
    sleep 0.1
  done
}

# alloc_ports N: N free loopback ports, reserved race-free (harness.stack.ports) when the harness is importable.
alloc_ports() {
  "$HARNESS_PYTHON" -c 'import sys; from harness.stack.ports import allocate_ports; print(*allocate_ports(int(sys.argv[1])))' "$1" \
    || die "cannot allocate $1 ports (is the harness installed for $HARNESS_PYTHON?)"
}

# start_workers: phase 1 launches every worker, phase 2 waits for all (or, with HARNESS_SERIAL_BOOT=1,
# boots them one after another, for comparison).
start_workers() {
  require_env HARNESS_MODEL HARNESS_KV_CACHE_BYTES
  local ports i n
  if [ -z "${HARNESS_WORKER_PORTS:-}" ]; then  # standalone use: pick our own
    HARNESS_WORKER_PORTS=$(alloc_ports "${HARNESS_NUM_WORKERS:-1}")
  fi
  read -r -a ports <<<"$HARNESS_WORKER_PORTS"
  n=${HARNESS_NUM_WORKERS:-${#ports[@]}}
  [ "${#ports[@]}" -ge "$n" ] || die "HARNESS_WORKER_PORTS has ${#ports[@]} ports for $n workers"
  if [ "${HARNESS_KV_EVENTS:-0}" = 1 ]; then
    [ -n "${HARNESS_KV_EVENTS_PORTS:-}" ] || HARNESS_KV_EVENTS_PORTS=$(alloc_ports "$n")
    read -r -a KV_EVENT_PORTS <<<"$HARNESS_KV_EVENTS_PORTS"
    [ "${#KV_EVENT_PORTS[@]}" -ge "$n" ] || die "HARNESS_KV_EVENTS_PORTS has ${#KV_EVENT_PORTS[@]} ports for $n workers"
  fi
  if [ "${HARNESS_SERIAL_BOOT:-0}" = 1 ]; then
    for ((i = 0; i < n; i++)); do
      start_worker "$i" "${ports[$i]}"
      wait_ready "${WORKER_URLS[$i]}/health" "${PIDS[-1]}" "worker$i"
    done
    phase boot_workers_serial
    return
  fi
  for ((i = 0; i < n; i++)); do start_worker "$i" "${ports[$i]}"; done
  phase launch_workers
  local waits=()
  for ((i = 0; i < n; i++)); do waits+=("${WORKER_URLS[$i]}/health" "${PIDS[$i]}" "worker$i"); done
  wait_all_ready "${waits[@]}"
  phase wait_workers
}

# start_router: the front door on HARNESS_HTTP_PORT, or worker 0 itself when HARNESS_ROUTER=none.
start_router() {
  [ -n "${HARNESS_HTTP_PORT:-}" ] || HARNESS_HTTP_PORT=$(alloc_ports 1)
  local port=$HARNESS_HTTP_PORT url="http://127.0.0.1:$HARNESS_HTTP_PORT"
  local metrics=${HARNESS_ROUTER_METRICS_PORT:-}
  case "$HARNESS_ROUTER" in vllm-router | sglang-router) [ -n "$metrics" ] || metrics=$(alloc_ports 1) ;; esac
  # shellcheck disable=SC2206
  local extra=($HARNESS_EXTRA_ROUTER_ARGS)
  case "$HARNESS_ROUTER" in
    none)
      FRONT_URL=${WORKER_URLS[0]}
      return
      ;;
    proxy)
      local opts=()
      [ -n "${HARNESS_ADAPTER_DIR:-}" ] && opts+=(--adapter-dir "$HARNESS_ADAPTER_DIR")
      [ -n "${HARNESS_ASSET_DIR:-}" ] && opts+=(--asset-dir "$HARNESS_ASSET_DIR")
      [ -n "${HARNESS_MM_FAMILY:-}" ] && opts+=(--mm-family "$HARNESS_MM_FAMILY")
      # shellcheck disable=SC2206
      opts+=(--allowed-media-hosts $HARNESS_MEDIA_HOSTS)
      [ "$HARNESS_BACKEND" = vllm ] && [ -n "${HARNESS_ASSET_DIR:-}" ] && opts+=(--inline-assets)
      if [ "${HARNESS_KV_EVENTS:-0}" = 1 ]; then
        local j events=()
        for j in "${!WORKER_URLS[@]}"; do events+=("${WORKER_URLS[$j]}=tcp://127.0.0.1:${KV_EVENT_PORTS[$j]}"); done
        opts+=(--kv-events "${events[@]}")
      fi
      spawn router "$HARNESS_PYTHON" -m harness.proxy --model "$HARNESS_MODEL" --port "$port" \
        --policy "${HARNESS_ROUTER_POLICY:-kv_mm}" --block-size "$HARNESS_BLOCK_SIZE" --workers "${WORKER_URLS[@]}" \
        "${opts[@]}" "${extra[@]}"
      ;;
    vllm-router)
      local bin=${HARNESS_VLLM_ROUTER:-$(dirname "$HARNESS_PYTHON")/vllm-router}
      [ -x "$bin" ] || bin=vllm-router
      spawn router "$bin" --host 127.0.0.1 --port "$port" --worker-urls "${WORKER_URLS[@]}" \
        --policy "${HARNESS_ROUTER_POLICY:-cache_aware}" --prometheus-host 127.0.0.1 --prometheus-port "$metrics" \
        --worker-startup-check-interval 1 --log-level info "${extra[@]}"
      ;;
    sglang-router)
      spawn router "$HARNESS_PYTHON" -m sglang_router.launch_router --host 127.0.0.1 --port "$port" \
        --worker-urls "${WORKER_URLS[@]}" --policy "${HARNESS_ROUTER_POLICY:-cache_aware}" \
        --prometheus-host 127.0.0.1 --prometheus-port "$metrics" "${extra[@]}"
      ;;
    *) die "unknown HARNESS_ROUTER=$HARNESS_ROUTER" ;;
  esac
  local probe="$url/health"
  [ "$HARNESS_ROUTER" = sglang-router ] && probe="$url/readiness"
  wait_ready "$probe" "${PIDS[-1]}" router
  FRONT_URL=$url
  phase router
}

# serve: announce readiness, then stay up until a component exits (naming it) or we are signalled.
serve() {
  echo "HARNESS_READY url=$FRONT_URL"
  local pid
  wait -n "${PIDS[@]}"
  local rc=$?
  for i in "${!PIDS[@]}"; do
    pid=${PIDS[$i]}
    if ! kill -0 "$pid" 2>/dev/null; then die "${NAMES[$i]} exited with code $rc while serving"; fi
  done
  die "a component exited with code $rc while serving"
}
