#!/usr/bin/python3
"""Write the PyTorch reference fixtures for OrtFinetune's optimizer tests.

Usage (Debian's Python, which has torch/onnx):
    /usr/bin/python3 tools/reference/make_optimizer_fixtures.py [--out DIR]
        [--cases sgd_momentum,adam,...]

Writes tests/fixtures/optim/<case>/{reference.onnx,case.json} (format:
tools/reference/README.md, section "make_optimizer_fixtures.py"). No model is
involved: a fixed set of float32 parameters gets K random gradients, one per
step, fed to a torch.optim optimizer (optionally after
torch.nn.utils.clip_grad_norm_), with a learning rate that changes each step.
reference.onnx records the initial parameters, every raw gradient, every lr,
and the parameters and optimizer state after every step.

The script checks itself before writing anything:
  * a float64 re-run of torch (same float32 inputs, cast up) agrees with the
    float32 results to 1e-5 of each tensor's max-abs;
  * an independent NumPy float64 implementation of the update formulas in
    the notes agrees with the float64 torch run to 1e-12, so the formulas in
    case.json are exactly what torch does;
and prints how far a NumPy all-float32 implementation (bias corrections and
other scalars in float32, as an ONNX graph would compute them) lands from
the torch float32 results, as a guide for test tolerances.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnx
import onnx.numpy_helper
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _export_common as common  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "optim")

K = 4  # optimizer steps per case

# name -> shape, in "named_parameters" order.
PARAMS = [
    ("fc1.weight", (6, 5)),
    ("fc1.bias", (6,)),
    ("norm.weight", (6,)),
    ("fc2.weight", (3, 6)),
    ("fc2.bias", (3,)),
]
INIT_SEED = 0
GRAD_SEED = 1000  # step t uses GRAD_SEED + t
# Elements of fc2.bias (no-decay group) whose gradient is ~1e-8, the size of
# Adam's eps, so that where eps enters the denominator changes the update
# by O(lr): a misplaced eps is detected, not lost in rounding.
TINY_GRAD = ("fc2.bias", slice(1, None), 1e-8)


def lr_at(base_lr, t):
    """lr for 1-based step t. The base lrs are powers of two, so every lr_t
    is exact in float32: lr/<t> holds exactly the value torch used."""
    return base_lr * (0.5 + 0.25 * t)


# case -> optimizer settings. weight_decay applies to the decay group only
# (parameters with ndim >= 2); the no-decay group (ndim <= 1) has 0.
CASES = {
    "sgd_momentum": dict(optimizer="sgd", base_lr=0.125, max_norm=None,
                         hyper=dict(momentum=0.9, dampening=0.0,
                                    nesterov=False, weight_decay=1e-2)),
    "sgd_nesterov": dict(optimizer="sgd", base_lr=0.125, max_norm=None,
                         hyper=dict(momentum=0.9, dampening=0.0,
                                    nesterov=True, weight_decay=1e-2)),
    "sgd_dampening": dict(optimizer="sgd", base_lr=0.125, max_norm=None,
                          hyper=dict(momentum=0.9, dampening=0.1,
                                     nesterov=False, weight_decay=0.0)),
    "sgd_plain": dict(optimizer="sgd", base_lr=0.125, max_norm=None,
                      hyper=dict(momentum=0.0, dampening=0.0,
                                 nesterov=False, weight_decay=1e-2)),
    "adam": dict(optimizer="adam", base_lr=2.0 ** -4, max_norm=None,
                 hyper=dict(betas=[0.9, 0.999], eps=1e-8, weight_decay=1e-2,
                            amsgrad=False)),
    "adamw": dict(optimizer="adamw", base_lr=2.0 ** -4, max_norm=None,
                  hyper=dict(betas=[0.9, 0.999], eps=1e-8, weight_decay=0.05,
                             amsgrad=False)),
    "adamw_clip": dict(optimizer="adamw", base_lr=2.0 ** -4, max_norm=1.0,
                       hyper=dict(betas=[0.9, 0.999], eps=1e-8,
                                  weight_decay=0.05, amsgrad=False)),
}

COMMON_NOTES = (
    "Each step t=1..K: p.grad = grad/<t>/<name> (raw); {clip}"
    "param_group['lr'] = lr/<t> for both groups; optimizer.step(). "
    "lr_t = {base_lr!r} * (0.5 + 0.25*t), exact in float32. Groups: decay = "
    "parameters with ndim >= 2 (weight_decay as in hyper), no_decay = ndim "
    "<= 1 (weight_decay 0). torch {torch} CPU float32, foreach=False, "
    "maximize=False. fc2.bias elements 1.. have gradients ~1e-8 (the size of "
    "Adam's eps) at every step, so Adam/AdamW updates depend on where eps "
    "goes (SGD barely moves them). step/<t> is the int64 step count t. ")

SGD_NOTES = (
    "SGD per parameter, g = grad (after clipping if any): d = g + wd*p; if "
    "momentum != 0: at t=1 buf = d (a plain copy: dampening is NOT applied "
    "on the first step), later buf = momentum*buf + (1-dampening)*d; then "
    "d = d + momentum*buf if nesterov else d = buf. p = p - lr*d. "
    "state/<t>/<name>/momentum_buffer is buf after step t (absent when "
    "momentum == 0: torch stores None). ")

ADAM_NOTES = (
    "Adam (L2 decay folded into the gradient) per parameter, g = grad "
    "(after clipping if any): g = g + wd*p; m = b1*m + (1-b1)*g; "
    "v = b2*v + (1-b2)*g*g; p = p - (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + "
    "eps) with bc1 = 1 - b1^t, bc2 = 1 - b2^t (t = step count after the "
    "increment, so 1 at the first step). eps is added AFTER dividing "
    "sqrt(v) by sqrt(bc2) (not inside the sqrt, not before the bias "
    "correction). m, v start at zero. torch computes bc1, bc2, lr/bc1 and "
    "sqrt(bc2) in float64 (Python floats) and rounds them to float32 when "
    "they scale a tensor. state/<t>/<name>/exp_avg = m, .../exp_avg_sq = v "
    "after step t. ")

ADAMW_NOTES = (
    "AdamW (decoupled decay) per parameter, g = grad (after clipping if "
    "any): first p = p * (1 - lr*wd) (current step's lr; a no-op for the "
    "no-decay group), then m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g "
    "(g does NOT include any decay term); p = p - (lr/bc1) * m / "
    "(sqrt(v)/sqrt(bc2) + eps), applied to the already-decayed p; bc1 = "
    "1 - b1^t, bc2 = 1 - b2^t, t = 1 at the first step. eps is added AFTER "
    "dividing sqrt(v) by sqrt(bc2). m, v start at zero. torch computes "
    "bc1, bc2, lr/bc1, sqrt(bc2) and 1 - lr*wd in float64 and rounds them "
    "to float32 when they scale a tensor. state/<t>/<name>/exp_avg = m, "
    ".../exp_avg_sq = v after step t. ")

CLIP_NOTES = (
    "Clipping: total = sqrt(sum over ALL parameters (both groups) of "
    "sum(g^2)) of the raw gradients (torch: norm of the stack of "
    "per-tensor 2-norms), recorded as total_norm/<t> (before clipping); "
    "coef = min(max_norm / (total + 1e-6), 1); every gradient is "
    "multiplied by coef (always, even when coef == 1). Clipping happens "
    "before optimizer.step(), so it never sees weight decay (for Adam/SGD "
    "the L2 term wd*p would be added to the CLIPPED gradient; AdamW's "
    "decay does not touch the gradient). total > max_norm at every step "
    "here, so every step clips. The 1e-6 in the coefficient changes the "
    "results by ~1e-8 relative, below float32 test tolerances. ")


# --------------------------------------------------------------------------
# Inputs


def make_inputs():
    g = torch.Generator().manual_seed(INIT_SEED)
    init = {}
    for name, shape in PARAMS:
        if name == "norm.weight":
            v = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            v = 0.5 * torch.randn(shape, generator=g)
        init[name] = v.to(torch.float32)
    grads = []
    for t in range(1, K + 1):
        g = torch.Generator().manual_seed(GRAD_SEED + t)
        scale = 0.3 + 0.1 * t  # global norm ~ 8*scale > 1 at every step
        gt = {}
        for name, shape in PARAMS:
            v = scale * torch.randn(shape, generator=g)
            if name == TINY_GRAD[0]:
                v[TINY_GRAD[1]] *= TINY_GRAD[2] / scale
            gt[name] = v.to(torch.float32)
        grads.append(gt)
    return init, grads


def groups_of(names_shapes):
    decay = [n for n, s in names_shapes if len(s) >= 2]
    no_decay = [n for n, s in names_shapes if len(s) <= 1]
    return decay, no_decay


# --------------------------------------------------------------------------
# torch reference


def run_torch(spec, init, grads, dtype):
    params = {n: torch.nn.Parameter(init[n].clone().to(dtype))
              for n, _ in PARAMS}
    decay, no_decay = groups_of(PARAMS)
    h = spec["hyper"]
    groups = [{"params": [params[n] for n in decay],
               "weight_decay": h["weight_decay"]},
              {"params": [params[n] for n in no_decay],
               "weight_decay": 0.0}]
    lr0 = lr_at(spec["base_lr"], 1)
    if spec["optimizer"] == "sgd":
        opt = torch.optim.SGD(groups, lr=lr0, momentum=h["momentum"],
                              dampening=h["dampening"],
                              nesterov=h["nesterov"], foreach=False)
    else:
        cls = torch.optim.Adam if spec["optimizer"] == "adam" \
            else torch.optim.AdamW
        opt = cls(groups, lr=lr0, betas=tuple(h["betas"]), eps=h["eps"],
                  amsgrad=h["amsgrad"], foreach=False)
    order = [params[n] for n, _ in PARAMS]
    out = []
    for t in range(1, K + 1):
        for n, _ in PARAMS:
            params[n].grad = grads[t - 1][n].clone().to(dtype)
        rec = {}
        if spec["max_norm"] is not None:
            total = torch.nn.utils.clip_grad_norm_(order, spec["max_norm"])
            rec["total_norm"] = total.detach().clone()
        lr = lr_at(spec["base_lr"], t)
        for grp in opt.param_groups:
            grp["lr"] = lr
        opt.step()
        rec["lr"] = lr
        for n, _ in PARAMS:
            p = params[n]
            rec[f"param/{n}"] = p.detach().clone()
            st = opt.state[p]
            for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
                if st.get(key) is not None:
                    rec[f"state/{n}/{key}"] = st[key].detach().clone()
            if "step" in st:
                assert float(st["step"]) == t
        out.append(rec)
    return out


# --------------------------------------------------------------------------
# Independent NumPy implementation of the documented formulas


def run_numpy(spec, init, grads, mode, mistake=None):
    """mode "f64": tensors and scalars in float64 (matches torch's float64
    run). "f32": tensors AND scalars (1 - beta, bias corrections, lr*wd, ...)
    computed in float32, the naive way a float32 ONNX graph would compute
    them. "f32_torch": tensors in float32, scalars computed in float64 and
    rounded to float32 where they meet a tensor, as torch does.
    mistake: one of MISTAKES, a deliberately wrong variant (for the check
    that the fixtures can tell it apart from torch)."""
    bad = mistake or ""
    dtype = np.float64 if mode == "f64" else np.float32
    t32 = np.float32
    if mode == "f32":
        f = c = t32                   # scalar arithmetic in float32
    elif mode == "f32_torch":
        f, c = float, t32             # float64 arithmetic, cast when applied
    else:
        f = c = np.float64
    h = spec["hyper"]
    decay, _ = groups_of(PARAMS)
    p = {n: init[n].numpy().astype(dtype) for n, _ in PARAMS}
    state = {n: {} for n, _ in PARAMS}
    out = []
    for t in range(1, K + 1):
        g = {n: grads[t - 1][n].numpy().astype(dtype) for n, _ in PARAMS}
        rec = {}
        lr = f(lr_at(spec["base_lr"], 1 if bad == "constant_lr" else t))
        rec["lr"] = lr_at(spec["base_lr"], t)
        if spec["max_norm"] is not None:
            total = np.sqrt(sum(np.sum(g[n] * g[n]) for n in g)).astype(dtype)
            coef = np.minimum(dtype(spec["max_norm"]) / (total + dtype(1e-6)),
                              dtype(1.0))
            if bad == "clip_per_tensor":
                g = {n: (v * np.minimum(dtype(spec["max_norm"]) / (
                    np.sqrt(np.sum(v * v)) + dtype(1e-6)), dtype(1.0)))
                    .astype(dtype) for n, v in g.items()}
            elif bad != "no_clip":
                g = {n: (v * coef).astype(dtype) for n, v in g.items()}
            rec["total_norm"] = total
        for n, _ in PARAMS:
            wd = f(h["weight_decay"]) if n in decay \
                or bad == "decay_all_groups" else f(0.0)
            s = state[n]
            if spec["optimizer"] == "sgd":
                d = g[n] + c(wd) * p[n]
                mom = f(h["momentum"])
                if h["momentum"] != 0:
                    if t == 1:
                        s["momentum_buffer"] = d.copy()
                        if bad == "dampen_first_step":
                            s["momentum_buffer"] *= c(f(1) - h["dampening"])
                    else:
                        s["momentum_buffer"] = (
                            c(mom) * s["momentum_buffer"]
                            + c(f(1) - f(h["dampening"])) * d)
                    buf = s["momentum_buffer"]
                    nesterov = h["nesterov"] != (bad == "flip_nesterov")
                    d = d + c(mom) * buf if nesterov else buf
                p[n] = p[n] - c(lr) * d
            else:
                b1, b2 = f(h["betas"][0]), f(h["betas"][1])
                eps = f(h["eps"])
                gn = g[n]
                decoupled = (spec["optimizer"] == "adamw") != \
                    (bad == "swap_l2_decoupled")
                if not decoupled:
                    gn = gn + c(wd) * p[n]
                elif bad != "decay_after_update":
                    p[n] = p[n] * c(f(1) - lr * wd)
                m = s.get("exp_avg", np.zeros_like(gn))
                v = s.get("exp_avg_sq", np.zeros_like(gn))
                m = c(b1) * m + c(f(1) - b1) * gn
                v = c(b2) * v + c(f(1) - b2) * gn * gn
                s["exp_avg"], s["exp_avg_sq"] = m, v
                bc1 = f(1) - b1 ** f(t)
                bc2 = f(1) - b2 ** f(t)
                step_size = lr / bc1
                denom = np.sqrt(v) / c(f(np.sqrt(bc2))) + c(eps)
                if bad == "eps_before_bias_correction":
                    denom = (np.sqrt(v) + c(eps)) / c(f(np.sqrt(bc2)))
                elif bad == "eps_inside_sqrt":
                    denom = np.sqrt(v / c(bc2) + c(eps))
                elif bad == "no_bias_correction":
                    step_size, denom = lr, np.sqrt(v) + c(eps)
                p[n] = p[n] - c(step_size) * m / denom
                if decoupled and bad == "decay_after_update":
                    p[n] = p[n] * c(f(1) - lr * wd)
            rec[f"param/{n}"] = p[n].astype(dtype)
            for key, val in s.items():
                rec[f"state/{n}/{key}"] = np.asarray(val).astype(dtype)
        out.append(rec)
    return out


# Wrong variants of the update that the fixtures must distinguish from torch
# by more than MISTAKE_MARGIN of some parameter's max-abs (so a test with a
# 1e-4 relative tolerance fails on them). case -> mistakes.
MISTAKES = {
    "sgd_momentum": ["constant_lr", "decay_all_groups", "flip_nesterov"],
    "sgd_nesterov": ["flip_nesterov", "decay_all_groups"],
    "sgd_dampening": ["dampen_first_step"],
    "sgd_plain": ["constant_lr", "decay_all_groups"],
    "adam": ["swap_l2_decoupled", "eps_before_bias_correction",
             "eps_inside_sqrt", "no_bias_correction", "constant_lr"],
    "adamw": ["swap_l2_decoupled", "decay_after_update", "decay_all_groups",
              "eps_before_bias_correction", "eps_inside_sqrt"],
    "adamw_clip": ["no_clip", "clip_per_tensor", "decay_after_update"],
}
MISTAKE_MARGIN = 3e-4


def params_only(steps):
    return [{k: v for k, v in rec.items() if k.startswith("param/")}
            for rec in steps]


def as_np(x):
    if isinstance(x, torch.Tensor):
        return x.detach().numpy()
    return np.asarray(x)


def max_rel_diff(a_steps, b_steps):
    """max over steps/keys of max|a-b| / max|b| (b's max-abs per tensor)."""
    worst, where = 0.0, None
    for t, (a, b) in enumerate(zip(a_steps, b_steps), start=1):
        assert set(a) == set(b), (t, sorted(set(a) ^ set(b)))
        for k in a:
            if k == "lr":
                continue
            x = as_np(a[k]).astype(np.float64)
            y = as_np(b[k]).astype(np.float64)
            assert x.shape == y.shape, (t, k, x.shape, y.shape)
            scale = max(np.max(np.abs(y)), 1e-30)
            d = float(np.max(np.abs(x - y)) / scale) if x.size else 0.0
            if d > worst:
                worst, where = d, f"{k} @ step {t}"
    return worst, where


# --------------------------------------------------------------------------
# Writing


def tensor(name, arr):
    # np.array(copy) rather than np.ascontiguousarray, which turns a 0-d
    # array (a scalar) into shape [1].
    return onnx.numpy_helper.from_array(np.array(arr, order="C"), name)


def write_case(name, out_dir, init, grads):
    spec = CASES[name]
    ref32 = run_torch(spec, init, grads, torch.float32)
    ref64 = run_torch(spec, init, grads, torch.float64)
    np64 = run_numpy(spec, init, grads, "f64")
    np32 = run_numpy(spec, init, grads, "f32")
    np32t = run_numpy(spec, init, grads, "f32_torch")

    d_64, w_64 = max_rel_diff(ref32, ref64)
    assert d_64 <= 1e-5, f"{name}: float32 vs float64 torch {d_64:.3g} at {w_64}"
    d_np, w_np = max_rel_diff(np64, ref64)
    assert d_np <= 1e-12, f"{name}: numpy formulas vs torch {d_np:.3g} at {w_np}"
    d_f32, w_f32 = max_rel_diff(np32, ref32)
    assert d_f32 <= 1e-4, f"{name}: numpy float32 vs torch {d_f32:.3g} at {w_f32}"
    d_f32t, w_f32t = max_rel_diff(np32t, ref32)
    assert d_f32t <= 1e-5, \
        f"{name}: numpy torch-style float32 vs torch {d_f32t:.3g} at {w_f32t}"
    mistakes = {}
    for bad in MISTAKES.get(name, []):
        d, _ = max_rel_diff(
            params_only(run_numpy(spec, init, grads, "f64", mistake=bad)),
            params_only(ref64))
        assert d > MISTAKE_MARGIN, f"{name}: cannot detect {bad} ({d:.3g})"
        mistakes[bad] = d
    if spec["max_norm"] is not None:
        for t, rec in enumerate(ref32, start=1):
            assert float(rec["total_norm"]) > spec["max_norm"], \
                f"{name}: step {t} does not clip"
    # Every tensor changes at every step (guards against a silent no-op).
    for t in range(1, K + 1):
        prev = init if t == 1 else {n: ref32[t - 2][f"param/{n}"]
                                    for n, _ in PARAMS}
        for n, _ in PARAMS:
            assert not torch.equal(ref32[t - 1][f"param/{n}"], prev[n]) or \
                (n == TINY_GRAD[0] and spec["optimizer"] == "sgd"), (name, t, n)

    inits = [tensor(f"param/{n}", init[n].numpy()) for n, _ in PARAMS]
    for t, rec in enumerate(ref32, start=1):
        for n, _ in PARAMS:
            inits.append(tensor(f"grad/{t}/{n}", grads[t - 1][n].numpy()))
        inits.append(tensor(f"lr/{t}", np.array(rec["lr"], dtype=np.float32)))
        assert float(np.float32(rec["lr"])) == rec["lr"]
        inits.append(tensor(f"step/{t}", np.array(t, dtype=np.int64)))
        if "total_norm" in rec:
            inits.append(tensor(f"total_norm/{t}",
                                rec["total_norm"].numpy().astype(np.float32)))
        for n, _ in PARAMS:
            inits.append(tensor(f"param/{t}/{n}", rec[f"param/{n}"].numpy()))
        for n, _ in PARAMS:
            for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
                k = f"state/{n}/{key}"
                if k in rec:
                    inits.append(tensor(f"state/{t}/{n}/{key}",
                                        rec[k].numpy()))
    for t_ in inits:
        assert t_.data_type in (onnx.TensorProto.FLOAT,
                                onnx.TensorProto.INT64), t_.name
    graph = onnx.helper.make_graph([], "reference", [], [], initializer=inits)
    model = onnx.helper.make_model(
        graph, producer_name="ortfinetune-reference",
        opset_imports=[onnx.helper.make_opsetid("", common.OPSET)])
    onnx.checker.check_model(model, full_check=True)

    case_dir = os.path.join(out_dir, name)
    os.makedirs(case_dir, exist_ok=True)
    onnx.save(model, os.path.join(case_dir, "reference.onnx"))

    decay, no_decay = groups_of(PARAMS)
    clip = (f"torch.nn.utils.clip_grad_norm_(all parameters, max_norm="
            f"{spec['max_norm']!r}) (returns total_norm/<t>); "
            if spec["max_norm"] is not None else "")
    notes = COMMON_NOTES.format(clip=clip, base_lr=spec["base_lr"],
                                torch=torch.__version__)
    notes += SGD_NOTES if spec["optimizer"] == "sgd" else \
        ADAM_NOTES if spec["optimizer"] == "adam" else ADAMW_NOTES
    if spec["max_norm"] is not None:
        notes += CLIP_NOTES
    notes += ("Float32 vs a float64 torch re-run: max deviation "
              f"{d_64:.2g} of a tensor's max-abs. A float32 implementation "
              f"with float64-computed scalars: {d_f32t:.2g}; with the "
              f"scalars (1-beta, bias corrections, ...) also computed in "
              f"float32: {d_f32:.2g} (worst: {w_f32}).")
    meta = {
        "optimizer": spec["optimizer"],
        "hyper": spec["hyper"],
        "max_norm": spec["max_norm"],
        "steps": K,
        "lr": {"base": spec["base_lr"],
               "schedule": "lr_t = base * (0.5 + 0.25 * t), t = 1..steps",
               "values": [rec["lr"] for rec in ref32]},
        "parameters": [n for n, _ in PARAMS],
        "shapes": {n: list(s) for n, s in PARAMS},
        "decay": decay,
        "no_decay": no_decay,
        "notes": notes,
    }
    with open(os.path.join(case_dir, "case.json"), "w") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    return dict(d_64=d_64, w_64=w_64, d_np=d_np, d_f32=d_f32, w_f32=w_f32,
                d_f32t=d_f32t, w_f32t=w_f32t, mistakes=mistakes,
                ref32=ref32, n_inits=len(inits), case_dir=case_dir)


def summarize(name, info):
    spec = CASES[name]
    print(f"== {name}: {spec['optimizer']} {spec['hyper']} "
          f"max_norm={spec['max_norm']}")
    print(f"  lr: {[r['lr'] for r in info['ref32']]}")
    if spec["max_norm"] is not None:
        print("  total_norm: "
              + ", ".join(f"{float(r['total_norm']):.6f}"
                          for r in info["ref32"]))
    last = info["ref32"][-1]
    print("  |param/" + str(K) + "|: "
          + ", ".join(f"{n}={float(last[f'param/{n}'].norm()):.6f}"
                      for n, _ in PARAMS))
    print(f"  f32 vs f64 torch: {info['d_64']:.2e} ({info['w_64']}); "
          f"numpy f64 formulas vs torch f64: {info['d_np']:.2e}; "
          f"numpy all-f32 vs torch f32: {info['d_f32']:.2e} "
          f"({info['w_f32']}); numpy f32 with float64 scalars vs torch f32: "
          f"{info['d_f32t']:.2e} ({info['w_f32t']})")
    print("  wrong variants (max param deviation / max-abs): "
          + ", ".join(f"{k}={v:.1e}" for k, v in info["mistakes"].items()))
    print(f"  initializers: {info['n_inits']}")
    for fn in sorted(os.listdir(info["case_dir"])):
        sz = os.path.getsize(os.path.join(info["case_dir"], fn))
        assert sz < 200 * 1024, (name, fn, sz)
        print(f"  {fn}: {sz} bytes ({common.human_size(sz)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)

    init, grads = make_inputs()
    for name in args.cases.split(","):
        info = write_case(name, args.out, init, grads)
        summarize(name, info)


if __name__ == "__main__":
    main()
