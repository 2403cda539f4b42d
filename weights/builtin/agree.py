#!/usr/bin/python3
"""agree.py — stage 4 of the built-in model recipe: the PyTorch reference
run that tests/builtin_agree.c compares `stipple txt2img` with.

Loads stipple-builtin.safetensors itself (so the F16 rounding is the one
stipple sees), draws an initial latent (torch.randn, seed 7), and samples
with classifier-free guidance using diffusers' DDIMScheduler maths
(timestep_spacing "leading", steps_offset 1, set_alpha_to_one false,
eta 0) written out here. Writes tests/data/builtin/agree_noise.npy
(1,32,8,8), agree_final.npy (the final latent, before the VAE's scaling)
and agree.json (prompt, steps, cfg, sampler). Rerun after every export.
"""
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import model as M  # noqa: E402
import taef2  # noqa: E402

PROMPT = "a red apple on a blue background"
STEPS, CFG = 10, 7.5


def load_builtin(path):
    w, meta = taef2.st_load(path)
    net = M.Builtin()
    sd = {}
    for k in net.te.state_dict():
        sd["te." + k] = torch.from_numpy(w[M.TE_PREFIX + k].astype(np.float32))
    for k in net.unet.state_dict():
        sd["unet." + k] = torch.from_numpy(w[M.UNET_PREFIX + k].astype(np.float32))
    net.load_state_dict(sd)
    return net.eval(), w, meta


def token_ids(stipple, prompt):
    import subprocess
    ids = [int(t) for t in subprocess.run([stipple, "tokenize", prompt], capture_output=True, check=True,
                                          text=True).stdout.split()]
    ids = ids[:76] + [49407] if len(ids) > 77 else ids
    return ids + [49407] * (77 - len(ids))


def ddim_timesteps(n):
    ratio = 1000 // n
    return [int(t) + 1 for t in (np.arange(0, n) * ratio).round()[::-1]], ratio


@torch.no_grad()
def sample(net, ctx, x, steps, cfg):
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    acp = torch.cumprod(1.0 - betas, dim=0)
    ts, ratio = ddim_timesteps(steps)
    for t in ts:
        out = net.unet(torch.cat([x, x]), torch.tensor([t, t]), ctx)
        eu, ec = out.chunk(2)
        out = eu + cfg * (ec - eu)
        a = acp[t]
        prev = t - ratio
        ap = acp[prev] if prev >= 0 else acp[0]
        if M.PREDICTION == "v_prediction":
            x0 = a.sqrt() * x - (1 - a).sqrt() * out
            eps = a.sqrt() * out + (1 - a).sqrt() * x
        else:
            eps = out
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = ap.sqrt() * x0 + (1 - ap).sqrt() * eps
    return x


def main():
    stipple = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "../../build/cmd/stipple")
    out = os.path.join(HERE, "../../tests/data/builtin")
    os.makedirs(out, exist_ok=True)
    net, _, _ = load_builtin(os.path.join(HERE, "stipple-builtin.safetensors"))
    ids = torch.tensor([token_ids(stipple, ""), token_ids(stipple, PROMPT)])
    with torch.no_grad():
        ctx = net.te(ids)
    g = torch.Generator().manual_seed(7)
    x = torch.randn((1, 32, 8, 8), generator=g)
    np.save(os.path.join(out, "agree_noise.npy"), x.numpy().astype(np.float32))
    fin = sample(net, ctx, x, STEPS, CFG)
    np.save(os.path.join(out, "agree_final.npy"), fin.numpy().astype(np.float32))
    json.dump({"prompt": PROMPT, "negative": "", "steps": STEPS, "cfg": CFG, "sampler": "ddim",
               "schedule": "leading", "noise": "torch.randn seed 7", "model_sha256_prefix": None},
              open(os.path.join(out, "agree.json"), "w"), indent=1)
    print("final latent max|x| %.3f" % float(fin.abs().max()))


if __name__ == "__main__":
    main()
