#!/usr/bin/python3
"""PyTorch eager peer of `ortfinetune benchmark`: the same ViT, batch, optimizer and input shapes.

torchvision's VisionTransformer with the settings of our presets (vit-b16 = torchvision vit_b_16,
vit-l16 = vit_l_16, ...) and torchvision's own weight init, train mode (dropout 0), AdamW with
ortfinetune's default parameter groups (no weight decay for tensors of fewer than 2 dimensions: biases
and norm weights), cross-entropy on the batch ortfinetune's benchmark uses (pixel n of the flattened NCHW
batch = sin(0.37 n), label b = (31 b + 7) mod classes); warm-up + N timed full steps (zero_grad, forward,
backward, optimizer.step). Prints one JSON object on stdout. With --export-weights FILE the initial
weights are written first (safetensors, torchvision names, float32), so that `ortfinetune benchmark
--weights FILE` starts from the same point and the per-step losses of both sides can be compared.

  /usr/bin/python3 bench/peers/torch_vit.py --model vit-b16 --batch-size 8 --warmup 2 --steps 5 [--precision bf16] [--device cuda]

Precisions as Lightning Fabric's: fp32 (32-true), bf16 (bf16-mixed: autocast to bfloat16), fp16 (16-mixed:
autocast to float16 + GradScaler; CUDA only), bf16-true / fp16-true (model, optimizer state and inputs in
16-bit; fp16-true CUDA only). On CUDA, step times are taken after torch.cuda.synchronize() and the peak
device memory is torch.cuda.max_memory_reserved() (what the caching allocator held: the counterpart of
ORT's arena) and max_memory_allocated(); TF32 stays off for matmuls (PyTorch's default).

Run with Debian's python3-torch (1.13) and libopenblas0-pthread on the CPU; any recent torch on CUDA.
"""
import argparse
import json
import struct
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


def save_safetensors(path, tensors):
    """Writes float32 tensors as a safetensors file (8-byte little-endian header length, JSON header, data)."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def synthetic_batch(batch, image, classes):
    """The batch of `ortfinetune benchmark` (BenchmarkChild.SyntheticBatch): sin(0.37 n) in float64, stored as float32."""
    n = torch.arange(batch * 3 * image * image, dtype=torch.float64)
    x = torch.sin(0.37 * n).to(torch.float32).reshape(batch, 3, image, image)
    y = (31 * torch.arange(batch, dtype=torch.int64) + 7) % classes
    return x, y


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit-b16", help="|".join(PRESETS) + " (or torchvision names vit_b_16, vit_l_16)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--image-size", type=int, default=0, help="0 = the model's default")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16", "bf16-true", "fp16-true"], default="fp32",
                   help="bf16/fp16 = torch.autocast (bf16-mixed/16-mixed, fp16 with GradScaler); *-true = everything in 16-bit")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = all CPUs)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--export-weights", help="write the initial weights here (safetensors, torchvision names) before training")
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
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if a.precision in ("fp16", "fp16-true") and not cuda:
        sys.exit(f"--precision {a.precision} needs --device cuda (no float16 autocast/matmul on the CPU in this torch)")
    nvml = None
    if cuda:
        # Device-wide used memory through NVML, the way `ortfinetune benchmark` measures its own: the peak
        # above the level before this process touched the GPU (so the CUDA context counts in both).
        try:
            import pynvml
            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(dev.index or 0)
            nvml = {"handle": handle, "base": pynvml.nvmlDeviceGetMemoryInfo(handle).used, "peak": 0, "mod": pynvml}
        except Exception as e:  # no pynvml / no NVML: the torch allocator's figures only
            print(f"NVML not available ({e}); peak_device_used_bytes not measured", file=sys.stderr)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False

    model = VisionTransformer(image_size=image, patch_size=patch, num_layers=layers, num_heads=heads,
                              hidden_dim=hidden, mlp_dim=mlp, num_classes=a.classes)
    true16 = {"bf16-true": torch.bfloat16, "fp16-true": torch.float16}.get(a.precision)
    if a.export_weights:
        save_safetensors(a.export_weights, model.state_dict())
    model = model.to(dev, dtype=true16 or torch.float32)
    model.train()
    params = sum(t.numel() for t in model.parameters())
    decay = [t for t in model.parameters() if t.ndim >= 2]
    no_decay = [t for t in model.parameters() if t.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, weight_decay=a.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = synthetic_batch(a.batch_size, image, a.classes)
    x = x.to(dev, dtype=true16 or torch.float32)
    y = y.to(dev)
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.precision)
    scaler = None
    if a.precision == "fp16":
        scaler = torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler") else torch.cuda.amp.GradScaler()

    def step():
        opt.zero_grad(set_to_none=True)
        if autocast is not None:
            with torch.autocast(dev.type, dtype=autocast):
                loss = loss_fn(model(x), y)
        else:
            loss = loss_fn(model(x), y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return float(loss)  # a host read: on CUDA it waits for the step

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    warm, times, losses = [], [], []
    for i in range(a.warmup + a.steps):
        if cuda:
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        loss = step()
        if cuda:
            torch.cuda.synchronize(dev)
        dt = time.perf_counter() - t0
        if nvml:
            used = nvml["mod"].nvmlDeviceGetMemoryInfo(nvml["handle"]).used - nvml["base"]
            nvml["peak"] = max(nvml["peak"], used)
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
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if cuda else ""),
        "peak_device_reserved_bytes": torch.cuda.max_memory_reserved(dev) if cuda else None,
        "peak_device_allocated_bytes": torch.cuda.max_memory_allocated(dev) if cuda else None,
        "peak_device_used_bytes": nvml["peak"] if nvml else None,
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
