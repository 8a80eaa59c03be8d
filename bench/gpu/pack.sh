#!/usr/bin/env bash
# Packs ortfinetune for a GPU machine that has no .NET and no network: a self-contained linux-x64
# publish built against Microsoft.ML.OnnxRuntime.Gpu.Linux (CUDA 13), the built-in plugins, and this
# folder's device_run.sh, as one xz tarball split into parts small enough for one device call each.
#
#   bench/gpu/pack.sh [--part-size 60M] [--data DIR]   # -> .gpu/p1/part.aa, .gpu/p2/part.ab, ... (.gpu/ is git-ignored)
#
# --data DIR adds a dataset folder as data/<name of DIR> (e.g. /usr/share/datasets/fashion-mnist,
# for device_run.sh --accuracy).
#
# Then, on the device, one call per part: copy .gpu/pN/part.* to /tmp/of-parts/; the last call runs
# `bash bench/gpu/device_run.sh` (joins, unpacks, sets LD_LIBRARY_PATH, benchmarks, writes $OUT).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
size=60M data=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --part-size) size=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 1 ;;
  esac
done
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
echo "== publishing (self-contained, linux-x64, OrtGpu=true)" >&2
dotnet publish "$root/src/Host/OrtFinetune.Host.csproj" -c Release -r linux-x64 --self-contained -p:OrtGpu=true \
  -v q -nologo -o "$stage/ortfinetune" >&2
# Not needed to train: TensorRT's provider bridge, debugger support, symbols.
rm -f "$stage/ortfinetune/libonnxruntime_providers_tensorrt.so" "$stage/ortfinetune/createdump"
find "$stage/ortfinetune" -name '*.pdb' -delete
git -C "$root" rev-parse --short HEAD > "$stage/ortfinetune/COMMIT" 2>/dev/null || true
if [[ -n "$data" ]]; then mkdir -p "$stage/ortfinetune/data" && cp -r "$data" "$stage/ortfinetune/data/"; fi
du -sh "$stage/ortfinetune" >&2
rm -rf "$root/.gpu"
mkdir -p "$root/.gpu/all"
echo "== compressing (xz)" >&2
tar -C "$stage" -cf - ortfinetune | xz -6 -T"$(nproc)" > "$root/.gpu/all/ortfinetune.tar.xz"
(cd "$root/.gpu/all" && split -b "$size" ortfinetune.tar.xz part.)
i=0
for f in "$root"/.gpu/all/part.*; do
  i=$((i + 1)); mkdir -p "$root/.gpu/p$i"; mv "$f" "$root/.gpu/p$i/"
done
sha256sum "$root/.gpu/all/ortfinetune.tar.xz" | cut -d' ' -f1 > "$root/.gpu/sha256"
rm "$root/.gpu/all/ortfinetune.tar.xz"
ls -la "$root"/.gpu/p*/ >&2
echo "$i parts; sha256 $(cat "$root/.gpu/sha256")"
