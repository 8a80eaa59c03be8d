#!/bin/bash
# after measure.sh: side by side with PyTorch (arena on), then the liveness profile with 16-bit activations, on the new build
set -u
while ! grep -q "done" /tmp/ab/m/progress.log; do sleep 10; done
cd /work/main
echo "== $(date +%T) side-by-side" >> /tmp/ab/m/progress.log
ORTFINETUNE_DLL=/work/main/src/Host/bin/Release/net10.0/ortfinetune.dll bench/side_by_side.sh --model vit-b16 --batch-size 8 --warmup 1 --steps 3 --cpu-arena true --out /tmp/ab/m/side-by-side-arena-on > /tmp/ab/m/side-by-side.log 2>&1
cat /tmp/ab/m/side-by-side-arena-on/side_by_side.md >> /tmp/ab/m/progress.log
echo "== $(date +%T) profile" >> /tmp/ab/m/progress.log
dotnet src/Host/bin/Release/net10.0/ortfinetune.dll benchmark --model vit-b16 --dataset synthetic --classes 1000 --batch-size 8 --precisions 32-true,bf16-mixed,16-mixed --warmup 1 --steps 1 --cpu-arena true --optimizer adamw --lr 1e-4 --weight-decay 0.05 --no-peak --profile --low-precision-activations --output /tmp/ab/m/profile-low-precision-activations > /tmp/ab/m/profile.log 2>&1
head -1 /tmp/ab/m/profile-low-precision-activations/profile/*/liveness.md >> /tmp/ab/m/progress.log
echo "== $(date +%T) all done" >> /tmp/ab/m/progress.log
