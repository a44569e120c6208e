#!/usr/bin/env bash
# N workers behind a router (HARNESS_ROUTER: the harness proxy, vllm-router or sglang-router).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
start_workers
start_router
serve
