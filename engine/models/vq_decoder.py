"""The icetk image decoder for compress rate 8 (``decs.1`` of ``ice_image.pt``): tokens -> RGB frames.

SPEC.md §7.2 / Appendix A: codebook ``quantize.embed.weight [20000, 256]``; ``conv_in`` 3x3 256->512, a middle
of ResnetBlock / single-head attention / ResnetBlock at 512 channels, then four levels (512, 256, 128, 128
channels; one ResnetBlock each, nearest x2 upsample + 3x3 conv after the top three), GroupNorm(32, eps 1e-6),
swish, ``conv_out`` 3x3 -> 3. 20x20 tokens give 160x160 pixels (60x60 give 480x480). The output is
de-normalised as icetk does (``out * std + mean`` per RGB channel, no clamp).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cogvideo_engine.kernels.reference import compute_dtype

IMAGE_STD = (0.30379, 0.32279, 0.32800)
IMAGE_MEAN = (0.79093, 0.76271, 0.75340)
CODEBOOK_SIZE, CODE_DIM = 20000, 256


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class _ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = _norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        if c_in != c_out:
            self.nin_shortcut = nn.Conv2d(c_in, c_out, 1)

    def forward(self, x):
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class _AttnBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        b, c, hh, ww = x.shape
        q = self.q(h).reshape(b, c, -1).transpose(1, 2)  # [B, HW, C]
        k = self.k(h).reshape(b, c, -1)
        v = self.v(h).reshape(b, c, -1)
        w = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)  # [B, HW_q, HW_k]
        out = torch.bmm(v, w.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class _Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Decoder(nn.Module):
    """icetk ``Decoder(channels_mult=[1, 1, 2, 4], channels=128, z=256, num_res_blocks=0)``."""

    def __init__(self, mult=(1, 1, 2, 4), channels=128, z_channels=CODE_DIM):
        super().__init__()
        block_in = channels * mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = _ResnetBlock(block_in, block_in)
        self.mid.attn_1 = _AttnBlock(block_in)
        self.mid.block_2 = _ResnetBlock(block_in, block_in)
        levels = []
        for level in reversed(range(len(mult))):
            up = nn.Module()
            up.block = nn.ModuleList([_ResnetBlock(block_in, channels * mult[level])])
            block_in = channels * mult[level]
            if level != 0:
                up.upsample = _Upsample(block_in)
            levels.insert(0, up)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            h = self.up[level].block[0](h)
            if level != 0:
                h = self.up[level].upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


MAX_PIXELS_PER_BATCH = 1_000_000  # output pixels per decoder call: ~0.5 GB per 128-channel fp32 activation


class _Codebook(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(CODEBOOK_SIZE, CODE_DIM)


class ImageDecoder(nn.Module):
    """Tokens to frames; state-dict keys are those of ``ice_image.pt`` (``quantize.*``, ``decs.1.*``)."""

    def __init__(self):
        super().__init__()
        self.quantize = _Codebook()
        self.decs = nn.ModuleDict({"1": _Decoder()})

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, max_pixels: int = MAX_PIXELS_PER_BATCH) -> torch.Tensor:
        """``LongTensor[B, h, w]`` or ``[B, h * w]`` (square) -> ``FloatTensor[B, 3, 8h, 8w]``, de-normalised.

        Runs in the decoder's dtype; the result is fp32 (fp64 for an fp64 decoder). Frames go through the
        decoder in batches of at most ``max_pixels`` output pixels (the activations are 128 channels at full
        resolution: 480x480 frames are decoded 4 at a time by default, 160x160 ones 39 at a time).
        """
        if tokens.dim() == 2:
            side = round(tokens.shape[1] ** 0.5)
            if side * side != tokens.shape[1]:
                raise ValueError(f"{tokens.shape[1]} tokens per frame is not a square grid; pass [B, h, w]")
            tokens = tokens.reshape(tokens.shape[0], side, side)
        if tokens.dim() != 3:
            raise ValueError(f"tokens must be [B, h, w] or [B, h*w], got shape {tuple(tokens.shape)}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= CODEBOOK_SIZE):
            raise ValueError(f"image tokens must lie in 0..{CODEBOOK_SIZE - 1}")
        weight = self.quantize.embed.weight
        dtype = compute_dtype(weight.dtype)
        std, mean = (torch.tensor(c, dtype=dtype, device=weight.device).view(1, 3, 1, 1)
                     for c in (IMAGE_STD, IMAGE_MEAN))
        per_batch = max(1, max_pixels // (64 * tokens.shape[1] * tokens.shape[2]))
        outs = []
        for chunk in tokens.split(per_batch):
            z = F.embedding(chunk.to(weight.device), weight).permute(0, 3, 1, 2)
            outs.append(self.decs["1"](z).to(dtype) * std + mean)
        return torch.cat(outs) if outs else torch.empty(0, 3, 8 * tokens.shape[1], 8 * tokens.shape[2])
