#!/usr/bin/env bash
# Start `esjax train CONFIG` on every worker at once: one process per host; jax.distributed finds the other
# hosts by itself on Cloud TPU, and all chips form one mesh. Logs go to ~/LOG_FILE on each worker.
#   TPU_NAME=esjax-v5e ZONE=us-west4-a CONFIG=configs/es_countdown_qwen2.5-1.5b.yaml OUT=/mnt/esjax-runs/cd tpu/launch.sh
#   RESUME=1 tpu/launch.sh         # continue OUT from its last checkpoint
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"
args=(train "${CONFIG}" --out "${OUT}" --no-progress)
if [[ "${RESUME:-0}" == "1" ]]; then
  args+=(--resume)
fi
set -x
tpu_ssh all "cd ~/$(quoted "${REPO_DIR}") && \
  nohup .venv/bin/esjax $(quoted "${args[@]}") $(extra_args) \
    > ~/$(quoted "${LOG_FILE}") 2>&1 < /dev/null & echo \$! > ~/esjax-train.pid
  echo started \$(hostname) pid \$(cat ~/esjax-train.pid)"
