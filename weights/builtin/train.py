#!/usr/bin/python3
"""train.py — stage 2 of the built-in model recipe: train the text encoder
and UNet jointly on the cached emoji latents (make_data.py), epsilon
prediction on the DDPM scaled_linear schedule (1000 steps, betas
0.00085..0.012), min-SNR-5 loss weighting, 10 % empty captions for
classifier-free guidance, AdamW, EMA of the weights. CPU only, fixed seed.

Resumable: the state (model, EMA, optimiser, RNG, step) is saved to
cache/train.pt every --save-every steps and at the end; running again
continues from it up to --steps. Stops early after --minutes of wall time
(saving), so the recipe fits a time budget on a shared machine.

Debian's torch calls whatever libblas.so.3 the alternatives system
selects: the reference (netlib) BLAS gives ~0.5 GFLOP/s, Debian's
libopenblas0-pthread ~75 GFLOP/s on one core. The recipe needs the latter
(it warns when matrix products are slow).
"""
import argparse
import json
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import model as M  # noqa: E402

SEED = 1234
EMPTY = [49406, 49407]


def check_blas():
    a = torch.randn(512, 512)
    t0 = time.time()
    for _ in range(4):
        a @ a
    gf = 4 * 2 * 512 ** 3 / max(1e-9, time.time() - t0) / 1e9
    if gf < 5:
        print("train.py: warning: matrix products run at %.1f GFLOP/s; install Debian's "
              "libopenblas0-pthread (the reference BLAS makes training ~10x slower)" % gf, flush=True)


def schedule():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class Captions:
    """Caption token ids composed from the tokenized pieces (CLIP BPE is
    word-local, so the ids of the joined text are the joined ids)."""
    TEMPLATES = [
        ["a", "{name}", "on", "a", "{bg}", "background"],
        ["{name}", ",", "{kw}", ",", "on", "{bg}"],
        ["{name}", "on", "{bg}"],
        ["{bg}", "background", ",", "{name}"],
        ["an", "emoji", "of", "{name}", ",", "{kw}", ",", "{bg}", "background"],
        ["{name}", "on", "a", "{bg}", "background"],
    ]

    def __init__(self, meta):
        self.meta, self.ids = meta, meta["piece_ids"]

    def text(self, item, bg, t, rng):
        out = []
        for p in self.TEMPLATES[t]:
            if p == "{name}":
                out.append(item["name"])
            elif p == "{bg}":
                out.append(bg)
            elif p == "{kw}":
                kws = item["keywords"] or [item["name"]]
                out.append(kws[rng.randrange(len(kws))])
            else:
                out.append(p)
        return out

    def encode(self, pieces):
        ids = [49406]
        for p in pieces:
            ids += self.ids[p]
        ids = ids[:76] + [49407]
        return ids + [49407] * (77 - len(ids))


def caption_text(pieces):
    s = " ".join(pieces)
    return s.replace(" ,", ",")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=os.path.join(HERE, "cache"))
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=1e9)
    ap.add_argument("--stop-at", type=int, default=0,
                    help="stop (saving) at this step, keeping the --steps schedule: reproduces a run "
                         "that a --minutes budget ended")
    ap.add_argument("--save-every", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ema", type=float, default=0.999)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    check_blas()
    meta = json.load(open(os.path.join(args.data, "data.json")))
    lat = torch.from_numpy(np.load(os.path.join(args.data, "data.npz"))["latents"])  # (E, NB, 32, 8, 8)
    E, NB = lat.shape[:2]
    shift = float(lat.mean())
    scaling = float(1.0 / lat.std())
    x0_all = (lat - shift) * scaling
    caps = Captions(meta)
    acp = schedule()

    # Training uses a compact embedding over the token ids that occur; the
    # export scatters it into the full 49408-row table.
    used = sorted({i for v in caps.ids.values() for i in v} | set(EMPTY))
    remap = torch.full((49408,), 0, dtype=torch.long)
    remap[torch.tensor(used)] = torch.arange(len(used))

    torch.manual_seed(SEED)
    net = M.Builtin()
    net.te.embeddings.token_embedding = nn.Embedding(len(used), M.TE["hidden"])
    nn.init.normal_(net.te.embeddings.token_embedding.weight, std=0.02)
    ema = M.Builtin()
    ema.te.embeddings.token_embedding = nn.Embedding(len(used), M.TE["hidden"])
    ema.load_state_dict(net.state_dict())
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    rng = random.Random(SEED)
    step = 0
    ck = os.path.join(args.data, "train.pt")
    if os.path.exists(ck):
        st = torch.load(ck)
        net.load_state_dict(st["net"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        rng.setstate(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        step = st["step"]
        print("resumed at step", step, flush=True)

    def save():
        torch.save({"net": net.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                    "rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "step": step,
                    "used": used, "scaling": scaling, "shift": shift}, ck + ".tmp")
        os.replace(ck + ".tmp", ck)

    t_start = time.time()
    losses = []
    while step < args.steps and not (args.stop_at and step >= args.stop_at):
        B = args.batch
        e_idx = [rng.randrange(E) for _ in range(B)]
        b_idx = [rng.randrange(NB) for _ in range(B)]
        ids = []
        for e, b in zip(e_idx, b_idx):
            if rng.random() < 0.1:
                ids.append(EMPTY + [49407] * 75)
            else:
                item = meta["items"][e]
                t = rng.randrange(len(Captions.TEMPLATES))
                ids.append(caps.encode(caps.text(item, item["train_bgs"][b], t, rng)))
        ids = remap[torch.tensor(ids)]
        x0 = x0_all[e_idx, b_idx]
        t = torch.randint(0, 1000, (B,))
        noise = torch.randn_like(x0)
        a = acp[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        lr = args.lr * min(1.0, (step + 1) / 200) * (0.5 * (1 + np.cos(np.pi * min(1.0, step / args.steps))) * 0.9 + 0.1)
        for g in opt.param_groups:
            g["lr"] = lr
        pred = net.unet(xt, t, net.te(ids))
        snr = acp[t] / (1 - acp[t])
        if M.PREDICTION == "v_prediction":
            # ||v - v^||^2 = (snr + 1) ||x0 - x0^||^2: the x0 error weighs
            # ~1 at high noise (where the text decides what is drawn) and
            # is capped at 6 at low noise (min-SNR style).
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
            w = torch.clamp(snr + 1, max=6.0) / (snr + 1)
        else:
            target = noise
            w = torch.clamp(snr, max=5.0) / snr  # min-SNR-5 for epsilon prediction
        loss = ((pred - target) ** 2).mean(dim=(1, 2, 3))
        loss = (loss * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        d = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pn in zip(ema.parameters(), net.parameters()):
                pe.mul_(d).add_(pn, alpha=1 - d)
        step += 1
        losses.append(loss.item())
        if step % 25 == 0:
            el = time.time() - t_start
            print("step %d loss %.4f lr %.2e %.1f s/step elapsed %.0f s" %
                  (step, np.mean(losses[-25:]), lr, el / max(1, len(losses)), el), flush=True)
        if step % args.save_every == 0:
            save()
        if time.time() - t_start > args.minutes * 60:
            print("time budget reached at step", step, flush=True)
            break
    save()
    print("saved", ck, "step", step, flush=True)


if __name__ == "__main__":
    main()
