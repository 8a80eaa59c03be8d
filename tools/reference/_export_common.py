"""Shared helpers for the reference-fixture scripts.

Run with Debian's Python (/usr/bin/python3: torch 1.13, torchvision 0.14,
onnx 1.12). Nothing here downloads anything.
"""

import collections
import io
import os

import numpy as np
import onnx
import onnx.numpy_helper
import torch

OPSET = 17


def export_training_model(model, example_input, path, dynamic_batch=False):
    """Export `model` with the settings every fixture/benchmark model uses.

    Training-mode export (BatchNormalization keeps training_mode=1, Dropout
    keeps its training_mode input), no constant folding, parameters stored as
    initializers (not graph inputs), input `input`, output `logits`.
    With dynamic_batch the first axis of input and output is named `batch`.
    """
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    torch.onnx.export(
        model,
        (example_input,),
        path,
        opset_version=OPSET,
        training=torch.onnx.TrainingMode.TRAINING,
        do_constant_folding=False,
        export_params=True,
        keep_initializers_as_inputs=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes=dynamic_axes,
    )


def _consumers(graph):
    used = collections.Counter()
    for node in graph.node:
        for name in node.input:
            if name:
                used[name] += 1
        # Subgraphs (If/Loop) would also consume names; none are expected,
        # but count them so the check is not fooled.
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                used.update(_consumers(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    used.update(_consumers(g))
    return used


def check_names(model_proto, torch_model, check_values=True):
    """Fail loudly unless every trainable parameter is an initializer with
    exactly its named_parameters() name, the same shape (and values), and is
    consumed by at least one node. Returns a dict describing the buffers.

    Loading external data is not needed: values are only compared when the
    initializer holds its data inline.
    """
    graph = model_proto.graph
    inits = {t.name: t for t in graph.initializer}
    graph_inputs = {i.name for i in graph.input}
    used = _consumers(graph)
    problems = []
    for name, p in torch_model.named_parameters():
        if not p.requires_grad:
            continue
        t = inits.get(name)
        if t is None:
            problems.append(f"parameter {name!r} is not an initializer "
                            f"(renamed or folded by the exporter)")
            continue
        if name in graph_inputs:
            problems.append(f"parameter {name!r} is also a graph input")
        if list(t.dims) != list(p.shape):
            problems.append(f"parameter {name!r}: shape {list(t.dims)} != "
                            f"torch {list(p.shape)}")
        if t.data_type != onnx.TensorProto.FLOAT:
            problems.append(f"parameter {name!r}: data type {t.data_type} "
                            f"is not FLOAT")
        if check_values and t.data_location != onnx.TensorProto.EXTERNAL:
            a = onnx.numpy_helper.to_array(t)
            if not np.array_equal(a, p.detach().cpu().numpy()):
                problems.append(f"parameter {name!r}: initializer values "
                                f"differ from torch")
        if used[name] == 0:
            problems.append(f"parameter {name!r} is an initializer no node "
                            f"reads (a renamed copy may be used instead)")
    buffers = {}
    for name, b in torch_model.named_buffers():
        buffers[name] = {
            "initializer": name in inits,
            "used": used[name] > 0,
            "shape": list(b.shape),
            "dtype": str(b.dtype).replace("torch.", ""),
        }
        if name.endswith(("running_mean", "running_var")):
            if name not in inits:
                problems.append(f"buffer {name!r} is not an initializer")
            elif used[name] == 0:
                problems.append(f"buffer {name!r} is not read by any node")
    param_names = {n for n, _ in torch_model.named_parameters()}
    extra = [n for n in inits if n not in param_names and n not in buffers]
    if problems:
        raise SystemExit("ONNX export name check FAILED:\n  "
                         + "\n  ".join(problems))
    return buffers, extra


def op_inventory(graph):
    """Counter of 'domain::OpType' (domain omitted for the default one)."""
    c = collections.Counter()
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else \
            f"{node.domain}::{node.op_type}"
        c[key] += 1
    return c


def _attr_value(attr):
    v = onnx.helper.get_attribute_value(attr)
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, onnx.TensorProto):
        a = onnx.numpy_helper.to_array(v)
        return a.tolist() if a.size <= 8 else f"tensor{list(a.shape)}"
    if isinstance(v, list):
        return [x.decode() if isinstance(x, bytes) else x for x in v]
    return v


def _const_values(graph):
    """name -> small python value for Constant nodes and small initializers."""
    vals = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            a = node.attribute[0]
            if a.name == "value":
                arr = onnx.numpy_helper.to_array(a.t)
                vals[node.output[0]] = (arr.tolist() if arr.size <= 8
                                        else f"tensor{list(arr.shape)}")
            else:
                vals[node.output[0]] = _attr_value(a)
    for t in graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and \
                np.prod(t.dims, dtype=np.int64) <= 8:
            vals[t.name] = onnx.numpy_helper.to_array(t).tolist()
    return vals


def op_details(graph):
    """Distinct (op, attributes, #inputs, #outputs, constant inputs) per
    op type, with counts; for the inventory files and the summaries."""
    consts = _const_values(graph)
    seen = collections.Counter()
    for node in graph.node:
        if node.op_type == "Constant":
            continue
        attrs = tuple(sorted((a.name, repr(_attr_value(a)))
                             for a in node.attribute))
        const_in = tuple(
            (i, repr(consts[n])) for i, n in enumerate(node.input)
            if n in consts and node.op_type in (
                "Dropout", "Reshape", "Transpose", "Unsqueeze", "Squeeze",
                "Slice", "Split", "Gather", "Expand", "Concat", "Pow", "Div",
                "Mul", "Add", "Sub", "Flatten", "ReduceMean", "Range",
                "ConstantOfShape", "Equal", "Where", "Cast", "Softmax",
                "MatMul", "Sqrt"))
        key = (node.op_type, attrs, len(node.input),
               sum(1 for o in node.output if o), len(node.output), const_in)
        seen[key] += 1
    lines = []
    for (op, attrs, nin, nout_used, nout, const_in), n in sorted(
            seen.items(), key=lambda kv: (kv[0][0], -kv[1])):
        a = ", ".join(f"{k}={v}" for k, v in attrs) or "-"
        c = ", ".join(f"in{i}={v}" for i, v in const_in)
        lines.append(f"  {op} x{n}: attrs[{a}] inputs={nin} outputs={nout}"
                     + (f" const[{c}]" if c else ""))
    return lines


def unused_outputs(graph):
    """Node outputs that nothing reads and that are not graph outputs."""
    used = _consumers(graph)
    gouts = {o.name for o in graph.output}
    res = []
    for node in graph.node:
        for o in node.output:
            if o and used[o] == 0 and o not in gouts:
                res.append(f"{node.op_type}:{o}")
    return res


def human_size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024.0
