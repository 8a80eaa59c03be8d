#!/usr/bin/python3
"""A 10-step AdamW trajectory of the ViT parity fixture, for the exact side-by-side check in the tests.

Usage (Debian's Python, torch 1.13 / torchvision 0.14):
    /usr/bin/python3 tools/reference/make_trajectory_fixture.py [--out tests/fixtures/vit]

Starts from tests/fixtures/vit/weights.safetensors (make_vit_fixtures.py) in train mode (dropout 0) and
trains 10 full steps (zero_grad, forward, cross-entropy, backward, AdamW step) on the batch ortfinetune's
benchmark uses (bench/peers/torch_vit.py: pixel n of the flattened NCHW batch = sin(0.37 n), label b =
(31 b + 7) mod classes), with ortfinetune's parameter groups (no weight decay for tensors of fewer than 2
dimensions). Writes trajectory.json: the settings and the loss of every step (before its update).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from torchvision.models.vision_transformer import VisionTransformer

sys.path.insert(0, os.path.dirname(__file__))
from _safetensors import read_safetensors  # noqa: E402
from make_vit_fixtures import CONFIG, DEFAULT_OUT  # noqa: E402

SETTINGS = dict(batch=4, steps=10, lr=1e-3, weight_decay=0.05, betas=[0.9, 0.999], eps=1e-8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = VisionTransformer(**CONFIG, dropout=0.0, attention_dropout=0.0)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in read_safetensors(os.path.join(args.out, "weights.safetensors")).items()})
    model.train()
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=SETTINGS["lr"],
                            betas=tuple(SETTINGS["betas"]), eps=SETTINGS["eps"], weight_decay=SETTINGS["weight_decay"])
    b, s = SETTINGS["batch"], CONFIG["image_size"]
    n = torch.arange(b * 3 * s * s, dtype=torch.float64)
    x = torch.sin(0.37 * n).to(torch.float32).reshape(b, 3, s, s)
    y = (31 * torch.arange(b, dtype=torch.int64) + 7) % CONFIG["num_classes"]
    losses = []
    for _ in range(SETTINGS["steps"]):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with open(os.path.join(args.out, "trajectory.json"), "w") as f:
        json.dump(dict(SETTINGS, losses=losses, torch=torch.__version__), f, indent=2)
        f.write("\n")
    print("losses:", " ".join(f"{v:.6f}" for v in losses))


if __name__ == "__main__":
    main()
