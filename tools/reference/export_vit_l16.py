#!/usr/bin/python3
"""Export torchvision vit_l_16 (random init, no weights downloaded) in
training mode for OrtFinetune's benchmark.

Usage (Debian's Python):
    /usr/bin/python3 tools/reference/export_vit_l16.py --output /tmp/vit_l16.onnx \
        [--batch N] [--num-classes 1000] [--seed 0] [--ops-file PATH]

The file is about 1.2 GB: never write it into the repository. Same export
settings as the fixtures (opset 17, TrainingMode.TRAINING, no constant
folding, parameters as initializers named like named_parameters()), except
that the first axis of `input` and `logits` is dynamic and named `batch`
(--batch only sets the example batch used for tracing).
"""

import argparse
import os
import sys
import time

import onnx
import torch
import torchvision.models as tvm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _export_common as common  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--output", required=True, help="path of the .onnx file")
    ap.add_argument("--batch", type=int, default=1,
                    help="example batch size used for tracing (default 1)")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--arch", default="vit_l_16", choices=["vit_b_16", "vit_l_16", "vit_h_14", "vit_b_32", "vit_l_32"],
                    help="torchvision architecture (default vit_l_16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ops-file", default=None,
                    help="also write the op-type inventory to this file")
    args = ap.parse_args()

    out = os.path.abspath(args.output)
    if out == REPO or out.startswith(REPO + os.sep):
        raise SystemExit(f"refusing to write {out} inside the repository "
                         f"({REPO}); the model is ~1.2 GB")

    torch.manual_seed(args.seed)
    t0 = time.time()
    model = getattr(tvm, args.arch)(weights=None, num_classes=args.num_classes)
    model.train()
    x = torch.randn(args.batch, 3, 224, 224)
    nparams = sum(p.numel() for p in model.parameters())
    t1 = time.time()
    print(f"built {args.arch}: {nparams} parameters in {t1 - t0:.1f}s",
          flush=True)

    common.export_training_model(model, x, out, dynamic_batch=True)
    t2 = time.time()
    size = os.path.getsize(out)
    print(f"exported {out}: {size} bytes ({common.human_size(size)}) "
          f"in {t2 - t1:.1f}s", flush=True)

    proto = onnx.load(out)
    # Parameter values are compared as well: the exporter traced the model
    # once, which does not change parameters (no BatchNorm in ViT).
    buffers, extra = common.check_names(proto, model)
    onnx.checker.check_model(out)  # path form: works above 2 GB too
    t3 = time.time()
    print(f"name check + onnx.checker OK in {t3 - t2:.1f}s", flush=True)

    inv = common.op_inventory(proto.graph)
    lines = [
        f"# torchvision {args.arch}(weights=None, num_classes="
        f"{args.num_classes}), torch {torch.__version__}, opset "
        f"{common.OPSET}, TrainingMode.TRAINING, do_constant_folding=False,",
        f"# dynamic batch axis 'batch' on input/logits; {nparams} "
        f"parameters, {len(proto.graph.initializer)} initializers, "
        f"{len(proto.graph.node)} nodes, {size} bytes",
        f"# opsets: " + ", ".join(f"{o.domain or 'ai.onnx'}={o.version}"
                                  for o in proto.opset_import),
        "",
        "## op type counts",
    ]
    lines += [f"{k} {v}" for k, v in sorted(inv.items())]
    lines += ["", "## distinct (op, attributes, #inputs, #outputs, "
                  "constant inputs) with counts"]
    lines += common.op_details(proto.graph)
    unused = common.unused_outputs(proto.graph)
    lines += ["", f"## node outputs nothing reads: {len(unused)}"]
    kinds = {}
    for u in unused:
        op = u.split(":", 1)[0]
        kinds[op] = kinds.get(op, 0) + 1
    lines += [f"{k} {v}" for k, v in sorted(kinds.items())]
    if extra:
        lines += ["", "## extra initializers (not parameters/buffers)"]
        lines += extra
    text = "\n".join(lines) + "\n"
    print(text)
    if args.ops_file:
        with open(args.ops_file, "w") as f:
            f.write(text)
    print(f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
