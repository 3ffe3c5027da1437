#!/usr/bin/env bash
# On the lent GPU machine: BreastMNIST 28 px, 3 contexts x 3 seeds, all 9 runs sharing the GPU.
# Run from the repo root with .carry/data carried (benchmarks/reproduce/prepare_carry.py).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 CON2_DISABLE_EXT=${CON2_DISABLE_EXT:-0}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
: > benchmarks/reproduce/results.device.jsonl
python3 benchmarks/reproduce/device_job.py breast28-invert breast28-flip breast28-equalize \
  --data-root .carry/data --budget-s ${BUDGET_S:-500} --steps-per-epoch 6 \
  --results benchmarks/reproduce/results.device.jsonl
cp benchmarks/reproduce/results.device.jsonl "$OUT/" 2>/dev/null
tar czf "$OUT/metrics.tgz" runs/device-probe/*/metrics.jsonl runs/device-probe/*/metrics.json 2>/dev/null
true
