#!/usr/bin/python3
"""PyTorch eager peer of `ortfinetune benchmark`: the same ViT, batch, optimizer and input shapes.

torchvision's VisionTransformer with the settings of our presets (vit-b16 = torchvision vit_b_16,
vit-l16 = vit_l_16, ...) and torchvision's own weight init, train mode (dropout 0), AdamW,
cross-entropy on random images in [-1, 1] and random labels; warm-up + N timed full steps
(zero_grad, forward, backward, optimizer.step). Prints one JSON object on stdout.

  /usr/bin/python3 bench/peers/torch_vit.py --model vit-b16 --batch-size 8 --warmup 2 --steps 5 [--precision bf16]

Run with Debian's python3-torch (1.13) and libopenblas0-pthread.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

import torch
import torchvision
from torchvision.models.vision_transformer import VisionTransformer

# Our presets (src/Plugins/Models/VitConfig.cs): image, patch, layers, heads, hidden, mlp.
PRESETS = {
    "vit-tiny": (32, 4, 4, 3, 96, 384),
    "vit-small": (32, 4, 6, 3, 192, 768),
    "vit-b16": (224, 16, 12, 12, 768, 3072),
    "vit-b32": (224, 32, 12, 12, 768, 3072),
    "vit-l16": (224, 16, 24, 16, 1024, 4096),
}
ALIASES = {"vit_b_16": "vit-b16", "vit_b_32": "vit-b32", "vit_l_16": "vit-l16"}


def percentile(sorted_values, q):
    """Linear interpolation between closest ranks (numpy's default), as the C# benchmark."""
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit-b16", help="|".join(PRESETS) + " (or torchvision names vit_b_16, vit_l_16)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=0, help="0 = the model's default")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16 = torch.autocast('cpu', bfloat16) (bf16-mixed)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all CPUs)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()

    name = ALIASES.get(a.model, a.model)
    if name not in PRESETS:
        sys.exit(f"unknown model {a.model} (known: {', '.join(PRESETS)})")
    image, patch, layers, heads, hidden, mlp = PRESETS[name]
    if a.image_size:
        image = a.image_size
    threads = a.threads or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(a.seed)

    model = VisionTransformer(image_size=image, patch_size=patch, num_layers=layers, num_heads=heads,
                              hidden_dim=hidden, mlp_dim=mlp, num_classes=a.classes)
    model.train()
    params = sum(t.numel() for t in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.rand(a.batch_size, 3, image, image) * 2 - 1
    y = torch.randint(0, a.classes, (a.batch_size,))

    def step():
        opt.zero_grad(set_to_none=True)
        if a.precision == "bf16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_fn(model(x), y)
        else:
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return float(loss)

    warm, times, losses = [], [], []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = step()
        dt = time.perf_counter() - t0
        (warm if i < a.warmup else times).append(dt)
        if i >= a.warmup:
            losses.append(loss)
        print(f"{'warm-up' if i < a.warmup else 'timed'} step: {dt:.3f} s, loss {loss:.4f}", file=sys.stderr, flush=True)

    s = sorted(times)
    med = statistics.median(s)
    out = {
        "peer": "pytorch-eager",
        "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
        "model": name, "image_size": image, "classes": a.classes, "parameters": params,
        "batch_size": a.batch_size, "precision": a.precision, "optimizer": "adamw", "threads": threads,
        "warmup_seconds": warm, "step_seconds": times,
        "median_seconds": med, "p10_seconds": percentile(s, 0.1), "p90_seconds": percentile(s, 0.9),
        "samples_per_second": a.batch_size / med,
        # ru_maxrss is in KiB on Linux: the process's peak resident set size (VmHWM).
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "step_losses": losses,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
