#!/usr/bin/python3
"""Write the torchvision ViT parity fixtures for OrtFinetune's model plugin tests.

Usage (Debian's Python, which has torch 1.13 / torchvision 0.14):
    /usr/bin/python3 tools/reference/make_vit_fixtures.py [--out DIR]

Writes into tests/fixtures/vit/ (default):
  weights.safetensors  the state_dict of a small torchvision VisionTransformer
                       (image 32, patch 8, 2 layers, 3 heads, hidden 48, mlp 96,
                       10 classes) with seeded random weights: torchvision's init,
                       then N(0, 0.05) noise on every parameter so the zero-initialized
                       class token, biases and head are not trivial.
  io.safetensors       "input" (4, 3, 32, 32) float32 and "logits" (4, 10): the
                       eval-mode output of torchvision for that input; "labels" (4,) int64
                       and "loss": mean cross-entropy of those logits.
  grads.safetensors    d loss / d parameter for every parameter (state_dict names).
  config.json          the architecture settings.

The safetensors files are written by hand (struct + json + numpy bytes): an 8-byte
little-endian header length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__"},
then the tensors' little-endian bytes in header order, contiguous. Seeds are fixed and torch
runs single-threaded, so a re-run gives byte-identical files.
"""

import argparse
import json
import os

import numpy as np
import torch
from torchvision.models.vision_transformer import VisionTransformer

from _safetensors import write_safetensors

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "vit")

CONFIG = dict(image_size=32, patch_size=8, num_layers=2, num_heads=3, hidden_dim=48, mlp_dim=96, num_classes=10)
BATCH = 4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(1)
    torch.manual_seed(1234)

    model = VisionTransformer(**CONFIG, dropout=0.0, attention_dropout=0.0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()

    x = torch.randn(BATCH, 3, CONFIG["image_size"], CONFIG["image_size"])
    labels = torch.tensor([3, 0, 9, 3], dtype=torch.int64)
    logits = model(x)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    logits = logits.detach()
    grads = [(k, p.grad.numpy().astype(np.float32)) for k, p in model.named_parameters()]

    state = [(k, v.detach().cpu().numpy().astype(np.float32)) for k, v in model.state_dict().items()]
    write_safetensors(os.path.join(args.out, "weights.safetensors"), state,
                      {"format": "pt", "source": "tools/reference/make_vit_fixtures.py"})
    write_safetensors(os.path.join(args.out, "io.safetensors"),
                      [("input", x.numpy()), ("logits", logits.numpy()), ("labels", labels.numpy()),
                       ("loss", loss.detach().numpy().reshape(1))])
    write_safetensors(os.path.join(args.out, "grads.safetensors"), grads)
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(dict(CONFIG, batch=BATCH, torch=torch.__version__,
                       torchvision=__import__("torchvision").__version__), f, indent=2)
        f.write("\n")

    n = sum(v.size for _, v in state)
    print(f"{len(state)} tensors, {n} parameters; logits[0,:4] = {logits[0, :4].tolist()}; loss {loss.item():.6f}")
    for fn in sorted(os.listdir(args.out)):
        print(f"  {fn}: {os.path.getsize(os.path.join(args.out, fn))} bytes")


if __name__ == "__main__":
    main()
