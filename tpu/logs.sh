#!/usr/bin/env bash
# Stream a worker's training log (WORKER=0 by default: process 0 is the one that logs metrics and progress;
# WORKER=all interleaves every host, useful when a process fails).
#   TPU_NAME=esjax-v5e ZONE=us-west4-a tpu/logs.sh
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"
WORKER="${WORKER:-0}"
tpu_ssh "${WORKER}" "tail -n 200 -F ~/$(quoted "${LOG_FILE}")"
