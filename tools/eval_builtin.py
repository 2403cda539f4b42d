#!/usr/bin/python3
"""eval_builtin.py — evaluation of the built-in model through the real
`stipple` binary (offline; needs weights/builtin/cache/ from make_data.py).

For held-out (emoji, background) pairs — the background of each emoji that
make_data.py kept out of training — it generates one 64x64 image per prompt
"a {name} on a {colour} background" with stipple's defaults (no -m: the
built-in model) and measures:
  (a) background colour: the mean of the border pixels (4 px frame) is
      nearest, among the palette, to the prompted colour;
  (b) identity: after removing the background (pixels within 60 of the
      border mean, in RGB distance, are replaced by neutral gray), the
      nearest neighbour (L2 on 32x32 downscaled RGB) among all rendered
      emoji on the neutral background is the prompted one: top-1 / top-5.
Writes a contact sheet of the first 32 prompts with captions and prints
the figures (also as JSON with --json).

Usage: /usr/bin/python3 tools/eval_builtin.py [--stipple build/cmd/stipple]
       [--n 256] [--sheet weights/builtin/contact_sheet.png] [--model FILE]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def border_mean(img):
    m = np.ones(img.shape[:2], bool)
    m[4:-4, 4:-4] = False
    return img[m].mean(0)


def remove_bg(img, neutral):
    bg = border_mean(img)
    d = np.sqrt(((img.astype(np.float32) - bg) ** 2).sum(-1))
    out = img.astype(np.float32).copy()
    out[d < 60] = neutral
    return out


def feat(img):
    return np.asarray(Image.fromarray(img.clip(0, 255).astype(np.uint8)).resize((32, 32), Image.BILINEAR),
                      np.float32).reshape(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stipple", default=os.path.join(ROOT, "build/cmd/stipple"))
    ap.add_argument("--data", default=os.path.join(ROOT, "weights/builtin/cache"))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sheet", default=os.path.join(ROOT, "weights/builtin/contact_sheet.png"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--cfg", type=float, help="guidance scale (default: stipple's)")
    ap.add_argument("--steps", type=int, help="sampling steps (default: stipple's)")
    ap.add_argument("--model", help="a model file to evaluate instead of the built-in one (e.g. a mid-training export)")
    args = ap.parse_args()
    meta = json.load(open(os.path.join(args.data, "data.json")))
    neutral_imgs = np.load(os.path.join(args.data, "data.npz"))["neutral"]
    palette = {k: np.array(v, np.float32) for k, v in meta["palette"].items()}
    names = list(palette)
    neutral = np.array(meta["neutral"], np.float32)
    items = meta["items"]
    # A spread of held-out pairs: every k-th emoji.
    step = max(1, len(items) // args.n)
    sel = list(range(0, len(items), step))[:args.n]
    prompts = ["a %s on a %s background" % (items[i]["name"], items[i]["held_out_bg"]) for i in sel]

    tmp = tempfile.mkdtemp(prefix="eval_builtin_")
    pf = os.path.join(tmp, "prompts.txt")
    with open(pf, "w") as f:
        for p in prompts:
            f.write("--prompt \"%s\" --seed %d\n" % (p.replace('"', ""), args.seed))
    t0 = time.time()
    cmd = [args.stipple, "txt2img", "--from-file", pf, "-o", os.path.join(tmp, "{index}.png"),
           "--threads", str(args.threads), "--quiet"]
    if args.model:
        cmd += ["-m", args.model]
    if args.cfg is not None:
        cmd += ["--cfg", str(args.cfg)]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    secs = time.time() - t0
    gallery = np.stack([feat(x) for x in neutral_imgs])
    ok_bg, top1, top5, imgs = 0, 0, 0, []
    for j, i in enumerate(sel):
        img = np.asarray(Image.open(os.path.join(tmp, "%d.png" % j)).convert("RGB"))
        imgs.append(img)
        bm = border_mean(img.astype(np.float32))
        nearest = min(names, key=lambda c: float(((palette[c] - bm) ** 2).sum()))
        ok_bg += nearest == items[i]["held_out_bg"]
        d = ((gallery - feat(remove_bg(img, neutral))) ** 2).sum(1)
        rank = np.argsort(d)
        top1 += rank[0] == i
        top5 += i in rank[:5]
    n = len(sel)
    res = {"prompts": n, "background_accuracy": ok_bg / n, "identity_top1": top1 / n, "identity_top5": top5 / n,
           "gallery": len(items), "seconds_per_image": secs / n, "threads": args.threads}

    if args.sheet:
        k = min(32, n)
        cols, cw, ch = 8, 128, 150
        sheet = Image.new("RGB", (cols * cw, (k + cols - 1) // cols * ch), (255, 255, 255))
        dr = ImageDraw.Draw(sheet)
        font = ImageFont.load_default()
        for j in range(k):
            x, y = j % cols * cw, j // cols * ch
            sheet.paste(Image.fromarray(imgs[j]).resize((96, 96), Image.NEAREST), (x + 16, y + 4))
            it = items[sel[j]]
            for li, line in enumerate([it["name"][:21], "on " + it["held_out_bg"]]):
                line = line.encode("ascii", "replace").decode()  # the default bitmap font is Latin-1
                dr.text((x + 4, y + 104 + 14 * li), line, fill=(0, 0, 0), font=font)
        sheet.quantize(256).save(args.sheet, optimize=True)  # small enough to commit
        res["sheet"] = os.path.relpath(args.sheet, ROOT)
    if args.json:
        print(json.dumps(res))
    else:
        print("held-out prompts: %d (gallery %d emoji)" % (n, len(items)))
        print("background colour accuracy: %.1f %%" % (100 * res["background_accuracy"]))
        print("identity top-1: %.1f %%   top-5: %.1f %%" % (100 * res["identity_top1"], 100 * res["identity_top5"]))
        print("%.2f s per image (stipple, %d threads, one model load)" % (res["seconds_per_image"], args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
