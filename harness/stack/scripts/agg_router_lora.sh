#!/usr/bin/env bash
# agg_router with runtime LoRA: workers accept adapters, the router loads them on demand.
export HARNESS_ENABLE_LORA=1
exec "$(dirname "${BASH_SOURCE[0]}")/agg_router.sh"
