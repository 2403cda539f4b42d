#!/usr/bin/python3
"""export.py — stage 3 of the built-in model recipe: cache/train.pt (EMA
weights) + the TAEF2 autoencoder -> weights/builtin/stipple-builtin.safetensors
(F16 weights, architecture in __metadata__["stipple.config"]).

Tensor names: cond_stage_model.transformer.text_model.* (HF CLIPTextModel),
model.diffusion_model.* (LDM UNet), first_stage_model.{decoder,encoder}.N.*
(TAEF2's own nn.Sequential positions, see vae/taesd.c). The token embedding
rows of ids never seen in training keep their N(0, 0.02) initialisation
(seeded), so the table has all 49408 rows the tokenizer can produce.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import model as M  # noqa: E402
import taef2  # noqa: E402

DEFAULTS = {"steps": 20, "cfg": 3.0, "sampler": "dpmpp_2m", "schedule": "karras", "width": 64, "height": 64}


def build_state(ck):
    st = torch.load(ck)
    net = M.Builtin()
    full = net.te.embeddings.token_embedding.weight.detach().clone()
    g = torch.Generator().manual_seed(4321)
    full.normal_(0.0, 0.02, generator=g)
    sd = dict(st["ema"])
    used = torch.tensor(st["used"])
    full[used] = sd["te.embeddings.token_embedding.weight"]
    sd["te.embeddings.token_embedding.weight"] = full
    net.load_state_dict(sd)
    return net.eval(), st


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=os.path.join(HERE, "cache", "train.pt"))
    ap.add_argument("--taef2", default=os.path.join(HERE, "../../../shared/data/weights/taef2"))
    ap.add_argument("--out", default=os.path.join(HERE, "stipple-builtin.safetensors"))
    args = ap.parse_args()
    net, st = build_state(args.ckpt)
    tensors = {k: v.detach().numpy().astype(np.float16) for k, v in M.export_names(net).items()}
    for part in ("decoder", "encoder"):
        w, _ = taef2.st_load(os.path.join(args.taef2, "taef2_%s.safetensors" % part))
        for k, v in w.items():
            tensors["first_stage_model.%s.%s" % (part, k)] = v.astype(np.float16)
    cfg = M.configs(st["scaling"], st["shift"])
    meta = {"stipple.config": json.dumps(cfg), "stipple.defaults": json.dumps(DEFAULTS),
            "stipple.train_steps": str(st["step"]),
            "stipple.licenses": "model: this recipe; TAEF2 autoencoder: MIT (madebyollin/taesd); "
                                "training data: Noto Color Emoji (OFL-1.1, artwork Apache-2.0)"}
    taef2.st_save(args.out, tensors, meta)
    n = sum(v.size for v in tensors.values())
    print("wrote %s: %d tensors, %.2f M params, %.1f MB, step %d" %
          (args.out, len(tensors), n / 1e6, os.path.getsize(args.out) / 1e6, st["step"]))


if __name__ == "__main__":
    main()
