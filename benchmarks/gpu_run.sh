#!/usr/bin/env bash
# Build con2._C with CUDA kernels on the GPU machine, run the GPU tests and the GPU
# benchmarks, and write everything to $OUT (default ./gpu-out).
#
#   bash benchmarks/gpu_run.sh [build|smoke|test|bench|views|view_check|throughput|ncu_views|all]  (default: all but the last four)
#   view_check: after a build, the GPU view tests, the view table and the pipeline's parts in one call
#   train_probe: the 224 px reproduction step with cudnn.benchmark / torch.compile / 2-3 processes sharing the GPU
#   BENCH_K=con2_loss bash benchmarks/gpu_run.sh bench   # a subset of the GPU benchmarks (pytest -k)
#
# Stages can run in separate calls (each device call is limited to 10 minutes; the
# build outputs stay in the working tree between calls while the machine is warm).
set -uo pipefail
STAGE="${1:-all}"
PY="${PY:-/opt/torch/.venv/bin/python3}"
[ -x "$PY" ] || PY="$(command -v python3)"
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
export FORCE_CUDA=1
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
rc=0

log() { echo "[gpu_run] $*" | tee -a "$OUT/gpu_run.log"; }

build() {
  log "python: $PY"; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" 2>&1 | tee -a "$OUT/gpu_run.log"
  nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
  nvcc --version > "$OUT/nvcc.txt" 2>&1 || true
  local t0=$SECONDS
  # build in place (no install, no network); pip -e is the fallback
  if "$PY" setup.py build_ext --inplace > "$OUT/build.log" 2>&1; then
    log "build_ext --inplace ok ($((SECONDS - t0)) s)"
  elif "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . -v >> "$OUT/build.log" 2>&1; then
    log "pip install -e ok ($((SECONDS - t0)) s)"
  else
    log "BUILD FAILED (see build.log)"; tail -40 "$OUT/build.log"; return 1
  fi
  grep "\[con2\]" "$OUT/build.log" | tee -a "$OUT/gpu_run.log"
}

smoke() {
  "$PY" - <<'PYEOF' 2>&1 | tee "$OUT/smoke.txt"
import torch, torch.nn.functional as F
from con2.ops import native, reference
print("cuda kernels:", native.has_kernels("cuda"))
torch.manual_seed(0)
for m, d, c in [(1, 8, 1), (2, 8, 1), (37, 16, 5), (2048, 128, 4), (5000, 256, 1000)]:
    z = F.normalize(torch.randn(m, d, device="cuda"), dim=1)
    lab = torch.randint(0, c, (m,), device="cuda")
    out = []
    for fn in (native.supcon_loss, reference.supcon_loss):
        x = z.clone().requires_grad_(True); l = fn(x, lab, 0.07); l.backward(); out.append((l.item(), x.grad))
    print(f"loss M={m}: native {out[0][0]:.6f} ref {out[1][0]:.6f} max|dgrad| {(out[0][1]-out[1][1]).abs().max().item():.3e}")
for m, d in [(1, 8), (130, 128), (2048, 128), (5000, 256)]:  # fused two-head kernels vs reference
    zc = F.normalize(torch.randn(m, d, device="cuda"), dim=1); zs = F.normalize(torch.randn(m, d, device="cuda"), dim=1)
    cl = torch.randint(0, 2, (m,), device="cuda"); sid = torch.arange(m, device="cuda") // 4
    try:
        losses, dzc, dzs = torch.ops.con2.con2_fwd_bwd(zc, zs, cl, sid, 0.07, True)
        errs = []
        for i, (z, lab, dz) in enumerate(((zc, cl, dzc), (zs, sid, dzs))):
            x = z.clone().requires_grad_(True); l = reference.supcon_loss(x, lab, 0.07); l.backward()
            errs.append(f"head{i} loss {losses[i].item():.6f} ref {l.item():.6f} max|dgrad| {(dz - x.grad).abs().max().item():.3e}")
        print(f"fused M={m} D={d}:", "; ".join(errs))
    except Exception as exc:
        print(f"fused M={m} D={d}: FAILED {type(exc).__name__}: {exc}")
for q, n, d, dt in [(100, 50000, 512, torch.float32), (1024, 200000, 512, torch.float32), (64, 30000, 128, torch.bfloat16)]:
    Q = torch.randn(q, d, device="cuda", dtype=dt); B = torch.randn(n, d, device="cuda", dtype=dt)
    v, i = native.top1_cosine(Q, B); vr, ir = reference.top1_cosine(Q, B)
    print(f"top1 Q={q} N={n} {dt}: index equal {(i == ir).float().mean().item():.6f} max|dv| {(v - vr).abs().max().item():.3e}")
x = torch.randn(100000, 512, device="cuda"); mu = torch.randn(512, device="cuda"); W = torch.randn(512, 512, device="cuda") / 23
a = native.mahalanobis_sq(x, mu, W); r = reference.mahalanobis_sq(x, mu, W)
print(f"mahalanobis max rel err {((a - r).abs() / r).max().item():.3e}")
try:
    f = torch.ops.con2.mahalanobis_sq(x, mu, W, True)
    print(f"mahalanobis fused max rel err {((f - r).abs() / r).max().item():.3e}")
except Exception as exc:
    print(f"mahalanobis fused: FAILED {type(exc).__name__}: {exc}")
PYEOF
}

tests() {
  "$PY" -m pytest tests -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/tests_gpu.txt" | tail -30
  return "${PIPESTATUS[0]}"
}

bench() {
  CON2_BENCH_FULL=1 "$PY" -m pytest benchmarks/test_bench_ops.py -m gpu -q -p no:cacheprovider ${BENCH_K:+-k "$BENCH_K"} \
    --benchmark-json="$OUT/bench_gpu.json" --benchmark-columns=min,median,mean,stddev,rounds \
    2>&1 | tee "$OUT/bench_gpu.txt" | tail -80
  return "${PIPESTATUS[0]}"
}

views() {  # the view pipeline table: torch ops eager / compiled and the native simclr_views kernel
  "$PY" benchmarks/test_bench_views.py --gpu 2>&1 | tee "$OUT/views_gpu.txt"
  return "${PIPESTATUS[0]}"
}

view_check() {  # the view kernel after a change: its GPU tests, the view table, the pipeline's parts
  "$PY" -m pytest tests -m gpu -q -p no:cacheprovider -k "view" 2>&1 | tee "$OUT/tests_gpu_views.txt" | tail -15
  local rc=${PIPESTATUS[0]}
  views || rc=1
  "$PY" benchmarks/profile_gpu.py view_parts 32 224 2>&1 | tee "$OUT/view_parts.txt" || rc=1
  return $rc
}

ncu_views() {  # Nsight Compute on one 224 px launch of the CUDA view kernel (text report; not run yet)
  local ncu; ncu="$(command -v ncu || echo /usr/local/cuda/bin/ncu)"
  cat > "$OUT/views_once.py" <<'PYEOF'
import torch
from con2.data.contexts import ContextSet
from con2.data.views import TensorViewPipeline, ViewConfig
x = torch.randint(0, 256, (512, 3, 224, 224), dtype=torch.uint8, device="cuda")
pipe = TensorViewPipeline(ContextSet("invert"), ViewConfig(224), dtype=torch.bfloat16, channels_last=True, native=True)
g = torch.Generator("cuda").manual_seed(0)
for _ in range(5):
    pipe(x, g)
torch.cuda.synchronize()
PYEOF
  "$ncu" --kernel-name regex:views_kernel --launch-skip 3 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section InstructionStats \
    --section MemoryWorkloadAnalysis "$PY" "$OUT/views_once.py" > "$OUT/ncu_views.txt" 2>&1
  local rc=$?; rm -f "$OUT/views_once.py"; tail -60 "$OUT/ncu_views.txt"; return $rc
}

throughput() {  # the whole Con2 step (views, forward, loss, backward, AdamW), AMP, batch 512 = 2048 views
  local data="${DATA_ROOT:-.carry/data}" rc=0
  for size in 32 224; do
    for views in compiled native; do
      CON2_CUDA_VIEWS=$views "$PY" benchmarks/train_throughput.py --dataset breast --data-root "$data" \
        --image-size $size --batch-size 512 --steps 10 --warmup 3 --amp 2>&1 | sed "s/^/[views=$views] /" \
        | tee -a "$OUT/throughput.txt"
      [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1  # go on with the other runs; the stage reports the failure
    done
  done
  return $rc
}

train_probe() {  # the reproduction's 224 px step (paper batch) under the options not tried yet
  local common="--data-root ${DATA_ROOT:-.carry/data} --image-size 256 --center-crop 224 --amp --steps 40 --warmup 8"
  local rc=0
  for opts in "" "--cudnn-benchmark" "--cudnn-benchmark --compile" "--cudnn-benchmark --procs 2" "--cudnn-benchmark --procs 3"; do
    "$PY" benchmarks/train_throughput.py --dataset breast --batch-size 64 $common $opts 2>&1 | tail -4 | tee -a "$OUT/train_probe.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  done
  for opts in "" "--cudnn-benchmark" "--cudnn-benchmark --procs 2"; do
    "$PY" benchmarks/train_throughput.py --dataset pneumonia --batch-size 128 $common $opts 2>&1 | tail -4 | tee -a "$OUT/train_probe.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || rc=1
  done
  return $rc
}

case "$STAGE" in
  train_probe) train_probe || rc=1 ;;
  build) build || rc=1 ;;
  views) views || rc=1 ;;
  view_check) view_check || rc=1 ;;
  throughput) throughput || rc=1 ;;
  ncu_views) ncu_views || rc=1 ;;
  smoke) smoke || rc=1 ;;
  test) tests || rc=1 ;;
  bench) bench || rc=1 ;;
  all) { build && smoke && tests; } || rc=1; bench || rc=1 ;;
  *) echo "usage: $0 [build|smoke|test|bench|views|view_check|throughput|train_probe|ncu_views|all]"; exit 2 ;;
esac
log "stage $STAGE finished rc=$rc"
exit $rc
