#!/usr/bin/env bash
# Create a Cloud TPU VM pod slice (default: v5litepod-16, 4 hosts x 4 v5e chips).
#   TPU_NAME=esjax-v5e ZONE=us-west4-a PROJECT=my-project tpu/create.sh
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"
flags=()
if [[ "${SPOT}" == "1" ]]; then
  flags+=(--spot)
fi
set -x
gcloud compute tpus tpu-vm create "${TPU_NAME}" \
  --zone="${ZONE}" --project="${PROJECT}" \
  --accelerator-type="${ACCELERATOR}" \
  --version="${VERSION}" \
  "${flags[@]+"${flags[@]}"}"
gcloud compute tpus tpu-vm describe "${TPU_NAME}" --zone="${ZONE}" --project="${PROJECT}" \
  --format="value(state,acceleratorType,networkEndpoints[].ipAddress)"
