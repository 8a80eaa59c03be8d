#!/usr/bin/env bash
# Ours (ortfinetune benchmark) and the PyTorch eager peer (bench/peers/torch_vit.py) in one
# invocation, one after the other on the same machine, same model, batch, optimizer, input shapes
# and thread count; prints a ratio table (step time, peak memory) and writes it to OUT/side_by_side.md.
# Both sides start from the same weights (the peer exports its initial weights to OUT/init.safetensors,
# ours loads them with --weights) and train on the same batch, so their per-step losses are compared too
# (the table's last column: the largest relative difference over the timed steps).
#
#   bench/side_by_side.sh [--model vit-b16] [--batch-size 8] [--warmup 2] [--steps 5] [--threads N]
#                         [--precisions "32-true bf16-mixed"] [--cpu-arena true|false] [--device cpu|cuda] [--out DIR]
#
# Policies map to the peer as 32-true -> fp32, bf16-mixed -> torch.autocast(bfloat16), bf16-true ->
# model in bfloat16, and on CUDA also 16-mixed -> autocast(float16) + GradScaler, 16-true -> model in float16.
# On CUDA the memory compared is peak device memory, both as NVML's device-wide used memory above
# the level before the process started (CUDA context included; PyTorch's max_memory_reserved is in
# its JSON too), else peak RSS.
# Needs the .NET SDK (builds src/Host in Release unless ORTFINETUNE_DLL points at a built ortfinetune.dll)
# and Debian's python3-torch + python3-torchvision.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model=vit-b16 batch=8 warmup=2 steps=5 threads=$(nproc) precisions="32-true" arena=true out="" device=cpu
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model=$2; shift 2 ;;
    --batch-size) batch=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --precisions) precisions=$2; shift 2 ;;
    --cpu-arena) arena=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 1 ;;
  esac
done
out=${out:-$root/artifacts/side_by_side/$model-b$batch-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
python=${PYTHON:-/usr/bin/python3}

# ORTFINETUNE_EXE: a self-contained build's ortfinetune executable (no SDK needed), else the dll through dotnet.
dll=${ORTFINETUNE_DLL:-$root/src/Host/bin/Release/net10.0/ortfinetune.dll}
if [[ -n "${ORTFINETUNE_EXE:-}" ]]; then ours=("$ORTFINETUNE_EXE"); else ours=(dotnet "$dll"); fi
if [[ -z "${ORTFINETUNE_DLL:-}" && -z "${ORTFINETUNE_EXE:-}" ]]; then
  echo "== building src/Host (Release)" >&2
  dotnet build "$root/src/Host" -c Release -v q -nologo >&2
fi

init="$out/init.safetensors"
rm -f "$init"
for p in $precisions; do
  case "$p:$device" in
    32-true:*) tp=fp32 ;;
    bf16-mixed:*) tp=bf16 ;;
    bf16-true:*) tp=bf16-true ;;
    16-mixed:cuda*) tp=fp16 ;;
    16-true:cuda*) tp=fp16-true ;;
    *) echo "== peer: no PyTorch counterpart for $p on $device, skipped" >&2; continue ;;
  esac
  echo "== peer: PyTorch eager, $tp" >&2
  export_args=()
  [[ -f "$init" ]] || export_args=(--export-weights "$init")
  "$python" "$root/bench/peers/torch_vit.py" --model "$model" --batch-size "$batch" --classes 1000 --precision "$tp" \
    --warmup "$warmup" --steps "$steps" --threads "$threads" --lr 1e-4 --weight-decay 0.05 --device "$device" "${export_args[@]}" \
    >"$out/peer-$p.json" 2>"$out/peer-$p.log" || { tail -20 "$out/peer-$p.log" >&2; echo "peer failed for $p" >&2; rm -f "$out/peer-$p.json"; }
done

weights_args=()
if [[ -f "$init" ]]; then weights_args=(--weights "$init"); else echo "== no initial weights from the peer: ours starts from its own init" >&2; fi
echo "== ours: $model, batch $batch, $precisions, $threads threads" >&2
# shellcheck disable=SC2086
"${ours[@]}" benchmark --model "$model" --dataset synthetic --classes 1000 --batch-size "$batch" \
  --precisions $precisions --warmup "$warmup" --steps "$steps" --threads "$threads" --cpu-arena "$arena" --device "$device" \
  --optimizer adamw --lr 1e-4 --weight-decay 0.05 "${weights_args[@]}" --output "$out/ours" >"$out/ours.log" 2>&1 \
  || { tail -20 "$out/ours.log" >&2; echo "ours failed (log: $out/ours.log)" >&2; [[ -f "$out/ours/benchmark.json" ]] || exit 1; }

"$python" - "$out" $precisions <<'PY' | tee "$out/side_by_side.md"
import json, os, sys
out, policies = sys.argv[1], sys.argv[2:]
ours = {p["precision"]: p for p in json.load(open(os.path.join(out, "ours", "benchmark.json")))["policies"]}
mib = lambda b: b / 2**20
first = next(iter(ours.values()), {})
cuda = str(first.get("device", "cpu")).startswith("cuda")
kind = "peak device memory" if cuda else "peak RSS"
def mem_ours(o):
    return (o.get("peak_device_bytes") or 0) if cuda else o["peak_rss_bytes"]
def mem_peer(t):
    return (t.get("peak_device_used_bytes") or t.get("peak_device_reserved_bytes") or 0) if cuda else t["peak_rss_bytes"]
same_init = os.path.exists(os.path.join(out, "init.safetensors"))
def loss_gap(o, t):
    a, b = o.get("step_losses") or [], t.get("step_losses") or []
    if not same_init or not a or len(a) != len(b):
        return "–"
    return f"{max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b)):.1e}"
print(f"| policy | ours step (s, median) | PyTorch step (s, median) | speed-up (PyTorch / ours) | ours {kind} (MiB) | PyTorch {kind} (MiB) | memory (ours / PyTorch) | losses: max rel. difference |")
print("|---|---|---|---|---|---|---|---|")
for p in policies:
    f = os.path.join(out, f"peer-{p}.json")
    o = ours.get(p)
    if o is None or "error" in o:
        print(f"| {p} | failed: {o.get('error') if o else 'not run'} | | | | | | |"); continue
    if not os.path.exists(f):
        print(f"| {p} | {o['median_seconds']:.3f} | – | – | {mib(mem_ours(o)):,.0f} | – | – | – |"); continue
    t = json.load(open(f))
    print(f"| {p} | {o['median_seconds']:.3f} (p10 {o['p10_seconds']:.3f}, p90 {o['p90_seconds']:.3f}) "
          f"| {t['median_seconds']:.3f} (p10 {t['p10_seconds']:.3f}, p90 {t['p90_seconds']:.3f}) "
          f"| {t['median_seconds'] / o['median_seconds']:.2f}x | {mib(mem_ours(o)):,.0f} | {mib(mem_peer(t)):,.0f} "
          f"| {mem_ours(o) / max(mem_peer(t), 1):.2f}x | {loss_gap(o, t)} |")
t0 = next((json.load(open(os.path.join(out, f"peer-{p}.json"))) for p in policies if os.path.exists(os.path.join(out, f"peer-{p}.json"))), None)
if t0:
    print(f"\nModel {t0['model']} ({t0['parameters']:,} parameters), batch {t0['batch_size']}, AdamW, {t0['threads']} threads; "
          f"PyTorch {t0['torch']} eager vs ortfinetune (ONNX Runtime), device {t0.get('device', 'cpu')}. Speed-up > 1: ours is faster. Memory < 1: ours uses less. "
          + ("Both sides start from the peer's initial weights (init.safetensors) and train on the same batch." if same_init else "Different initial weights: losses not compared."))
    print()
PY
echo "results in $out" >&2
