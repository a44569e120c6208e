#!/usr/bin/env bash
# Aggregated serving, no router: one worker is the front door.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
export HARNESS_ROUTER=none
start_workers
start_router
serve
