#!/usr/bin/env bash
# Train/evaluate SPT on GPU nodes under SLURM: one process per GPU, started by srun.
#
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 launch/gpu_slurm.sh \
#     --config=configs/visa.py:vit_h --workdir=/shared/runs/visa_h \
#     --config.mesh.shape='(-1,8,1)' --config.mesh.dcn_shape='(2,1,1)'
#
# JAX's SLURM detection gives each task its process id, the process count, the
# coordinator (the first node) and one GPU (number SLURM_LOCALID), so SPT_DISTRIBUTED=1
# is all `spt_jax.parallel.maybe_initialize_distributed` needs. For one process per
# node driving all its GPUs, submit with --ntasks-per-node=1 and ONE_PROCESS_PER_NODE=1
# (which lists the node's GPUs in JAX_LOCAL_DEVICE_IDS). The workdir must be on a file
# system all nodes share (Orbax writes each process's checkpoint shards there).
# Without SLURM, launch/multiprocess.py starts the processes of one node.
# Preemption: SLURM sends SIGTERM to the tasks (on preemption, and 120 s before the
# time limit, --signal); all processes save one agreed step and exit with code 75, and
# the job requeues itself to resume from it.
#SBATCH --job-name=spt_jax
#SBATCH --exclusive
#SBATCH --output=%x-%j.out
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PYTHON="${PYTHON:-.venv/bin/python}"
export SPT_DISTRIBUTED=1
if [[ "${ONE_PROCESS_PER_NODE:-0}" == 1 ]]; then
  JAX_LOCAL_DEVICE_IDS="$(nvidia-smi --list-gpus | awk '{print NR - 1}' | paste -sd, -)"
  export JAX_LOCAL_DEVICE_IDS
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
set +e
srun --kill-on-bad-exit=1 "$PYTHON" -m spt_jax.main "$@"
code=$?
if [[ $code == 75 && -n "${SLURM_JOB_ID:-}" ]]; then  # PREEMPTED_EXIT_CODE: step saved
  echo "preempted: the run saved a step; requeueing job $SLURM_JOB_ID to resume" >&2
  scontrol requeue "$SLURM_JOB_ID"
fi
exit $code
