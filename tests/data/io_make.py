"""Makes the small .npy and image files under tests/data/npy and tests/data/images
with numpy 1.24 / Pillow 9.4 (Debian 12 python3-numpy, python3-pil), the independent
references for stipple's .npy and image readers. Run once; the outputs are committed.
  /usr/bin/python3 tests/data/io_make.py
"""
import os
import struct
import zlib

import numpy as np
from PIL import Image, PngImagePlugin

here = os.path.dirname(os.path.abspath(__file__))
npy = os.path.join(here, "npy")
img = os.path.join(here, "images")
os.makedirs(npy, exist_ok=True)
os.makedirs(img, exist_ok=True)

# ---- .npy written by numpy
a = (np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5) / 3
np.save(os.path.join(npy, "f32_2x3.npy"), a)
np.lib.format.write_array(open(os.path.join(npy, "f32_v2_4.npy"), "wb"),
                          np.array([1.5, -2.25, 1e-8, 3e38], np.float32), version=(2, 0))
np.save(os.path.join(npy, "f32_scalar.npy"), np.float32(7.25))
np.save(os.path.join(npy, "f32_1x4x2x3.npy"), np.linspace(-1, 1, 24, dtype=np.float32).reshape(1, 4, 2, 3))
np.save(os.path.join(npy, "f64_2x3.npy"), a.astype(np.float64))
np.save(os.path.join(npy, "i32_3.npy"), np.arange(3, dtype=np.int32))
np.save(os.path.join(npy, "f32be_2x3.npy"), a.astype(">f4"))
np.save(os.path.join(npy, "f32_fortran_2x3.npy"), np.asfortranarray(a))
np.save(os.path.join(npy, "f16_2x3.npy"), a.astype(np.float16))

# ---- images written by Pillow; expected float RGB (value/255 or /65535) as .npy from Pillow's decode
rng = np.random.default_rng(1234)


def expect(name, arr_rgb, scale):
    np.save(os.path.join(img, name + ".expect.npy"), (arr_rgb.astype(np.float64) / scale).astype(np.float32))


rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
Image.fromarray(rgb, "RGB").save(os.path.join(img, "rgb.png"))
expect("rgb", rgb, 255)
g = rng.integers(0, 256, (4, 3), dtype=np.uint8)
Image.fromarray(g, "L").save(os.path.join(img, "gray.png"))
expect("gray", np.asarray(Image.open(os.path.join(img, "gray.png")).convert("RGB")), 255)
la = rng.integers(0, 256, (3, 5, 2), dtype=np.uint8)
Image.fromarray(la, "LA").save(os.path.join(img, "gray_alpha.png"))
expect("gray_alpha", np.asarray(Image.open(os.path.join(img, "gray_alpha.png")).convert("RGB")), 255)
rgba = rng.integers(0, 256, (6, 4, 4), dtype=np.uint8)
Image.fromarray(rgba, "RGBA").save(os.path.join(img, "rgba.png"))
expect("rgba", np.asarray(Image.open(os.path.join(img, "rgba.png")).convert("RGB")), 255)
p = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8), "RGB").quantize(colors=6)
p.save(os.path.join(img, "palette.png"))
expect("palette", np.asarray(Image.open(os.path.join(img, "palette.png")).convert("RGB")), 255)
g16 = rng.integers(0, 65536, (3, 4), dtype=np.uint16)
Image.fromarray(g16, "I;16").save(os.path.join(img, "gray16.png"))
assert (np.asarray(Image.open(os.path.join(img, "gray16.png"))) == g16).all()
expect("gray16", np.repeat(g16[:, :, None], 3, axis=2), 65535)
Image.fromarray(np.array([[[10, 200, 255]]], np.uint8), "RGB").save(os.path.join(img, "one.png"))
expect("one", np.array([[[10, 200, 255]]], np.uint8), 255)


# 16-bit RGB PNG (Pillow cannot write one): written by hand with zlib, filter 0 on every row.
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)


def png_raw(w, h, depth, ctype, rows):
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)) +
            chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


rgb16 = rng.integers(0, 65536, (3, 2, 3), dtype=np.uint16)
open(os.path.join(img, "rgb16.png"), "wb").write(png_raw(2, 3, 16, 2, [r.astype(">u2").tobytes() for r in rgb16]))
expect("rgb16", rgb16, 65535)

# JPEG (4:4:4, quality 95): Pillow's libjpeg decode is the expectation; decoders may differ by a few levels.
smooth = np.clip(np.add.outer(np.arange(16) * 12, np.arange(16) * 5)[:, :, None] + np.array([0, 40, 80]), 0, 255)
smooth = smooth.astype(np.uint8)
Image.fromarray(smooth, "RGB").save(os.path.join(img, "rgb.jpg"), quality=95, subsampling=0)
expect("rgb", np.asarray(Image.open(os.path.join(img, "rgb.jpg")).convert("RGB")), 255)
os.rename(os.path.join(img, "rgb.expect.npy"), os.path.join(img, "rgb_jpg.expect.npy"))
expect("rgb", rgb, 255)  # restore the PNG expectation
Image.fromarray(smooth[:, :, 0], "L").save(os.path.join(img, "gray.jpg"), quality=95)
expect("gray_jpg", np.asarray(Image.open(os.path.join(img, "gray.jpg")).convert("RGB")), 255)
# CMYK JPEG, flat colour (Adobe APP14 marker, inverted CMYK as Photoshop writes it).
# Pillow's convert("RGB") of it gives (190, 114, 46) = 255*(1-c)(1-k) etc. (hard-coded in the test).
Image.new("CMYK", (8, 8), (30, 120, 200, 40)).save(os.path.join(img, "cmyk.jpg"), quality=100)

# Broken / hostile files.
good = open(os.path.join(img, "rgb.png"), "rb").read()
open(os.path.join(img, "truncated.png"), "wb").write(good[: len(good) * 2 // 3])
open(os.path.join(img, "huge_dims.png"), "wb").write(png_raw(20000, 20000, 8, 2, [b"\x00" * 30]))
open(os.path.join(img, "zero_width.png"), "wb").write(
    b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 4, 8, 2, 0, 0, 0)) + chunk(b"IEND", b""))

# PNG text chunks written by Pillow: tEXt, iTXt (uncompressed, UTF-8), zTXt and compressed iTXt.
info = PngImagePlugin.PngInfo()
info.add_text("parameters", "a photo of a cat\nSteps: 20, Sampler: Euler, Seed: 1234", zip=False)
info.add_itxt("Title", "猫の写真 🐱 café", lang="ja", tkey="タイトル", zip=False)
info.add_text("Comment", "compressed " * 20, zip=True)
info.add_itxt("Description", "圧縮 " * 20, zip=True)
Image.fromarray(rgb, "RGB").save(os.path.join(img, "text_pil.png"), pnginfo=info)
