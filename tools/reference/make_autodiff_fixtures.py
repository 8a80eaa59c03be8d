#!/usr/bin/python3
"""Write the PyTorch reference fixtures for OrtFinetune's autodiff tests.

Usage (Debian's Python, which has torch/torchvision/onnx):
    /usr/bin/python3 tools/reference/make_autodiff_fixtures.py [--out DIR]
        [--cases mlp,vit_small,...] [--dynamic-check DIR]

Writes tests/fixtures/autodiff/<case>/{model.onnx,reference.onnx,case.json}
(format: tools/reference/README.md). With --dynamic-check DIR it also exports
vit_small with a dynamic batch axis into DIR (not a fixture) and prints the op
types that differ from the fixed-batch export.
"""

import argparse
import copy
import json
import os
import sys

import numpy as np
import onnx
import onnx.numpy_helper
import torch
import torch.nn as nn
import torchvision
from torchvision.models.resnet import BasicBlock, conv1x1
from torchvision.models.vision_transformer import VisionTransformer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _export_common as common  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "autodiff")
NUM_CLASSES = 10


# --------------------------------------------------------------------------
# Models


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(48, 32)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(32, 32)
        self.act2 = nn.GELU()
        self.fc3 = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))


class SmallResNet(nn.Module):
    """torchvision ResNet layout with tiny widths, built from torchvision's
    own BasicBlock / conv1x1 so parameter names match torchvision's
    (conv1, bn1, layer1.0.conv1, layer2.0.downsample.0, fc, ...)."""

    def __init__(self, widths=(8, 16), num_classes=NUM_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1,
                               padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(widths[0], widths[0]))
        downsample = nn.Sequential(conv1x1(widths[0], widths[1], stride=2),
                                   nn.BatchNorm2d(widths[1]))
        self.layer2 = nn.Sequential(
            BasicBlock(widths[0], widths[1], stride=2, downsample=downsample))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[1], num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def perturb_(model, std):
    """Add N(0, std) noise to every parameter so that no parameter is all
    zeros/ones (torchvision zero-initialises the ViT head and class token,
    which would make almost every gradient exactly zero)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)


def perturb_bn_(model):
    """Non-trivial BN affine parameters and running statistics, so the
    running-stat update (momentum) is exercised from a non-default start."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)


def labels_for(batch, gen_seed):
    g = torch.Generator().manual_seed(gen_seed)
    return torch.randint(0, NUM_CLASSES, (batch,), generator=g,
                         dtype=torch.int64)


def case_mlp(reduction="mean", smoothing=0.0, ignored=()):
    torch.manual_seed(1)
    model = MLP()
    x = torch.randn(8, 48)
    y = labels_for(8, 101)
    for i in ignored:
        y[i] = -100
    return dict(model=model, input=x, labels=y, training=True,
                loss=dict(type="cross_entropy", reduction=reduction,
                          label_smoothing=smoothing, ignore_index=-100))


def case_vit_small():
    torch.manual_seed(2)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                              num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=NUM_CLASSES, dropout=0.0,
                              attention_dropout=0.0)
    perturb_(model, 0.05)
    x = torch.randn(4, 3, 32, 32)
    y = labels_for(4, 102)
    return dict(model=model, input=x, labels=y, training=True,
                loss=dict(type="cross_entropy", reduction="mean",
                          label_smoothing=0.0, ignore_index=-100))


def case_resnet_small():
    torch.manual_seed(3)
    model = SmallResNet()
    perturb_bn_(model)
    x = torch.randn(4, 3, 16, 16)
    y = labels_for(4, 103)
    return dict(model=model, input=x, labels=y, training=True,
                loss=dict(type="cross_entropy", reduction="mean",
                          label_smoothing=0.0, ignore_index=-100))


CASES = {
    "mlp": lambda: case_mlp(),
    "mlp_smoothing": lambda: case_mlp(smoothing=0.1, ignored=(2, 5)),
    "mlp_sum": lambda: case_mlp(reduction="sum"),
    "vit_small": case_vit_small,
    "resnet_small": case_resnet_small,
}

NOTES = {
    "mlp": "Linear(48,32)-ReLU-Linear(32,32)-GELU(exact, erf)-Linear(32,10); "
           "batch 8; seed 1.",
    "mlp_smoothing": "Same weights/input as mlp; CrossEntropyLoss("
                     "label_smoothing=0.1, ignore_index=-100) with labels[2] "
                     "and labels[5] set to -100 (mean over the 6 "
                     "non-ignored rows).",
    "mlp_sum": "Same weights/input/labels as mlp; CrossEntropyLoss("
               "reduction='sum').",
    "vit_small": "torchvision VisionTransformer(image_size=32, patch_size=8, "
                 "num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, "
                 "num_classes=10, dropout=0, attention_dropout=0) in train() "
                 "mode; every parameter got N(0,0.05) noise after "
                 "torchvision's init (whose head/class_token are zero). "
                 "Dropout nodes have ratio 0 and training_mode=True.",
    "resnet_small": "Conv(3,8,k3,s1,p1,no bias)+BN+ReLU+MaxPool(3,2,1), "
                    "layer1=BasicBlock(8,8), layer2=BasicBlock(8,16,stride 2, "
                    "downsample conv1x1+BN), AdaptiveAvgPool, flatten, "
                    "Linear(16,10); torchvision BasicBlock/conv1x1; train() "
                    "mode: BatchNormalization(training_mode=1, "
                    "momentum=0.9 = 1 - torch momentum 0.1, epsilon=1e-5) "
                    "normalises with the biased batch variance. BN "
                    "weight/bias/running stats randomised before the export. "
                    "running/<buffer> holds torch's running_mean/running_var "
                    "after ONE forward: running_var is updated with the "
                    "UNBIASED batch variance (n/(n-1) times the biased one, "
                    "n = N*H*W), which differs from the ONNX spec's "
                    "BatchNormalization outputs (biased variance; also what "
                    "onnxruntime's CPU kernel computes): those are in "
                    "running_onnx/<buffer>. num_batches_tracked is a torch "
                    "buffer that the ONNX graph does not use.",
}


# --------------------------------------------------------------------------
# Writing


def tensor(name, arr):
    # np.array(copy) rather than np.ascontiguousarray, which turns a 0-d
    # array (the scalar loss) into shape [1].
    return onnx.numpy_helper.from_array(np.array(arr, order="C"), name)


def run_reference(case):
    """PyTorch forward + loss + autograd on the (un-exported) model."""
    model = case["model"]
    model.train(case["training"])
    model.zero_grad(set_to_none=True)
    # Capture each BatchNorm's input and pre-forward running stats to also
    # compute the running statistics the ONNX spec (and onnxruntime's CPU
    # kernel) produce: biased batch variance instead of torch's unbiased.
    bn_inputs, hooks = {}, []
    for mname, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            bn_inputs[mname] = [m, None, m.running_mean.clone(),
                                m.running_var.clone()]
            hooks.append(m.register_forward_pre_hook(
                lambda mod, inp, key=mname: bn_inputs[key].__setitem__(
                    1, inp[0].detach().clone())))
    lc = case["loss"]
    loss_fn = nn.CrossEntropyLoss(reduction=lc["reduction"],
                                  label_smoothing=lc["label_smoothing"],
                                  ignore_index=lc["ignore_index"])
    logits = model(case["input"])
    for h in hooks:
        h.remove()
    loss = loss_fn(logits, case["labels"])
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"no gradient for {name}"
            grads[name] = p.grad.detach().numpy().astype(np.float32)
    running = {}
    for name, b in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            running[name] = b.detach().numpy().astype(np.float32).copy()
    running_onnx = {}
    for mname, (m, x, old_mean, old_var) in bn_inputs.items():
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        onnx_momentum = 1.0 - m.momentum  # the exported attribute
        prefix = f"{mname}." if mname else ""
        running_onnx[prefix + "running_mean"] = (
            old_mean * onnx_momentum + mean * (1 - onnx_momentum)).numpy()
        running_onnx[prefix + "running_var"] = (
            old_var * onnx_momentum + var * (1 - onnx_momentum)).numpy()
    return logits.detach(), loss.detach(), grads, running, running_onnx


def restore_buffers(model_proto, snapshot):
    """The exporter traces the model in train() mode, which updates the BN
    running statistics before it reads the state dict: put the pre-forward
    values back so model.onnx holds the state the reference started from."""
    fixed = []
    for t in model_proto.graph.initializer:
        if t.name in snapshot:
            want = snapshot[t.name]
            have = onnx.numpy_helper.to_array(t)
            if have.shape != want.shape or not np.array_equal(have, want):
                t.CopyFrom(tensor(t.name, want.astype(have.dtype)))
                fixed.append(t.name)
    return fixed


def write_case(name, out_dir, dynamic_batch=False, model_path=None):
    case = CASES[name]()
    model = case["model"]
    model.train(case["training"])
    snapshot = {k: v.detach().clone().numpy()
                for k, v in model.state_dict().items()}

    case_dir = os.path.join(out_dir, name)
    os.makedirs(case_dir, exist_ok=True)
    model_path = model_path or os.path.join(case_dir, "model.onnx")

    # Export a deep copy so the tracing forward does not touch the model
    # the reference runs on.
    export_model = copy.deepcopy(model)
    common.export_training_model(export_model, case["input"].clone(),
                                 model_path, dynamic_batch=dynamic_batch)
    proto = onnx.load(model_path)
    restored = restore_buffers(proto, snapshot)
    if restored:
        onnx.save(proto, model_path)
    buffers, extra_inits = common.check_names(proto, model)
    onnx.checker.check_model(onnx.load(model_path), full_check=True)

    if dynamic_batch:
        return proto, None

    logits, loss, grads, running, running_onnx = run_reference(case)
    # Sanity: the reference forward starts from the exported state.
    inits = {t.name: onnx.numpy_helper.to_array(t)
             for t in proto.graph.initializer}
    for k, v in snapshot.items():
        if k in inits:
            assert np.array_equal(inits[k], v), k

    ref = [tensor("input", case["input"].numpy().astype(np.float32)),
           tensor("labels", case["labels"].numpy().astype(np.int64)),
           tensor("loss", np.array(loss.item(), dtype=np.float32)),
           tensor("logits", logits.numpy().astype(np.float32))]
    for pname, g in grads.items():
        ref.append(tensor(f"grad/{pname}", g))
    if case["training"]:
        for bname, v in running.items():
            ref.append(tensor(f"running/{bname}", v))
        for bname, v in running_onnx.items():
            ref.append(tensor(f"running_onnx/{bname}",
                              v.astype(np.float32)))
    graph = onnx.helper.make_graph([], "reference", [], [], initializer=ref)
    ref_model = onnx.helper.make_model(
        graph, producer_name="ortfinetune-reference",
        opset_imports=[onnx.helper.make_opsetid("", common.OPSET)])
    onnx.save(ref_model, os.path.join(case_dir, "reference.onnx"))

    notes = NOTES[name]
    if restored:
        notes += (" model.onnx running stats were reset to their pre-forward "
                  "values after export (the exporter's tracing forward had "
                  "updated them).")
    nbt = [b for b in buffers if b.endswith("num_batches_tracked")]
    if nbt:
        in_onnx = [b for b in nbt if buffers[b]["initializer"]]
        notes += (f" num_batches_tracked buffers: {len(nbt)}, present as "
                  f"ONNX initializers: {len(in_onnx)}.")
    if extra_inits:
        notes += (" Extra initializers (not parameters/buffers): "
                  + ", ".join(extra_inits) + ".")
    meta = {
        "loss": case["loss"],
        "input": "input",
        "output": "logits",
        "labels": "labels",
        "parameters": [n for n, p in model.named_parameters()
                       if p.requires_grad],
        "buffers": [n for n in buffers],
        "training_mode": bool(case["training"]),
        "notes": notes,
    }
    with open(os.path.join(case_dir, "case.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return proto, dict(loss=loss.item(), restored=restored, buffers=buffers,
                       extra=extra_inits,
                       nparams=sum(p.numel() for p in model.parameters()))


def summarize(name, proto, info, case_dir):
    inv = common.op_inventory(proto.graph)
    print(f"== {name}")
    print("  ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(inv.items())))
    for line in common.op_details(proto.graph):
        print("  " + line)
    print(f"  opsets: " + ", ".join(f"{o.domain or 'ai.onnx'}={o.version}"
                                     for o in proto.opset_import))
    if info:
        print(f"  parameters: {info['nparams']}  loss: {info['loss']:.6f}")
        if info["restored"]:
            print(f"  restored pre-forward buffers: {info['restored']}")
        if info["extra"]:
            print(f"  extra initializers: {info['extra']}")
        for b, d in info["buffers"].items():
            print(f"  buffer {b}: {d}")
    unused = common.unused_outputs(proto.graph)
    if unused:
        print(f"  unread node outputs: {unused}")
    if case_dir:
        for fn in sorted(os.listdir(case_dir)):
            sz = os.path.getsize(os.path.join(case_dir, fn))
            print(f"  {fn}: {sz} bytes ({common.human_size(sz)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--dynamic-check", metavar="DIR",
                    help="also export vit_small with a dynamic batch axis "
                         "into DIR and compare op types")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    fixed_protos = {}
    for name in args.cases.split(","):
        proto, info = write_case(name, args.out)
        fixed_protos[name] = proto
        summarize(name, proto, info, os.path.join(args.out, name))

    if args.dynamic_check:
        os.makedirs(args.dynamic_check, exist_ok=True)
        path = os.path.join(args.dynamic_check, "vit_small_dynamic.onnx")
        proto, _ = write_case("vit_small", args.dynamic_check,
                              dynamic_batch=True, model_path=path)
        summarize("vit_small (dynamic batch)", proto, None, None)
        fixed = fixed_protos.get("vit_small")
        if fixed is not None:
            a = common.op_inventory(fixed.graph)
            b = common.op_inventory(proto.graph)
            print("== vit_small op counts fixed -> dynamic (changed only)")
            for k in sorted(set(a) | set(b)):
                if a[k] != b[k]:
                    print(f"  {k}: {a[k]} -> {b[k]}")


if __name__ == "__main__":
    main()
