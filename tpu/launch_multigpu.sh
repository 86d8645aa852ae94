#!/usr/bin/env bash
# Multi-GPU hosts without SLURM: one esjax process per host over ssh, each told the coordinator (the first host),
# the number of processes and its own id through the variables esjax.distributed reads. Every GPU of every
# host joins one mesh.
#   HOSTS="gpu-a gpu-b" CONFIG=configs/es_countdown_qwen2.5-1.5b.yaml OUT=/shared/runs/cd tpu/launch_multigpu.sh
# OUT must be on a file system every host sees (NFS, Lustre, a gcsfuse/s3 mount).
set -euo pipefail
# shellcheck source=tpu/quote.sh
source "$(dirname "$0")/quote.sh"
HOSTS="${HOSTS:?set HOSTS to the space-separated host names, the first is the coordinator}"
CONFIG="${CONFIG:?set CONFIG}"
OUT="${OUT:?set OUT to a shared run directory}"
REPO_DIR="${REPO_DIR:-esjax}"
PORT="${PORT:-8476}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
LOG_FILE="${LOG_FILE:-esjax-train.log}"
read -r -a hosts <<< "${HOSTS}"
coordinator="${hosts[0]}:${PORT}"
for i in "${!hosts[@]}"; do
  # shellcheck disable=SC2029  # expanded here on purpose: every value is quoted for the remote shell
  ssh "${hosts[$i]}" "cd ~/$(quoted "${REPO_DIR}") && ESJAX_COORDINATOR=$(quoted "${coordinator}") \
    ESJAX_NUM_PROCESSES=${#hosts[@]} ESJAX_PROCESS_ID=${i} \
    nohup .venv/bin/esjax $(quoted train "${CONFIG}" --out "${OUT}" --no-progress) $(extra_args) \
    > ~/$(quoted "${LOG_FILE}") 2>&1 < /dev/null & echo \$! > ~/esjax-train.pid"
  echo "process ${i} on ${hosts[$i]} (coordinator ${coordinator})"
done
