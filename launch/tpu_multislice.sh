#!/usr/bin/env bash
# Train on several TPU slices joined by the data-centre network (multi-slice): queued resources create NUM_SLICES
# slices; each worker runs the same `llada train`, and the DCN mesh axes (mesh.dcn_data, by default) span slices.
#
#   NAME=llada-ms ZONE=us-east5-a ACCELERATOR=v5p-128 NUM_SLICES=2 \
#     launch/tpu_multislice.sh --config=configs/llada_8b.py --workdir=gs://BUCKET/runs/8b-ms
#
# The script adds --config.mesh.dcn_data=$NUM_SLICES unless you pass a --config.mesh.dcn_* flag yourself.
# Each slice's output goes to its own log, $LOG_DIR/$NAME-<slice>.log (LOG_DIR defaults to .).
# DRY_RUN=1 prints the commands (each in one write, so the slices' lines never interleave).
set -euo pipefail
: "${NAME:?set NAME}" "${ZONE:?set ZONE}" "${ACCELERATOR:?set ACCELERATOR}" "${NUM_SLICES:?set NUM_SLICES}"
RUNTIME="${RUNTIME:-v2-alpha-tpuv5}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
run() { if [[ "${DRY_RUN:-0}" == 1 ]]; then printf '%s\n' "$(printf '%q ' "$@")"; else "$@"; fi; }
here="$(cd "$(dirname "$0")/.." && pwd)"

run gcloud compute tpus queued-resources create "$NAME" --zone="$ZONE" --accelerator-type="$ACCELERATOR" \
    --runtime-version="$RUNTIME" --node-count="$NUM_SLICES" --node-prefix="$NAME" $PROJECT_FLAG

dcn=()
if ! printf '%s\n' "$@" | grep -q -- '--config.mesh.dcn_'; then dcn=(--config.mesh.dcn_data="$NUM_SLICES"); fi
tarball="$(mktemp -d)/llada-jax.tar.gz"
run tar -czf "$tarball" -C "$here" --exclude=.git --exclude='runs' --exclude='.venv*' .
args="$(printf '%q ' "$@" "${dcn[@]}")"
for ((i = 0; i < NUM_SLICES; i++)); do
  node="$NAME-$i"
  run gcloud compute tpus tpu-vm scp "$tarball" "$node":~/llada-jax.tar.gz --worker=all --zone="$ZONE" $PROJECT_FLAG
  run gcloud compute tpus tpu-vm ssh "$node" --worker=all --zone="$ZONE" $PROJECT_FLAG --command \
    "mkdir -p ~/llada-jax && tar -xzf ~/llada-jax.tar.gz -C ~/llada-jax && cd ~/llada-jax && pip install -q -e '.[tpu]'"
done
# Launch on every slice at once (MEGASCALE_* variables are set by the queued resource on each worker).
log_dir="${LOG_DIR:-.}"
[[ "${DRY_RUN:-0}" == 1 ]] || mkdir -p "$log_dir"
for ((i = 0; i < NUM_SLICES; i++)); do
  log=/dev/stdout
  [[ "${DRY_RUN:-0}" == 1 ]] || { log="$log_dir/$NAME-$i.log"; echo "slice $i: output in $log"; }
  run gcloud compute tpus tpu-vm ssh "$NAME-$i" --worker=all --zone="$ZONE" $PROJECT_FLAG --command \
    "cd ~/llada-jax && llada train $args 2>&1 | tee -a ~/llada-train.log" >>"$log" 2>&1 &
done
wait
