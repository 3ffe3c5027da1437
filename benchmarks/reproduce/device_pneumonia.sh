#!/usr/bin/env bash
# On the lent GPU machine: PneumoniaMNIST, 3 contexts x 3 seeds sharing the GPU, plus a
# diagnostic re-scoring of one BreastMNIST invert run (benchmarks/reproduce/diagnose.py).
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
: > benchmarks/reproduce/results.device.jsonl
( python3 benchmarks/reproduce/run.py breast28-invert --data-root .carry/data --seeds 0 --epochs ${DIAG_EPOCHS:-300} \
    --runs runs/diag --results runs/diag.jsonl > "$OUT/diag.log" 2>&1 \
  && python3 benchmarks/reproduce/diagnose.py runs/diag/breast28-invert-s0 >> "$OUT/diag.log" 2>&1 ) &
python3 benchmarks/reproduce/device_job.py pneumonia-invert pneumonia-flip pneumonia-equalize \
  --data-root .carry/data --budget-s ${BUDGET_S:-500} --steps-per-epoch 9 \
  --results benchmarks/reproduce/results.device.jsonl
wait
cp benchmarks/reproduce/results.device.jsonl "$OUT/"
tar czf "$OUT/metrics.tgz" runs/device-probe/*/metrics.jsonl runs/device-probe/*/metrics.json 2>/dev/null
cat "$OUT/diag.log" | grep -v "it/s" | tail -5
true
