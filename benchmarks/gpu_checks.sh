#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go, for a session that has one for minutes:
#
#     benchmarks/gpu_checks.sh [LOG_DIR [STAGE ...]]   (from the repository root)
#
# LOG_DIR defaults to gpu_checks/; STAGEs (names below, e.g. gpu_tier global_attention)
# run only those. All of them take about 45 minutes at their limits (a 15-minute lease
# runs a few).
#
# the GPU tier (tests/accelerators/test_gpu_run.py) and the kernel tests' Triton cases
# compiled for the GPU (tests/attached_gpu.py); benchmarks/global_attention.py with
# several Triton block shapes; benchmarks/spt_step.py (vit_b, one image x 8 boxes, the
# fused kernels in float32 and bfloat16, beside PyTorch's SPT on the same GPU); SAM and
# SPT parity with Meta's PyTorch code (the global attention then the Triton kernel);
# benchmarks/relation_attention.py; spt_step with the materialised reference. Most
# telling first: a caller with less time than the sum of the limits still gets those.
#
# Seen on one H200 (jax 0.11.2, CUDA 13): with XLA:GPU's autotuning on, one attention
# program alone compiled in 5 to 17 s (the materialised reference's 9.5 s, 1.4 s with
# XLA_FLAGS=--xla_gpu_autotune_level=0), and the vit_b train step did not compile
# within 200 s; the limits below allow for it.
# global_attention's blocks: 64 and 128 keys per block at vit_b's w = 64 compare the
# kernels' row-block bias (block_k = w: 64x64, 128x64) with the one-hot products
# (64x32, 64x128); 128x128x8x2 asked for 247,808 B of the H200's 232,448 B shared memory.
# For a short lease run the stages one at a time, or set that flag (the XLA fusions are
# then not tuned: their times are then not the ones users get).
#
# Each stage has its own time limit and log (LOG_DIR/<stage>.log); a failing stage does
# not stop the next. It uses the `python3` on the PATH, which must have jax with CUDA,
# flax, optax, torch, segment-anything and ml_collections (the repository need not be
# installed: it runs from the root).
set -uo pipefail
log_dir=${1:-gpu_checks}
selected=" ${*:2} "
mkdir -p "$log_dir"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 seconds=$2
  shift 2
  if [[ "$selected" != "  " && "$selected" != *" $name "* ]]; then return; fi
  echo "== $name ($(date -u +%T), limit ${seconds} s): $*" | tee "$log_dir/$name.log"
  timeout "$seconds" "$@" 2>&1 | tee -a "$log_dir/$name.log"
  echo "== $name: exit ${PIPESTATUS[0]}" | tee -a "$log_dir/$name.log"
}

# The project's pytest settings, in this process, slow tests left out.
pytest_here=(python3 -m pytest -o "addopts=-p no:cacheprovider" -m "not slow" -n 0 -q -rs)

stage versions 60 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version \
  --format=csv; python3 -c "import jax, flax, optax, torch; print(\"jax\", jax.__version__,
  \"flax\", flax.__version__, \"optax\", optax.__version__, \"torch\", torch.__version__,
  jax.devices())"'
stage gpu_tier 240 "${pytest_here[@]}" tests/accelerators/test_gpu_run.py
stage kernel_tests 240 "${pytest_here[@]}" tests/kernels -k "pallas_gpu or cuda"
stage global_attention 180 python3 -m benchmarks.global_attention \
  --gpu-blocks 64x64x4x2,64x32x4x2,128x64x4x2,64x128x4x2,128x64x8x3
stage spt_step_fused 900 python3 -m benchmarks.spt_step --runs 5 --prompts 8 \
  --attention auto --dtype float32,bfloat16
stage parity 240 "${pytest_here[@]}" tests/models/test_sam_parity.py tests/spt/test_spt_parity.py
stage relation_attention 120 python3 -m benchmarks.relation_attention --sizes 4096 16384
stage spt_step_reference 600 python3 -m benchmarks.spt_step --runs 5 --prompts 8 \
  --attention reference --dtype float32
