#!/usr/bin/env bash
# Delete the Cloud TPU VM pod slice (billing stops; the workers' local disks are lost, a BUCKET is kept).
#   TPU_NAME=esjax-v5e ZONE=us-west4-a tpu/delete.sh
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"
set -x
gcloud compute tpus tpu-vm delete "${TPU_NAME}" --zone="${ZONE}" --project="${PROJECT}" --quiet
