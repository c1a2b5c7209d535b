#!/usr/bin/env bash
# Train/evaluate SPT on a Cloud TPU VM pod slice: one process per TPU host, all hosts
# running the same command (`gcloud ... tpu-vm ssh --worker=all`).
#
#   TPU_NAME=spt-v5p-64 ZONE=us-east5-a [PROJECT=my-project] \
#   [CREATE=1 ACCELERATOR=v5p-64 RUNTIME=v2-alpha-tpuv5 [SPOT=1]] [INSTALL=1] \
#     launch/tpu_pod.sh --config=configs/visa.py:vit_h --workdir=/mnt/my-bucket/runs/visa_h \
#       --config.mesh.shape='(1,-1,1)'
#
# Steps: create the slice (CREATE=1), copy this checkout (git archive of HEAD) to every
# host and install it with the TPU extra (INSTALL=1, the default), then run
# `python -m spt_jax.main ARGS` on all hosts with SPT_DISTRIBUTED=1: JAX finds the
# coordinator, the process count and each host's id from the TPU metadata. The workdir
# must be one path shared by all hosts (a bucket mounted with Cloud Storage FUSE on
# every host): every host writes its checkpoint shards through Orbax; only process 0
# writes logs and reports.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
GCLOUD=(gcloud compute tpus tpu-vm)
SCOPE=(--zone="$ZONE")
[[ -n "${PROJECT:-}" ]] && SCOPE+=(--project="$PROJECT")
REMOTE_DIR="${REMOTE_DIR:-spt_jax}"

if [[ "${CREATE:-0}" == 1 ]]; then
  : "${ACCELERATOR:?set ACCELERATOR, e.g. v4-32 or v5p-64}"
  : "${RUNTIME:?set RUNTIME, the TPU VM software version, e.g. tpu-ubuntu2204-base}"
  extra=()
  [[ "${SPOT:-0}" == 1 ]] && extra+=(--spot)
  "${GCLOUD[@]}" create "$TPU_NAME" "${SCOPE[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$RUNTIME" "${extra[@]}"
fi

if [[ "${INSTALL:-1}" == 1 ]]; then
  archive="$(mktemp -d)/spt_jax.tar.gz"
  git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
  "${GCLOUD[@]}" scp "$archive" "$TPU_NAME":spt_jax.tar.gz "${SCOPE[@]}" --worker=all
  "${GCLOUD[@]}" ssh "$TPU_NAME" "${SCOPE[@]}" --worker=all --command="set -e
    rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar xzf ~/spt_jax.tar.gz -C ~/$REMOTE_DIR
    cd ~/$REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[tpu]'"
fi

# The same command on every host; quoting survives the remote shell.
set +e
"${GCLOUD[@]}" ssh "$TPU_NAME" "${SCOPE[@]}" --worker=all --command="cd ~/$REMOTE_DIR &&
  SPT_DISTRIBUTED=1 .venv/bin/python -m spt_jax.main $(printf '%q ' "$@")"
code=$?
if [[ $code == 75 ]]; then  # spt_jax.train.preemption.PREEMPTED_EXIT_CODE
  echo "preempted: the run saved a step on all hosts. Run this same command again" \
    "(INSTALL=0 if the slice is still there, CREATE=1 if it is gone) to resume." >&2
fi
exit $code
