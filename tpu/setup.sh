#!/usr/bin/env bash
# Copy this checkout to every worker and install esjax with JAX for TPU (--worker=all), optionally mounting a
# GCS bucket (BUCKET) at MOUNT with gcsfuse so that every worker sees the same run directory, and downloading
# a Hugging Face model (HF_MODEL, e.g. Qwen/Qwen2.5-1.5B-Instruct) into every worker's Hugging Face cache.
#   TPU_NAME=esjax-v5e ZONE=us-west4-a BUCKET=my-esjax-runs HF_MODEL=Qwen/Qwen2.5-1.5B-Instruct tpu/setup.sh
# shellcheck source=tpu/env.sh
source "$(dirname "$0")/env.sh"
root="$(cd "$(dirname "$0")/.." && pwd)"
archive="$(mktemp -t esjax-src-XXXXXX.tar.gz)"
trap 'rm -f "${archive}"' EXIT
# the working tree without build outputs, virtual environments and runs
tar -C "${root}" --exclude=.git --exclude=.venv --exclude=runs --exclude='__pycache__' --exclude='*.egg-info' \
  -czf "${archive}" .
set -x
gcloud compute tpus tpu-vm scp "${archive}" "${TPU_NAME}:esjax-src.tar.gz" \
  --zone="${ZONE}" --project="${PROJECT}" --worker=all
# shellcheck disable=SC2088  # the workers' shell expands ~ (their home directory)
repo="~/$(quoted "${REPO_DIR}")"
python="$(quoted "${PYTHON}")"
tpu_ssh all "set -e
  mkdir -p ${repo} && tar -C ${repo} -xzf ~/esjax-src.tar.gz && rm ~/esjax-src.tar.gz
  cd ${repo}
  if ! command -v ${python} >/dev/null; then  # TPU VM images ship Ubuntu 22.04 with Python 3.10; esjax needs 3.11+
    sudo apt-get update -qq && sudo apt-get install -y -qq ${python} $(quoted "${PYTHON}-venv")
  fi
  ${python} -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e '.[tpu]'
  .venv/bin/python -c 'import jax; print(jax.local_device_count(), jax.local_devices()[0].device_kind)'"
if [[ -n "${BUCKET}" ]]; then
  tpu_ssh all "set -e
    if ! command -v gcsfuse >/dev/null; then
      export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s)
      echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" \
        | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
      curl -s https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
      sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
    fi
    sudo mkdir -p $(quoted "${MOUNT}") && sudo chown \$(id -u):\$(id -g) $(quoted "${MOUNT}")
    mountpoint -q $(quoted "${MOUNT}") || gcsfuse --implicit-dirs $(quoted "${BUCKET}" "${MOUNT}")"
fi
if [[ -n "${HF_MODEL:-}" ]]; then
  # configs name models by Hub ID (e.g. Qwen/Qwen2.5-7B-Instruct): fetch it into each worker's Hugging Face cache
  # now (only config, generation config, safetensors and tokenizer files), so the run starts without downloading
  download='import sys; from esjax.models.hub import download; print(download(sys.argv[1]))'
  tpu_ssh all "cd ~ && ${repo}/.venv/bin/python -c $(quoted "${download}" "${HF_MODEL}")"
fi
