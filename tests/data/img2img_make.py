#!/usr/bin/python3
"""Input images for tests/cmd_img2img.c, written by Pillow (and zlib for the
16-bit RGB PNG, which Pillow cannot write). Source pixels: the golden
sd1-tiny/input_image.png (96x64), shrunk to 48x32 by Pillow. Run from the
repository root: /usr/bin/python3 tests/data/img2img_make.py"""
import struct, zlib
import numpy as np
from PIL import Image

src = Image.open("tests/data/golden/sd1-tiny/input_image.png").convert("RGB")
small = src.resize((48, 32), Image.LANCZOS)
out = "tests/data/images/"
small.save(out + "i2i_rgb.png")
small.save(out + "i2i_rgb.jpg", quality=90)
small.quantize(colors=64).save(out + "i2i_palette.png")  # mode P

# 16-bit RGB PNG (colour type 2, bit depth 16): v16 = v8 * 257 + a ramp in the low byte
a = np.asarray(small).astype(np.uint16) * 257
a = a + (np.arange(48, dtype=np.uint16)[None, :, None] % 7)
raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(32))
def chunk(t, d):
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 48, 32, 16, 2, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
open(out + "i2i_rgb16.png", "wb").write(png)

# masks: 48x32 left half black / right half white; 24x16 the same (another size)
m = np.zeros((32, 48), np.uint8); m[:, 24:] = 255
Image.fromarray(m, "L").save(out + "i2i_mask.png")
m2 = np.zeros((16, 24), np.uint8); m2[:, 12:] = 255
Image.fromarray(m2, "L").save(out + "i2i_mask_24x16.png")
# a 100000x10 black image (refused: too wide)
Image.new("L", (100000, 10)).save(out + "wide_100000x10.png", optimize=True)
