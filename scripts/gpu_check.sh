#!/usr/bin/env bash
# Everything only a GPU can show, in one run (a lent GPU has no internet and little time):
#   1. the CUDA tests (the speculative loop, the draft head and token trees on the device, CUDA-event timers);
#   2. scripts/gpu_cost.py: the seed pairs' step costs and verification curves, random weights.
# Results land in $OUT (default: runs/gpu); commit data/results/gpu_cost.json from there.
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
PY=${PY:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" 2>&1
$PY -m pytest tests -m cuda -q -p no:cacheprovider --ignore=tests/browser 2>&1 | tee "$OUT/cuda_tests.log"
tests_rc=${PIPESTATUS[0]}
$PY scripts/gpu_cost.py --out "$OUT/gpu_cost.json" 2>&1 | tee "$OUT/gpu_cost.log"
cost_rc=${PIPESTATUS[0]}
echo "cuda tests: exit $tests_rc; gpu_cost: exit $cost_rc" | tee "$OUT/summary.txt"
exit $(( tests_rc || cost_rc ))
