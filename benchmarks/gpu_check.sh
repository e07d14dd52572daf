#!/usr/bin/env bash
# Issue 18's GPU check, one script, under 10 minutes on one H100: our GDSS training step and PC
# sampler on the GPU for community_small (128 graphs x 1000 steps) and QM9 (10,000 molecules x
# 1000 steps, as GDSS samples them), each interleaved with the official code on the same GPU when
# a checkout of it is given and torch sees CUDA there.
#
#   bash benchmarks/gpu_check.sh [GDSS_CHECKOUT] [DATA_DIR]
#
# Needs jax with CUDA (`pip install -e ".[cuda,graphs,molecules]"`); JSON in
# benchmarks/results/gdss-gpu-*.json and gdss-qm9-gpu-*.json, tables by benchmarks/speed_tables.py.
set -euo pipefail
cd "$(dirname "$0")/.."
REF=${1:-}
DATA=${2:-../shared/data}
python3 -c "import jax; assert jax.default_backend() == 'gpu', jax.devices(); print(jax.devices())"
peer=()
if [ -n "$REF" ] && python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  peer=(--reference "$REF" --device cuda)
else
  echo "official code not timed: no checkout given, or torch without CUDA here"
fi
python3 benchmarks/gdss.py --headline-only --repeats 3 "${peer[@]}"
python3 benchmarks/gdss.py --dataset QM9 --data-dir "$DATA" --repeats 2 "${peer[@]}"
