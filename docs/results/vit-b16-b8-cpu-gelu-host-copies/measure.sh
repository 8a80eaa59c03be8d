#!/bin/bash
# Interleaved: base 6ba0aa0 (/work/wt/base) vs new (/work/main), ViT-B/16 b8 AdamW on this VM.
set -u
out=/tmp/ab/m
common="--model vit-b16 --dataset synthetic --classes 1000 --batch-size 8 --optimizer adamw --lr 1e-4 --weight-decay 0.05 --no-peak"
run() { # name dir args...
  local name=$1 dir=$2; shift 2
  echo "== $(date +%T) $name" >> $out/progress.log
  (cd $dir && /usr/bin/time -v dotnet src/Host/bin/Release/net10.0/ortfinetune.dll benchmark $common "$@" --output $out/$name) > $out/$name.log 2>&1
  grep -E "^\| (32-true|bf16|16-|bf16-true)" $out/$name/benchmark.md | head -4 >> $out/progress.log
}
for arena in true false; do
  run base-arena-$arena /work/wt/base --precisions 32-true,bf16-mixed --warmup 1 --steps 3 --cpu-arena $arena
  run new-arena-$arena /work/main --precisions 32-true,bf16-mixed --warmup 1 --steps 3 --cpu-arena $arena
done
run base-lpa /work/wt/base --precisions bf16-mixed,16-mixed --warmup 1 --steps 3 --cpu-arena true --low-precision-activations
run new-lpa /work/main --precisions bf16-mixed,16-mixed --warmup 1 --steps 3 --cpu-arena true --low-precision-activations
run base-true /work/wt/base --precisions bf16-true --warmup 1 --steps 3 --cpu-arena true
run new-true /work/main --precisions bf16-true --warmup 1 --steps 3 --cpu-arena true
echo "== $(date +%T) done" >> $out/progress.log
