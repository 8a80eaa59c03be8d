#!/usr/bin/python3
"""Write the checkpoint-import fixtures (torchvision, Hugging Face and timm naming) for the model plugin tests.

Usage (Debian's Python: torch 1.13 / torchvision 0.14; transformers and timm are not needed):
    /usr/bin/python3 tools/reference/make_weight_fixtures.py [--out DIR]

One small torchvision VisionTransformer (image 16, patch 4, 2 layers, 2 heads, hidden 32, mlp 48,
5 classes) with seeded random weights is written under each library's parameter names, by renaming
(and, for Hugging Face, splitting in_proj into query/key/value) its state_dict:

  <naming>[-sharded][-fp16]/   naming = torchvision | hf | timm
      model.safetensors                      (unsharded), or
      model-0000K-of-00002.safetensors + model.safetensors.index.json (sharded, HF's layout)
      config.json                            hf: HF ViTConfig keys; timm: timm hub config with model_args
  hf-bf16/                                   HF naming, bfloat16 tensors
  hf-vitmodel/                               HF ViTModel (no "vit." prefix, pooler, no classifier)
  io.safetensors
      input (3, 3, 16, 16); logits (3, 5): torchvision eval-mode logits, LayerNorm eps 1e-6;
      logits_hf: the same weights with eps 1e-12 (HF's ViT); logits_fp16 / logits_hf_fp16 / logits_hf_bf16:
      weights rounded to float16 / bfloat16 first (what such a checkpoint holds), computed in float32;
      input24 (3, 3, 24, 24), logits24: the model at image 24 with the position table interpolated;
      pos_grid6 (1, 37, 32), pos_grid3 (1, 10, 32): the position table resampled to a 6x6 / 3x3 grid by
      torch.nn.functional.interpolate(mode="bicubic", align_corners=False), class token kept.

The names follow each library's documented module layout (HF modeling_vit: vit.embeddings.*,
vit.encoder.layer.N.attention.attention.{query,key,value}, attention.output.dense, intermediate.dense,
output.dense, layernorm_before/after, vit.layernorm, classifier; timm vision_transformer: cls_token,
pos_embed, patch_embed.proj, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}, norm, head).
Every renamed file is mapped back to torchvision names here and loaded with load_state_dict(strict=True)
into a fresh torchvision model, whose logits must equal the reference (a check of the maps themselves).
Seeds are fixed and torch runs single-threaded, so a re-run gives byte-identical files.
"""

import argparse
import json
import os
import shutil
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.vision_transformer import VisionTransformer

from _safetensors import read_safetensors, write_safetensors

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO, "tests", "fixtures", "weights")
CONFIG = dict(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=48, num_classes=5)
BATCH = 3


def make_model(eps=1e-6, image_size=CONFIG["image_size"]):
    cfg = dict(CONFIG, image_size=image_size)
    return VisionTransformer(**cfg, dropout=0.0, attention_dropout=0.0, norm_layer=partial(torch.nn.LayerNorm, eps=eps)).eval()


# ---- name maps: torchvision state_dict -> each library (and back, for the load_state_dict check) ----

def tv_layer(i):
    return f"encoder.layers.encoder_layer_{i}."


def to_hf(sd, layers, prefix="vit.", head=True, pooler=False):
    d = CONFIG["hidden_dim"]
    out = [(prefix + "embeddings.cls_token", sd["class_token"]),
           (prefix + "embeddings.position_embeddings", sd["encoder.pos_embedding"]),
           (prefix + "embeddings.patch_embeddings.projection.weight", sd["conv_proj.weight"]),
           (prefix + "embeddings.patch_embeddings.projection.bias", sd["conv_proj.bias"])]
    for i in range(layers):
        t, h = tv_layer(i), f"{prefix}encoder.layer.{i}."
        w, b = sd[t + "self_attention.in_proj_weight"], sd[t + "self_attention.in_proj_bias"]
        for j, qkv in enumerate(["query", "key", "value"]):
            out.append((h + f"attention.attention.{qkv}.weight", w[j * d:(j + 1) * d]))
            out.append((h + f"attention.attention.{qkv}.bias", b[j * d:(j + 1) * d]))
        out += [(h + "attention.output.dense.weight", sd[t + "self_attention.out_proj.weight"]),
                (h + "attention.output.dense.bias", sd[t + "self_attention.out_proj.bias"]),
                (h + "intermediate.dense.weight", sd[t + "mlp.0.weight"]),
                (h + "intermediate.dense.bias", sd[t + "mlp.0.bias"]),
                (h + "output.dense.weight", sd[t + "mlp.3.weight"]),
                (h + "output.dense.bias", sd[t + "mlp.3.bias"]),
                (h + "layernorm_before.weight", sd[t + "ln_1.weight"]),
                (h + "layernorm_before.bias", sd[t + "ln_1.bias"]),
                (h + "layernorm_after.weight", sd[t + "ln_2.weight"]),
                (h + "layernorm_after.bias", sd[t + "ln_2.bias"])]
    out += [(prefix + "layernorm.weight", sd["encoder.ln.weight"]), (prefix + "layernorm.bias", sd["encoder.ln.bias"])]
    if pooler:
        rng = np.random.RandomState(7)
        out += [(prefix + "pooler.dense.weight", rng.randn(d, d).astype(np.float32) * 0.05),
                (prefix + "pooler.dense.bias", np.zeros(d, np.float32))]
    if head:
        out += [("classifier.weight", sd["heads.head.weight"]), ("classifier.bias", sd["heads.head.bias"])]
    return out


def from_hf(named, layers):
    m = dict(named)
    sd = {"class_token": m["vit.embeddings.cls_token"], "encoder.pos_embedding": m["vit.embeddings.position_embeddings"],
          "conv_proj.weight": m["vit.embeddings.patch_embeddings.projection.weight"],
          "conv_proj.bias": m["vit.embeddings.patch_embeddings.projection.bias"],
          "encoder.ln.weight": m["vit.layernorm.weight"], "encoder.ln.bias": m["vit.layernorm.bias"],
          "heads.head.weight": m["classifier.weight"], "heads.head.bias": m["classifier.bias"]}
    for i in range(layers):
        t, h = tv_layer(i), f"vit.encoder.layer.{i}."
        sd[t + "self_attention.in_proj_weight"] = np.concatenate([m[h + f"attention.attention.{x}.weight"] for x in ("query", "key", "value")])
        sd[t + "self_attention.in_proj_bias"] = np.concatenate([m[h + f"attention.attention.{x}.bias"] for x in ("query", "key", "value")])
        for a, b in [("self_attention.out_proj", "attention.output.dense"), ("mlp.0", "intermediate.dense"), ("mlp.3", "output.dense"),
                     ("ln_1", "layernorm_before"), ("ln_2", "layernorm_after")]:
            sd[t + a + ".weight"], sd[t + a + ".bias"] = m[h + b + ".weight"], m[h + b + ".bias"]
    return sd


TIMM_LAYER = [("ln_1", "norm1"), ("self_attention.in_proj_", "attn.qkv."), ("self_attention.out_proj", "attn.proj"),
              ("ln_2", "norm2"), ("mlp.0", "mlp.fc1"), ("mlp.3", "mlp.fc2")]
TIMM_TOP = [("class_token", "cls_token"), ("encoder.pos_embedding", "pos_embed"), ("conv_proj.", "patch_embed.proj."),
            ("encoder.ln.", "norm."), ("heads.head.", "head.")]


def timm_name(k):
    for a, b in TIMM_TOP:
        if k.startswith(a):
            return b + k[len(a):]
    i = int(k.split(".")[2][len("encoder_layer_"):])
    rest = k[len(tv_layer(i)):]
    for a, b in TIMM_LAYER:
        if rest.startswith(a):
            return f"blocks.{i}." + b + rest[len(a):]
    raise KeyError(k)


def to_timm(sd, layers):
    return [(timm_name(k), v) for k, v in sd.items()]


def from_timm(named, layers):
    inv = {timm_name(k): k for k in make_model().state_dict().keys()}
    return {inv[k]: v for k, v in named}


def to_tv(sd, layers):
    return list(sd.items())


def from_tv(named, layers):
    return dict(named)


def hf_config(eps):
    return {"architectures": ["ViTForImageClassification"], "model_type": "vit", "hidden_size": CONFIG["hidden_dim"],
            "num_hidden_layers": CONFIG["num_layers"], "num_attention_heads": CONFIG["num_heads"],
            "intermediate_size": CONFIG["mlp_dim"], "hidden_act": "gelu", "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02, "layer_norm_eps": eps,
            "image_size": CONFIG["image_size"], "patch_size": CONFIG["patch_size"], "num_channels": 3, "qkv_bias": True,
            "id2label": {str(i): f"class_{i}" for i in range(CONFIG["num_classes"])},
            "label2id": {f"class_{i}": i for i in range(CONFIG["num_classes"])}}


def timm_config():
    return {"architecture": "vit_custom_patch4_16", "num_classes": CONFIG["num_classes"], "num_features": CONFIG["hidden_dim"],
            "global_pool": "token",
            "model_args": {"img_size": CONFIG["image_size"], "patch_size": CONFIG["patch_size"], "embed_dim": CONFIG["hidden_dim"],
                           "depth": CONFIG["num_layers"], "num_heads": CONFIG["num_heads"],
                           "mlp_ratio": CONFIG["mlp_dim"] / CONFIG["hidden_dim"]},
            "pretrained_cfg": {"input_size": [3, CONFIG["image_size"], CONFIG["image_size"]], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}


def write_checkpoint(folder, named, sharded, meta):
    os.makedirs(folder, exist_ok=True)
    if not sharded:
        write_safetensors(os.path.join(folder, "model.safetensors"), named, meta)
        return
    half = len(named) // 2
    parts = [named[:half], named[half:]]
    weight_map, total = {}, 0
    for i, part in enumerate(parts):
        fn = f"model-{i + 1:05d}-of-{len(parts):05d}.safetensors"
        total += write_safetensors(os.path.join(folder, fn), part, meta)
        for k, _ in part:
            weight_map[k] = fn
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
        f.write("\n")


def read_checkpoint(folder):
    idx = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    named = []
    for fn in files:
        named += list(read_safetensors(os.path.join(folder, fn)).items())
    return named


def logits_of(sd_np, x, eps, image_size=CONFIG["image_size"]):
    m = make_model(eps, image_size)
    m.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32).copy()) for k, v in sd_np.items()}, strict=True)
    with torch.no_grad():
        return m(x).numpy()


def interpolate_pos(pos, grid):
    cls, patches = pos[:, :1], pos[:, 1:]
    g = int(round(patches.shape[1] ** 0.5))
    d = patches.shape[2]
    t = torch.from_numpy(patches).reshape(1, g, g, d).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=(grid, grid), mode="bicubic", align_corners=False)
    t = t.permute(0, 2, 3, 1).reshape(1, grid * grid, d).numpy()
    return np.concatenate([cls, t], axis=1).astype(np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(4321)
    if os.path.isdir(args.out):
        shutil.rmtree(args.out)
    os.makedirs(args.out)

    model = make_model()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    sd16 = {k: v.astype(np.float16) for k, v in sd.items()}
    sd16_as32 = {k: v.astype(np.float32) for k, v in sd16.items()}
    # bfloat16 (round to nearest even, as torch): bits for the file, values for the reference.
    sdbf = {k: torch.from_numpy(v).to(torch.bfloat16) for k, v in sd.items()}
    sdbf_bits = {k: v.view(torch.int16).numpy().view(np.uint16) for k, v in sdbf.items()}
    sdbf_as32 = {k: v.float().numpy() for k, v in sdbf.items()}
    layers = CONFIG["num_layers"]

    x = torch.randn(BATCH, 3, CONFIG["image_size"], CONFIG["image_size"])
    x24 = torch.randn(BATCH, 3, 24, 24)
    ref = {"logits": logits_of(sd, x, 1e-6), "logits_hf": logits_of(sd, x, 1e-12),
           "logits_fp16": logits_of(sd16_as32, x, 1e-6), "logits_hf_fp16": logits_of(sd16_as32, x, 1e-12)}
    ref["logits_hf_bf16"] = logits_of(sdbf_as32, x, 1e-12)
    pos6 = interpolate_pos(sd["encoder.pos_embedding"], 6)
    pos3 = interpolate_pos(sd["encoder.pos_embedding"], 3)
    ref["logits24"] = logits_of(dict(sd, **{"encoder.pos_embedding": pos6}), x24, 1e-6, image_size=24)

    namings = {"torchvision": (to_tv, from_tv, None, "logits"), "hf": (to_hf, from_hf, hf_config(1e-12), "logits_hf"),
               "timm": (to_timm, from_timm, timm_config(), "logits")}
    meta = {"format": "pt", "source": "tools/reference/make_weight_fixtures.py"}
    for naming, (to, back, cfg, ref_key) in namings.items():
        for sharded in (False, True):
            for fp16 in (False, True):
                folder = os.path.join(args.out, naming + ("-sharded" if sharded else "") + ("-fp16" if fp16 else ""))
                write_checkpoint(folder, to(sd16 if fp16 else sd, layers), sharded, meta)
                if cfg is not None:
                    with open(os.path.join(folder, "config.json"), "w") as f:
                        json.dump(cfg if not (fp16 and naming == "hf") else dict(cfg, torch_dtype="float16"), f, indent=2)
                        f.write("\n")
                # The check: the written names map back onto torchvision's and give the reference logits.
                key = ref_key + ("_fp16" if fp16 else "")
                got = logits_of(back(read_checkpoint(folder), layers), x, 1e-12 if naming == "hf" else 1e-6)
                assert np.array_equal(got, ref[key]), (folder, np.abs(got - ref[key]).max())
    bf = os.path.join(args.out, "hf-bf16")
    write_checkpoint(bf, to_hf(sdbf_bits, layers), False, meta)
    with open(os.path.join(bf, "config.json"), "w") as f:
        json.dump(dict(hf_config(1e-12), torch_dtype="bfloat16"), f, indent=2)
        f.write("\n")
    got = logits_of(from_hf(read_checkpoint(bf), layers), x, 1e-12)
    assert np.array_equal(got, ref["logits_hf_bf16"]), (bf, np.abs(got - ref["logits_hf_bf16"]).max())
    vm = os.path.join(args.out, "hf-vitmodel")
    write_checkpoint(vm, to_hf(sd, layers, prefix="", head=False, pooler=True), False, meta)
    with open(os.path.join(vm, "config.json"), "w") as f:
        json.dump(dict(hf_config(1e-12), architectures=["ViTModel"]), f, indent=2)
        f.write("\n")

    write_safetensors(os.path.join(args.out, "io.safetensors"),
                      [("input", x.numpy()), ("input24", x24.numpy()), ("pos_grid6", pos6), ("pos_grid3", pos3)]
                      + [(k, v) for k, v in ref.items()])
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(dict(CONFIG, batch=BATCH, torch=torch.__version__, torchvision=__import__("torchvision").__version__), f, indent=2)
        f.write("\n")
    total = 0
    for root, _, files in sorted(os.walk(args.out)):
        for fn in sorted(files):
            total += os.path.getsize(os.path.join(root, fn))
    print(f"{len(sd)} tensors, {sum(v.size for v in sd.values())} parameters; logits[0] = {ref['logits'][0].tolist()}; "
          f"hf-vs-tv eps max diff {np.abs(ref['logits'] - ref['logits_hf']).max():.3e}; {total} bytes in {args.out}")


if __name__ == "__main__":
    main()
