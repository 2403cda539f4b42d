#!/usr/bin/python3
"""make_data.py — stage 1 of the built-in model recipe: the emoji data set.

Renders colour emoji from Debian's fonts-noto-color-emoji (NotoColorEmoji.ttf,
drawn at its native 109 px bitmap size with Pillow's RAQM layout so every
sequence is one glyph), scales each to 48x48 (Lanczos) and composites it
centred on a 64x64 background from an 8-colour palette. Names come from
unicode-data's emoji-test.txt, keywords from unicode-cldr-core's English
annotations. One background per emoji is held out of training for the
evaluation (tools/eval_builtin.py).

Also encodes every (emoji, background) image with the pretrained TAEF2
encoder (../shared/data/weights/taef2, MIT; see taef2.py) into 32x8x8
latents, and tokenizes the caption pieces with the real CLIP BPE tokenizer
(the `stipple tokenize` of the build, so ids match the C code exactly).

Output (gitignored): weights/builtin/cache/data.npz and data.json.
Usage: /usr/bin/python3 weights/builtin/make_data.py [--stipple build/cmd/stipple]
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import taef2  # noqa: E402

FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
CLDR = ["/usr/share/unicode/cldr/common/annotations/en.xml",
        "/usr/share/unicode/cldr/common/annotationsDerived/en.xml"]
SEED = 1234
N_EMOJI = 512
SIZE, GLYPH = 64, 48
# Backgrounds per emoji in training (plus one held out for the evaluation).
# All seven non-held-out colours: seeing every emoji on many backgrounds is
# what lets the model put it on the held-out one. Each training image costs
# one TAEF2 encode (~2 GFLOP); 3,584 encodes take about two minutes.
N_TRAIN_BG = 7
# Background palette: name -> RGB. Far apart in RGB so the border colour of
# a generated image identifies the prompted one.
PALETTE = {
    "red": (220, 30, 30), "orange": (245, 140, 20), "yellow": (250, 225, 40),
    "green": (40, 170, 60), "blue": (35, 75, 215), "purple": (130, 50, 170),
    "white": (245, 245, 245), "black": (15, 15, 15),
}
NEUTRAL = (128, 128, 128)  # the eval's identity gallery background
SKIN = set(range(0x1F3FB, 0x1F400))
EXCLUDE_GROUPS = {"Component", "Flags"}


def parse_emoji_test():
    out, group = [], None
    for line in open(EMOJI_TEST, encoding="utf-8"):
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
            continue
        if not line.strip() or line.startswith("#"):
            continue
        cps, rest = line.split(";", 1)
        status, comment = rest.split("#", 1)
        if status.strip() != "fully-qualified":
            continue
        cps = [int(c, 16) for c in cps.split()]
        if any(c in SKIN for c in cps):
            continue
        m = re.match(r"\s*(\S+)\s+E\d+\.\d+\s+(.*)$", comment)
        out.append({"cps": cps, "char": "".join(map(chr, cps)), "name": m.group(2).strip(),
                    "group": group})
    return out


def parse_cldr():
    kw = {}
    for path in CLDR:
        if not os.path.exists(path):
            continue
        for a in ET.parse(path).getroot().iter("annotation"):
            if a.get("type") == "tts":
                continue
            cp = a.get("cp").replace("\ufe0f", "")
            kw.setdefault(cp, [k.strip() for k in a.text.split("|") if k.strip()])
    return kw


def render_glyph(font, ch):
    """RGBA glyph at the font's native size, cropped to its alpha bbox."""
    im = Image.new("RGBA", (200, 160), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((10, 10), ch, font=font, embedded_color=True)
    bb = im.getbbox()
    if bb is None:
        return None
    return im.crop(bb)


def place(glyph):
    """Glyph scaled (Lanczos, aspect kept) into a GLYPH box, centred on SIZE."""
    w, h = glyph.size
    s = GLYPH / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    g = glyph.resize((nw, nh), Image.LANCZOS)
    canvas = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    canvas.paste(g, ((SIZE - nw) // 2, (SIZE - nh) // 2))
    return canvas


def on_bg(rgba, rgb):
    bg = Image.new("RGBA", (SIZE, SIZE), rgb + (255,))
    return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))


def tokenize_pieces(stipple, pieces):
    """ids of each piece, from one `stipple tokenize --json` call on
    'p1 | p2 | ...' split at the '|' token (CLIP BPE is word-local)."""
    out = {}
    step = 400
    for i in range(0, len(pieces), step):
        chunk = pieces[i:i + step]
        text = " | ".join(chunk)
        r = subprocess.run([stipple, "tokenize", "--json", text], capture_output=True, check=True,
                           text=True)
        j = json.loads(r.stdout)
        ids, toks = j["ids"][1:-1], j["tokens"][1:-1]
        groups, cur = [], []
        for t, tok in zip(ids, toks):
            if tok == "|</w>":
                groups.append(cur)
                cur = []
            else:
                cur.append(t)
        groups.append(cur)
        assert len(groups) == len(chunk), (len(groups), len(chunk))
        for p, g in zip(chunk, groups):
            out[p] = g
    return out


def encode_resumable(args, x, chunk=64):
    """TAEF2 latents of x (N,64,64,3) u8, chunk by chunk, each chunk cached
    in cache/enc/ so an interrupted run resumes where it stopped."""
    import torch
    torch.set_num_threads(2)
    d = os.path.join(args.out, "enc")
    os.makedirs(d, exist_ok=True)
    enc = taef2.load_encoder(os.path.join(args.taef2, "taef2_encoder.safetensors"))
    out = []
    for i in range(0, len(x), chunk):
        p = os.path.join(d, "%05d.npy" % i)
        if not os.path.exists(p):
            np.save(p + ".tmp.npy", taef2.encode_all(enc, x[i:i + chunk]))
            os.replace(p + ".tmp.npy", p)
            print("encoded %d/%d" % (min(i + chunk, len(x)), len(x)), flush=True)
        out.append(np.load(p))
    return np.concatenate(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stipple", default=os.path.join(HERE, "../../build/cmd/stipple"))
    ap.add_argument("--out", default=os.path.join(HERE, "cache"))
    ap.add_argument("--taef2", default=os.path.join(HERE, "../../../shared/data/weights/taef2"))
    args = ap.parse_args()
    assert features.check("raqm"), "Pillow without RAQM renders ZWJ sequences as several glyphs"
    os.makedirs(args.out, exist_ok=True)
    rng = random.Random(SEED)

    emoji = [e for e in parse_emoji_test() if e["group"] not in EXCLUDE_GROUPS]
    kw = parse_cldr()
    font = ImageFont.truetype(FONT, 109, layout_engine=ImageFont.Layout.RAQM)
    # Distinct names only, a glyph that renders as one picture, then a
    # seeded sample of N_EMOJI spread over the groups.
    seen, cands = set(), []
    for e in emoji:
        if e["name"] in seen:
            continue
        seen.add(e["name"])
        cands.append(e)
    rng.shuffle(cands)
    chosen = []
    for e in cands:
        g = render_glyph(font, e["char"])
        if g is None or g.size[0] > 150:  # not one glyph
            continue
        e["glyph"] = g
        chosen.append(e)
        if len(chosen) == N_EMOJI:
            break
    chosen.sort(key=lambda e: e["cps"])
    colors = list(PALETTE)
    images, neutral, items = [], [], []
    for i, e in enumerate(chosen):
        rgba = place(e["glyph"])
        neutral.append(on_bg(rgba, NEUTRAL))
        k = [w for w in kw.get(e["char"].replace("\ufe0f", ""), []) if w.lower() != e["name"].lower()]
        # colours in a seeded order: the first is held out, the next
        # N_TRAIN_BG are the training backgrounds of this emoji.
        order = rng.sample(range(len(colors)), len(colors))
        items.append({"char": e["char"], "name": e["name"], "group": e["group"], "keywords": k[:6],
                      "held_out_bg": colors[order[0]], "train_bgs": [colors[j] for j in order[1:1 + N_TRAIN_BG]]})
        for j in order[1:1 + N_TRAIN_BG]:
            images.append(on_bg(rgba, PALETTE[colors[j]]))
    images = np.stack(images).reshape(len(chosen), N_TRAIN_BG, SIZE, SIZE, 3)
    neutral = np.stack(neutral)
    print(f"{len(chosen)} emoji x {N_TRAIN_BG} training backgrounds", flush=True)

    pieces = set(colors) | {"a", "on", "background", "emoji", "of", "an", "with", "the", ",", ""}
    for it in items:
        pieces.add(it["name"])
        pieces.update(it["keywords"])
    pieces.discard("")
    pieces = sorted(pieces)
    ids = tokenize_pieces(args.stipple, pieces)
    lat = encode_resumable(args, images.reshape(-1, SIZE, SIZE, 3))
    lat = lat.reshape(len(chosen), N_TRAIN_BG, *lat.shape[1:])
    print("latents", lat.shape, "mean %.4f std %.4f" % (lat.mean(), lat.std()), flush=True)
    np.savez_compressed(os.path.join(args.out, "data.npz"), images=images, neutral=neutral, latents=lat)
    json.dump({"colors": colors, "palette": PALETTE, "neutral": NEUTRAL, "items": items, "piece_ids": ids},
              open(os.path.join(args.out, "data.json"), "w"), ensure_ascii=False, indent=0)
    # the names the model knows, for its users (committed beside the model)
    with open(os.path.join(HERE, "emoji.txt"), "w") as f:
        f.write("# The 512 emoji the built-in model knows (name from emoji-test.txt; the background held out of training)\n")
        for it in items:
            f.write("%s\t%s\n" % (it["name"], it["held_out_bg"]))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
