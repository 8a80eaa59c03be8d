#!/usr/bin/env bash
# Data-parallel scaling on this machine: the same training run on 1 rank and on N ranks (train --devices N,
# Open MPI), the same per-rank batch and threads per rank, one after the other. Prints per run: images/s
# (all ranks), images/s per rank, scaling efficiency against 1 rank, time in the gradient all-reduce per step
# and the bytes each rank reduces per step; writes OUT/data_parallel.md and keeps each run's summary.json.
#
#   bench/data_parallel.sh [--ranks 2] [--model vit-tiny] [--image-size 32] [--batch-size 32] [--threads 1]
#                          [--limit 2048] [--epochs 1] [--precision 32-true] [--device cpu] [--out DIR]
#
# On a 2-core machine the fair comparison is 2 ranks x 1 thread against 1 rank x 1 thread (the default).
# Needs the .NET SDK (builds src/Host in Release unless ORTFINETUNE_DLL points at a built ortfinetune.dll)
# and openmpi-bin.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ranks=2 model=vit-tiny size=32 batch=32 threads=1 limit=2048 epochs=1 precision=32-true device=cpu out=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ranks) ranks=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --image-size) size=$2; shift 2 ;;
    --batch-size) batch=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --precision) precision=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
command -v mpirun >/dev/null || { echo "mpirun not found: apt-get install openmpi-bin" >&2; exit 2; }
out=${out:-$root/bench/out/data-parallel-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
dll=${ORTFINETUNE_DLL:-}
if [[ -z "$dll" ]]; then
  dotnet build "$root/src/Host/OrtFinetune.Host.csproj" -c Release -v q -nologo >/dev/null
  dll="$root/src/Host/bin/Release/net10.0/ortfinetune.dll"
fi

for n in 1 "$ranks"; do
  run="$out/ranks-$n"
  rm -rf "$run"
  echo "== $n rank(s) x $threads thread(s), batch $batch per rank" >&2
  dotnet "$dll" train --model "$model" --image-size "$size" --batch-size "$batch" --threads "$threads" --workers 1 \
    --limit "$limit" --epochs "$epochs" --precision "$precision" --device "$device" --augment none \
    --devices "$n" --output "$run" 2>&1 | tail -n 4 >&2
done

python3 - "$out" "$ranks" "$(lscpu | sed -n 's/^Model name: *//p' | head -1)" <<'EOF'
import json, sys
out, ranks, cpu = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = {n: json.load(open(f"{out}/ranks-{n}/summary.json")) for n in (1, ranks)}
base = s[1]["samples_per_second"]
lines = [f"machine: {cpu}", "",
         "| ranks | images/s (all) | images/s per rank | scaling efficiency | all-reduce s/step | MB reduced per rank per step | test accuracy |",
         "|---|---|---|---|---|---|---|"]
for n, x in s.items():
    steps = max(1, x["steps"])
    ar = x.get("allreduce_seconds") or 0
    mb = (x.get("allreduce_bytes_per_step") or 0) / 2**20
    lines.append(f"| {n} | {x['samples_per_second']:.1f} | {x['samples_per_second'] / n:.1f} | {x['samples_per_second'] / (n * base):.2f} | {ar / steps:.4f} | {mb:.2f} | {x['test_accuracy']} |")
text = "\n".join(lines)
print(text)
open(f"{out}/data_parallel.md", "w").write(text + "\n")
EOF
