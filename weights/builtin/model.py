"""model.py — the built-in model's PyTorch modules, named so that their
state_dict keys ARE the checkpoint names the C code loads:

- CLIPText: a small CLIP text transformer with HF transformers'
  CLIPTextModel names (under cond_stage_model.transformer.text_model.):
  causal self-attention, quick_gelu MLP, final LayerNorm; the context the
  UNet sees is the last hidden state (SD1 convention, clip skip 1).
- UNet: the CompVis/LDM openaimodel UNet (names under
  model.diffusion_model.: input_blocks / middle_block / output_blocks /
  time_embed / out), with the semantics of diffusers' UNet2DConditionModel
  for down_block_types [CrossAttnDownBlock2D, DownBlock2D], mid
  UNetMidBlock2DCrossAttn, up [UpBlock2D, CrossAttnUpBlock2D],
  layers_per_block 2, conv proj_in/out (use_linear_projection false),
  GEGLU feed-forward, GroupNorm 32 (eps 1e-5 in resnets, 1e-6 in the
  transformer's norm), timestep embedding flip_sin_to_cos, freq_shift 0.

The config dicts at the end are written into __metadata__["stipple.config"]
with diffusers field names.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ------------------------------------------------------------ hyperparameters
TE = dict(hidden=128, layers=2, heads=4, inter=512, vocab=49408, npos=77)
UN = dict(cin=32, ch=(64, 128), heads=4, ctx=128)
# What the UNet predicts: "v_prediction" (v = sqrt(a) eps - sqrt(1-a) x0).
PREDICTION = "v_prediction"


# ---------------------------------------------------------------- CLIP text
class CLIPAttn(nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x, mask):
        B, T, D = x.shape
        sh = lambda t: t.view(B, T, self.h, D // self.h).transpose(1, 2)  # noqa: E731
        q, k, v = sh(self.q_proj(x)) * (D // self.h) ** -0.5, sh(self.k_proj(x)), sh(self.v_proj(x))
        a = torch.softmax(q @ k.transpose(-1, -2) + mask, dim=-1)
        return self.out_proj((a @ v).transpose(1, 2).reshape(B, T, D))


class CLIPMLP(nn.Module):
    def __init__(self, d, i):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, i), nn.Linear(i, d)

    def forward(self, x):
        x = self.fc1(x)
        return self.fc2(x * torch.sigmoid(1.702 * x))


class CLIPLayer(nn.Module):
    def __init__(self, d, h, i):
        super().__init__()
        self.self_attn, self.layer_norm1 = CLIPAttn(d, h), nn.LayerNorm(d)
        self.mlp, self.layer_norm2 = CLIPMLP(d, i), nn.LayerNorm(d)

    def forward(self, x, mask):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEmb(nn.Module):
    def __init__(self, v, n, d):
        super().__init__()
        self.token_embedding, self.position_embedding = nn.Embedding(v, d), nn.Embedding(n, d)


class CLIPEncoder(nn.Module):
    def __init__(self, d, h, i, L):
        super().__init__()
        self.layers = nn.ModuleList(CLIPLayer(d, h, i) for _ in range(L))


class CLIPText(nn.Module):
    def __init__(self, c=TE):
        super().__init__()
        self.embeddings = CLIPEmb(c["vocab"], c["npos"], c["hidden"])
        self.encoder = CLIPEncoder(c["hidden"], c["heads"], c["inter"], c["layers"])
        self.final_layer_norm = nn.LayerNorm(c["hidden"])
        nn.init.normal_(self.embeddings.token_embedding.weight, std=0.02)
        nn.init.normal_(self.embeddings.position_embedding.weight, std=0.01)
        T = c["npos"]
        self.register_buffer("mask", torch.full((T, T), float("-inf")).triu(1), persistent=False)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.embeddings.token_embedding(ids) + self.embeddings.position_embedding.weight[:T]
        for layer in self.encoder.layers:
            x = layer(x, self.mask[:T, :T])
        return self.final_layer_norm(x)


# --------------------------------------------------------------------- UNet
def gn(c, eps=1e-5):
    return nn.GroupNorm(32, c, eps=eps)


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(a), torch.sin(a)], dim=-1)  # flip_sin_to_cos


class ResBlock(nn.Module):
    def __init__(self, cin, cout, temb):
        super().__init__()
        self.in_layers = nn.Sequential(gn(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(temb, cout))
        self.out_layers = nn.Sequential(gn(cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb, ctx):
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Attention(nn.Module):
    def __init__(self, d, dctx, heads):
        super().__init__()
        self.h = heads
        self.to_q = nn.Linear(d, d, bias=False)
        self.to_k = nn.Linear(dctx, d, bias=False)
        self.to_v = nn.Linear(dctx, d, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(d, d), nn.Dropout(0.0)])

    def forward(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        B, N, D = x.shape
        h = self.h
        q = self.to_q(x).view(B, N, h, D // h).transpose(1, 2)
        k = self.to_k(ctx).view(B, -1, h, D // h).transpose(1, 2)
        v = self.to_v(ctx).view(B, -1, h, D // h).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) * (D // h) ** -0.5, dim=-1)
        return self.to_out[0]((a @ v).transpose(1, 2).reshape(B, N, D))


class GEGLU(nn.Module):
    def __init__(self, d, inner):
        super().__init__()
        self.proj = nn.Linear(d, inner * 2)

    def forward(self, x):
        x, g = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(g)


class FeedForward(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.net = nn.ModuleList([GEGLU(d, 4 * d), nn.Dropout(0.0), nn.Linear(4 * d, d)])

    def forward(self, x):
        return self.net[2](self.net[0](x))


class BasicTransformerBlock(nn.Module):
    def __init__(self, d, dctx, heads):
        super().__init__()
        self.attn1, self.attn2 = Attention(d, d, heads), Attention(d, dctx, heads)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = FeedForward(d)

    def forward(self, x, ctx):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), ctx) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, c, dctx, heads):
        super().__init__()
        self.norm = gn(c, 1e-6)
        self.proj_in = nn.Conv2d(c, c, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(c, dctx, heads)])
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x, emb, ctx):
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x)).permute(0, 2, 3, 1).reshape(B, H * W, C)
        h = self.transformer_blocks[0](h, ctx)
        return self.proj_out(h.reshape(B, H, W, C).permute(0, 3, 1, 2)) + x


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.op = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x, emb, ctx):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, emb, ctx):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Conv(nn.Conv2d):
    def forward(self, x, emb, ctx):
        return super().forward(x)


class Seq(nn.ModuleList):
    def forward(self, x, emb, ctx):
        for m in self:
            x = m(x, emb, ctx)
        return x


class UNet(nn.Module):
    def __init__(self, c=UN):
        super().__init__()
        c1, c2 = c["ch"]
        te = 4 * c1
        hd, dctx = c["heads"], c["ctx"]
        self.time_embed = nn.Sequential(nn.Linear(c1, te), nn.SiLU(), nn.Linear(te, te))
        self.input_blocks = nn.ModuleList([
            Seq([Conv(c["cin"], c1, 3, padding=1)]),
            Seq([ResBlock(c1, c1, te), SpatialTransformer(c1, dctx, hd)]),
            Seq([ResBlock(c1, c1, te), SpatialTransformer(c1, dctx, hd)]),
            Seq([Downsample(c1)]),
            Seq([ResBlock(c1, c2, te)]),
            Seq([ResBlock(c2, c2, te)]),
        ])
        self.middle_block = Seq([ResBlock(c2, c2, te), SpatialTransformer(c2, dctx, hd), ResBlock(c2, c2, te)])
        self.output_blocks = nn.ModuleList([
            Seq([ResBlock(c2 + c2, c2, te)]),
            Seq([ResBlock(c2 + c2, c2, te)]),
            Seq([ResBlock(c2 + c1, c2, te), Upsample(c2)]),
            Seq([ResBlock(c2 + c1, c1, te), SpatialTransformer(c1, dctx, hd)]),
            Seq([ResBlock(c1 + c1, c1, te), SpatialTransformer(c1, dctx, hd)]),
            Seq([ResBlock(c1 + c1, c1, te), SpatialTransformer(c1, dctx, hd)]),
        ])
        self.out = nn.Sequential(gn(c1), nn.SiLU(), nn.Conv2d(c1, c["cin"], 3, padding=1))
        self.c1 = c1

    def forward(self, x, t, ctx):
        emb = self.time_embed(timestep_embedding(t, self.c1))
        hs = []
        for b in self.input_blocks:
            x = b(x, emb, ctx)
            hs.append(x)
        x = self.middle_block(x, emb, ctx)
        for b in self.output_blocks:
            x = b(torch.cat([x, hs.pop()], dim=1), emb, ctx)
        return self.out(x)


class Builtin(nn.Module):
    def __init__(self):
        super().__init__()
        self.te = CLIPText()
        self.unet = UNet()


TE_PREFIX = "cond_stage_model.transformer.text_model."
UNET_PREFIX = "model.diffusion_model."


def export_names(model):
    """Builtin state_dict -> {checkpoint name: tensor}."""
    out = {}
    for k, v in model.te.state_dict().items():
        out[TE_PREFIX + k] = v
    for k, v in model.unet.state_dict().items():
        out[UNET_PREFIX + k] = v
    return out


def configs(scaling, shift):
    te = {"model_type": "clip_text_model", "hidden_size": TE["hidden"], "intermediate_size": TE["inter"],
          "num_attention_heads": TE["heads"], "num_hidden_layers": TE["layers"], "vocab_size": TE["vocab"],
          "max_position_embeddings": TE["npos"], "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
          "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407, "projection_dim": TE["hidden"]}
    unet = {"_class_name": "UNet2DConditionModel", "sample_size": 8, "in_channels": UN["cin"],
            "out_channels": UN["cin"], "block_out_channels": list(UN["ch"]), "layers_per_block": 2,
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "mid_block_type": "UNetMidBlock2DCrossAttn",
            "attention_head_dim": UN["heads"], "num_attention_heads": None, "cross_attention_dim": UN["ctx"],
            "norm_num_groups": 32, "norm_eps": 1e-5, "act_fn": "silu", "flip_sin_to_cos": True,
            "freq_shift": 0, "transformer_layers_per_block": 1, "use_linear_projection": False,
            "upcast_attention": False, "downsample_padding": 1, "center_input_sample": False,
            "conv_in_kernel": 3, "conv_out_kernel": 3, "time_embedding_type": "positional"}
    vae = {"_class_name": "AutoencoderTiny", "in_channels": 3, "out_channels": 3, "latent_channels": 32,
           "encoder_block_out_channels": [64, 64, 64, 64], "decoder_block_out_channels": [64, 64, 64, 64],
           "num_encoder_blocks": [1, 3, 3, 3], "num_decoder_blocks": [3, 3, 3, 1],
           "act_fn": "relu", "upsampling_scaling_factor": 2, "latent_magnitude": 3, "latent_shift": 0.0,
           "scaling_factor": scaling, "shift_factor": shift, "force_upcast": False,
           "stipple_variant": "taef2", "image_range": [0, 1]}
    sched = {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
             "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": PREDICTION,
             "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "timestep_spacing": "leading",
             "rescale_betas_zero_snr": False, "trained_betas": None, "thresholding": False}
    return {"family": "sd1", "text_encoder": te, "unet": unet, "vae": vae, "scheduler": sched}
