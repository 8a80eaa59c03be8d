#!/usr/bin/env bash
# Runs on the GPU machine (no .NET, no network), from the repository root, after the parts made by
# bench/gpu/pack.sh were copied to $PARTS (default /tmp/of-parts): joins and unpacks them, finds
# the CUDA 13 / cuDNN 9 libraries of the machine's Python (nvidia-* wheels) and CUDA toolkit, then runs
# bench/side_by_side.sh (ours: every precision policy on the CUDA provider, each in its own process;
# the PyTorch eager peer with the matching precision) and writes everything under $OUT.
#
#   bash bench/gpu/device_run.sh [--model vit-l16] [--batch-size 32] [--warmup 3] [--steps 10]
#                                [--precisions "32-true bf16-mixed 16-mixed bf16-true 16-true"] [--budget 420] [--device cuda]
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
model=vit-l16 batch=32 warmup=3 steps=10 budget=420 device=cuda
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
export ORTFINETUNE_EXE="$app/ortfinetune/ortfinetune" PYTHON=python3 PYTHONUNBUFFERED=1
timeout "$budget" bash "$root/bench/side_by_side.sh" --device "$device" --model "$model" --batch-size "$batch" \
  --warmup "$warmup" --steps "$steps" --precisions "$precisions" --out "$res" 2>&1 | tee "$out/run.log" | grep -v -E "warm-up step|timed step" >&2
rc=${PIPESTATUS[0]}
echo "== side_by_side exit $rc" >&2
cp "$res/ours/benchmark.json" "$res/ours/benchmark.md" "$res/side_by_side.md" "$out/" 2>/dev/null
tar -C "$res" -czf "$out/results.tgz" . 2>/dev/null
echo
echo "== ours ($model, batch $batch, $device)"
grep -E '^\| (policy|32|16|bf16)' "$res/ours/benchmark.md" 2>/dev/null | head -7
echo
echo "== side by side with PyTorch"
cat "$res/side_by_side.md" 2>/dev/null
exit 0
