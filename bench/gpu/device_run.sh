#!/usr/bin/env bash
# Runs on the GPU machine (no .NET, no network), from the repository root, after the parts made by
# bench/gpu/pack.sh were copied to $PARTS (default /tmp/of-parts): joins and unpacks them, finds
# the CUDA 13 / cuDNN 9 libraries of the machine's Python (nvidia-* wheels) and CUDA toolkit, then runs
# `ortfinetune selftest --device cuda` first (PyTorch gradient fixtures on the device; a short run on the
# CPU and on the device compared step by step, with the learning rate, step, loss scale and accumulation
# the device really read), then bench/side_by_side.sh (ours: every precision policy on the CUDA provider,
# each in its own process; the PyTorch eager peer with the matching precision, both from the peer's
# initial weights on the same batch, so the per-step losses are compared too) and writes everything
# under $OUT (at most 8 files: machine.txt, selftest.txt, benchmark.md, side_by_side.md, results.tgz
# (with selftest.json), and with the options below accuracy.md, accuracy.log, accuracy.tgz; --diagnose
# adds diagnose.md, so use it without --accuracy).
#
#   bash bench/gpu/device_run.sh [--model vit-l16] [--batch-size 32] [--warmup 3] [--steps 10]
#                                [--precisions "32-true bf16-mixed 16-mixed bf16-true 16-true"] [--budget 420] [--device cuda]
#                                [--accuracy EPOCHS] [--accuracy-budget 240] [--diagnose] [--selftest-budget 120]
#
# --accuracy N: then every policy trains vit-tiny (28 px) on Fashion-MNIST for N epochs with evaluation
# (the data packed with pack.sh --data /usr/share/datasets/fashion-mnist), written to $OUT/accuracy.*.
# --diagnose: then ViT-B/16 batch 8, 32-true, with the shared CUDA arena and without (device memory).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
model=vit-l16 batch=32 warmup=3 steps=10 budget=420 device=cuda accuracy=0 accuracy_budget=240 diagnose=0 selftest_budget=120
precisions="32-true bf16-mixed 16-mixed bf16-true 16-true"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --batch-size) batch=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --precisions) precisions=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --accuracy) accuracy=$2; shift 2 ;;
    --accuracy-budget) accuracy_budget=$2; shift 2 ;;
    --diagnose) diagnose=1; shift ;;
    --selftest-budget) selftest_budget=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 1 ;;
  esac
done
parts=${PARTS:-/tmp/of-parts}
out=${OUT:-/tmp/of-out}
app=/tmp/of-app
mkdir -p "$out"
if [[ ! -x "$app/ortfinetune/ortfinetune" ]]; then
  rm -rf "$app"; mkdir -p "$app"
  if [[ -f "$root/.gpu/sha256" ]]; then
    echo "$(cat "$root/.gpu/sha256")  -" > /tmp/of-sha
    cat "$parts"/part.* | sha256sum -c /tmp/of-sha || { echo "parts do not match the packed sha256" >&2; ls -la "$parts" >&2; exit 1; }
  fi
  cat "$parts"/part.* | xz -d -T0 | tar -x -C "$app" || { echo "unpacking failed" >&2; exit 1; }
fi
echo "== build $(cat "$app/ortfinetune/COMMIT" 2>/dev/null)" >&2
sp=$(python3 -c 'import site; print(site.getsitepackages()[0])')
libdirs=$( (find "$sp/nvidia" -maxdepth 4 \( -name 'libcublas*.so*' -o -name 'libcudart.so*' -o -name 'libcurand.so*' -o -name 'libcudnn*.so*' -o -name 'libcufft.so*' \) -printf '%h\n' 2>/dev/null; \
           [[ -d /usr/local/cuda/lib64 ]] && echo /usr/local/cuda/lib64) | awk '!seen[$0]++' | paste -sd:)
export LD_LIBRARY_PATH="$app/ortfinetune:$libdirs:${LD_LIBRARY_PATH:-}"
{
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.max.sm --format=csv
  python3 -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, torch.cuda.get_device_name(0))'
  LD_LIBRARY_PATH=$LD_LIBRARY_PATH ldd "$app/ortfinetune/libonnxruntime_providers_cuda.so" | grep -E 'cublas|cudart|curand|not found'
  nproc; free -g | head -2
} > "$out/machine.txt" 2>&1
cat "$out/machine.txt" >&2

res=/tmp/of-res
rm -rf "$res"
mkdir -p "$res"
exe="$app/ortfinetune/ortfinetune"
timeout "$selftest_budget" "$exe" selftest --device "$device" --output "$res/selftest" > "$out/selftest.txt" 2>&1
echo "== selftest on $device (exit $?)"
grep -v -E '^[0-9:]+ info' "$out/selftest.txt" | tail -25
export ORTFINETUNE_EXE="$app/ortfinetune/ortfinetune" PYTHON=python3 PYTHONUNBUFFERED=1
timeout "$budget" bash "$root/bench/side_by_side.sh" --device "$device" --model "$model" --batch-size "$batch" \
  --warmup "$warmup" --steps "$steps" --precisions "$precisions" --out "$res" 2>&1 | tee /tmp/of-run.log | grep -v -E "warm-up step|timed step" >&2
rc=${PIPESTATUS[0]}
echo "== side_by_side exit $rc" >&2
cp /tmp/of-run.log "$res/run.log" 2>/dev/null
cp "$res/ours/benchmark.md" "$res/side_by_side.md" "$out/" 2>/dev/null
tar -C "$res" -czf "$out/results.tgz" . 2>/dev/null
echo
echo "== ours ($model, batch $batch, $device)"
grep -E '^\| (policy|32|16|bf16)' "$res/ours/benchmark.md" 2>/dev/null | head -7
echo
echo "== side by side with PyTorch"
cat "$res/side_by_side.md" 2>/dev/null

if [[ "$diagnose" == 1 ]]; then
  for shared in 1 0; do
    ORTFINETUNE_CUDA_SHARED_ARENA=$shared timeout 120 "$exe" benchmark --model vit-b16 --batch-size 8 --device "$device" \
      --precisions 32-true --warmup 2 --steps 3 --no-peak --output "/tmp/of-diag-$shared" > "/tmp/of-diag-$shared.log" 2>&1
    echo "== diagnose: vit-b16 batch 8 32-true, shared arena $shared"
    grep -E '^\| 32-true \| [0-9]' "/tmp/of-diag-$shared/benchmark.md" | head -1
  done
  cat /tmp/of-diag-1/benchmark.md /tmp/of-diag-0/benchmark.md > "$out/diagnose.md" 2>/dev/null
fi
if [[ "$accuracy" -gt 0 ]]; then
  data="$app/ortfinetune/data/fashion-mnist"
  timeout "$accuracy_budget" "$exe" benchmark --model vit-tiny --image-size 28 --dataset fashion-mnist --data-dir "$data" \
    --epochs "$accuracy" --batch-size 128 --lr 0.003 --workers 4 --device "$device" --no-peak \
    --precisions 32-true,bf16-mixed,16-mixed,bf16-true,16-true --warmup 1 --steps 3 --output /tmp/of-acc > "$out/accuracy.log" 2>&1
  echo "== accuracy: vit-tiny 28 px on Fashion-MNIST, $accuracy epochs (exit $?)"
  cp /tmp/of-acc/benchmark.md "$out/accuracy.md" 2>/dev/null
  tar -C /tmp/of-acc -czf "$out/accuracy.tgz" . 2>/dev/null
  grep -E '^\| (policy|32|16|bf16)' /tmp/of-acc/benchmark.md 2>/dev/null | head -6
fi
exit 0
