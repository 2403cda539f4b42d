"""taef2.py — the TAEF2 tiny autoencoder (madebyollin/taesd, MIT) in PyTorch,
plus a minimal safetensors reader/writer (numpy only).

Mirrors the architecture in ../shared/data/weights/taef2/README.md: images in
[0,1] (N,3,H,W) <-> latents (N,32,H/8,W/8), keys by nn.Sequential position.
Used by the recipe to encode the training images and, in the agreement
check, to decode.
"""
import json
import struct

import numpy as np
import torch
import torch.nn as nn

_DT = {"F16": np.float16, "F32": np.float32, "BF16": None, "I64": np.int64, "I32": np.int32}
_DT_NAME = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.int64): "I64",
            np.dtype(np.int32): "I32"}


def st_load(path):
    """safetensors file -> ({name: np.ndarray}, metadata dict)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    meta = head.pop("__metadata__", {})
    out = {}
    for k, v in head.items():
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(data[a:b], dtype=_DT[v["dtype"]]).reshape(v["shape"]).copy()
    return out, meta


def st_save(path, tensors, metadata=None):
    """{name: np.ndarray} -> safetensors (sorted names, 8-byte aligned header)."""
    head, off, blobs = {}, 0, []
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k])
        b = a.tobytes()
        head[k] = {"dtype": _DT_NAME[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    if metadata:
        head["__metadata__"] = metadata
    h = json.dumps(head, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def conv(a, b, **kw):
    return nn.Conv2d(a, b, 3, padding=1, **kw)


class Block(nn.Module):
    def __init__(self, c, gn=False):
        super().__init__()
        self.conv = nn.Sequential(conv(c, c), nn.ReLU(), conv(c, c), nn.ReLU(), conv(c, c))
        self.pool = nn.Sequential(nn.Conv2d(c, 4 * c, 1, bias=False), nn.GroupNorm(4, 4 * c), nn.ReLU(),
                                  nn.Conv2d(4 * c, c, 1, bias=False)) if gn else None

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


class Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


def make_encoder():
    return nn.Sequential(conv(3, 64), Block(64), conv(64, 64, stride=2, bias=False), Block(64), Block(64),
                         Block(64), conv(64, 64, stride=2, bias=False), Block(64), Block(64), Block(64),
                         conv(64, 64, stride=2, bias=False), Block(64, True), Block(64, True),
                         Block(64, True), conv(64, 32))


def make_decoder():
    up = nn.Upsample(scale_factor=2)
    return nn.Sequential(Clamp(), conv(32, 64), nn.ReLU(), Block(64, True), Block(64, True), Block(64, True),
                         up, conv(64, 64, bias=False), Block(64), Block(64), Block(64),
                         up, conv(64, 64, bias=False), Block(64), Block(64), Block(64),
                         up, conv(64, 64, bias=False), Block(64), conv(64, 3))


def _load(model, path):
    w, _ = st_load(path)
    sd = {k: torch.from_numpy(v.astype(np.float32)) for k, v in w.items()}
    model.load_state_dict(sd, strict=True)
    return model.eval()


def load_encoder(path):
    return _load(make_encoder(), path)


def load_decoder(path):
    return _load(make_decoder(), path)


@torch.no_grad()
def encode_all(enc, images_u8, batch=64):
    """(N,H,W,3) uint8 -> (N,32,H/8,W/8) float32 latents."""
    out = []
    for i in range(0, len(images_u8), batch):
        x = torch.from_numpy(images_u8[i:i + batch]).permute(0, 3, 1, 2).float() / 255.0
        out.append(enc(x).numpy())
    return np.concatenate(out)
