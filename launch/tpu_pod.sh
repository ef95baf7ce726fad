#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: create (or reuse) the TPU VM, install this package on every worker, and run the
# same `llada train` command on all workers (JAX finds its peers itself on a pod: one process per host).
#
#   TPU_NAME=llada-v5p ZONE=us-east5-a ACCELERATOR=v5p-128 \
#     launch/tpu_pod.sh --config=configs/llada_8b.py --workdir=gs://BUCKET/runs/8b --config.mesh.fsdp=-1
#
# Environment: TPU_NAME, ZONE, ACCELERATOR (e.g. v5e-256, v5p-128, v6e-64; created if the VM does not exist),
# RUNTIME (TPU VM image, default v2-alpha-tpuv5 / v2-alpha-tpuv6e by generation), PROJECT (optional),
# SPOT=1 for spot capacity, DRY_RUN=1 to print the gcloud commands instead of running them.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
ACCELERATOR="${ACCELERATOR:-v5e-16}"
case "$ACCELERATOR" in
  v6e-*) RUNTIME="${RUNTIME:-v2-alpha-tpuv6e}" ;;
  v5p-*) RUNTIME="${RUNTIME:-v2-alpha-tpuv5}" ;;
  v5e-*|v5litepod-*) RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}" ;;
  *) RUNTIME="${RUNTIME:-tpu-ubuntu2204-base}" ;;
esac
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
run() { if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%s\n' "$(printf '%q ' "$@")"; else "$@"; fi; }
here="$(cd "$(dirname "$0")/.." && pwd)"

if [[ "${DRY_RUN:-0}" != 1 ]] && gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG >/dev/null 2>&1; then
  echo "reusing TPU VM $TPU_NAME"
else
  run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
      --version="$RUNTIME" ${SPOT:+--spot} $PROJECT_FLAG
fi

# Copy this checkout to every worker and install it with TPU JAX.
tarball="$(mktemp -d)/llada-jax.tar.gz"
run tar -czf "$tarball" -C "$here" --exclude=.git --exclude='runs' --exclude='.venv*' .
run gcloud compute tpus tpu-vm scp "$tarball" "$TPU_NAME":~/llada-jax.tar.gz --worker=all --zone="$ZONE" $PROJECT_FLAG
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --zone="$ZONE" $PROJECT_FLAG --command \
  "mkdir -p ~/llada-jax && tar -xzf ~/llada-jax.tar.gz -C ~/llada-jax && cd ~/llada-jax && pip install -q -e '.[tpu]'"

# The same command on all workers; `llada train` initialises jax.distributed from the TPU environment.
args="$(printf '%q ' "$@")"
run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=all --zone="$ZONE" $PROJECT_FLAG --command \
  "cd ~/llada-jax && ${EXTRA_ENV:-} llada train $args 2>&1 | tee -a ~/llada-train.log"
