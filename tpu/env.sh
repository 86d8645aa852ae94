# shellcheck shell=bash
# Shared settings of the tpu/*.sh scripts; every value can be overridden from the environment.
#   TPU_NAME     name of the Cloud TPU VM (pod slice)
#   ZONE         zone with TPU v5e capacity (e.g. us-west4-a, us-east5-b, europe-west4-b)
#   PROJECT      Google Cloud project (default: gcloud's configured project)
#   ACCELERATOR  accelerator type: v5litepod-16 = 16 chips on 4 hosts of 4 chips
#   VERSION      TPU VM software image for that accelerator (v5e: v2-alpha-tpuv5-lite)
#   CONFIG       run config, relative to the repository root on the workers
#   OUT          run directory; must be storage every worker sees (a gcsfuse mount of BUCKET, or NFS)
#   BUCKET       optional GCS bucket mounted with gcsfuse at MOUNT on every worker by setup.sh
#   REPO_DIR     checkout directory on the workers (relative to the home directory)
#   SPOT         "1" to create a Spot (preemptible) slice
#   EXTRA_ARGS   extra arguments for `esjax train`, separated by spaces (e.g. "--set train.model_parallel=4")
#   PYTHON       interpreter for the workers' virtual environment (python3.11, installed by setup.sh if absent)
set -euo pipefail
TPU_NAME="${TPU_NAME:-esjax-v5e}"
ZONE="${ZONE:-us-west4-a}"
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null || true)}"
ACCELERATOR="${ACCELERATOR:-v5litepod-16}"
VERSION="${VERSION:-v2-alpha-tpuv5-lite}"
CONFIG="${CONFIG:-configs/es_countdown_qwen2.5-1.5b.yaml}"
MOUNT="${MOUNT:-/mnt/esjax-runs}"
BUCKET="${BUCKET:-}"
OUT="${OUT:-${MOUNT}/$(basename "${CONFIG%.*}")}"
REPO_DIR="${REPO_DIR:-esjax}"
SPOT="${SPOT:-0}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
LOG_FILE="${LOG_FILE:-esjax-train.log}"
PYTHON="${PYTHON:-python3.11}"

if [[ -z "${PROJECT}" ]]; then
  echo "set PROJECT (or run: gcloud config set project MY_PROJECT)" >&2
  exit 2
fi

# shellcheck source=tpu/quote.sh
source "$(dirname "${BASH_SOURCE[0]}")/quote.sh"

# gcloud compute tpus tpu-vm ssh on a worker (or all); the command is a string the workers' shell runs: build it
# with `quoted` so that no setting is interpreted by that shell
tpu_ssh() {
  local worker="$1"; shift
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --project="${PROJECT}" --worker="${worker}" \
    --command="$*"
}
