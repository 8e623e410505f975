"""The icetk compress-rate-8 decoder against an independent functional computation on random weights."""

import math

import pytest
import torch
import torch.nn.functional as F

from cogvideo_engine import load_image_decoder
from cogvideo_engine.io.sat import CheckpointError
from cogvideo_engine.models.vq_decoder import IMAGE_MEAN, IMAGE_STD, ImageDecoder

from helpers.numerics import MODEL_FACTOR, assert_fp_close


def random_ice_image(path, seed=0):
    """An ice_image.pt-like file: 'module' with decs.1 + codebook (+ an encoder tensor the decoder ignores)."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, t in ImageDecoder().state_dict().items():
        if name.endswith("weight") and t.dim() == 4:
            sd[name] = torch.randn(t.shape, generator=gen) / math.sqrt(t[0].numel())
        elif "norm" in name and name.endswith("weight"):
            sd[name] = 1 + 0.1 * torch.randn(t.shape, generator=gen)
        else:
            sd[name] = 0.1 * torch.randn(t.shape, generator=gen)
    sd["enc.conv_in.weight"] = torch.randn(128, 3, 3, 3, generator=gen)
    torch.save({"module": {k: v.half() for k, v in sd.items()}}, path)
    return {k: v.half().float() for k, v in sd.items()}


def functional_decode(sd, tokens, dtype=torch.float32):
    """Straight from the state dict with torch.nn.functional, following icetk's Decoder.forward, in ``dtype``."""
    sd = {k: v.to(dtype) for k, v in sd.items()}
    gn = lambda x, p: F.group_norm(x, 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)  # noqa: E731
    conv = lambda x, p, pad: F.conv2d(x, sd[p + ".weight"], sd[p + ".bias"], padding=pad)  # noqa: E731
    swish = lambda x: x * torch.sigmoid(x)  # noqa: E731

    def resnet(x, p):
        h = conv(swish(gn(x, p + ".norm1")), p + ".conv1", 1)
        h = conv(swish(gn(h, p + ".norm2")), p + ".conv2", 1)
        skip = conv(x, p + ".nin_shortcut", 0) if p + ".nin_shortcut.weight" in sd else x
        return skip + h

    def attn(x, p):
        h = gn(x, p + ".norm")
        b, c, hh, ww = x.shape
        q, k, v = (conv(h, p + "." + n, 0).reshape(b, c, hh * ww) for n in "qkv")
        w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(c), dim=-1)
        return x + conv(torch.einsum("bcj,bij->bci", v, w).reshape(b, c, hh, ww), p + ".proj_out", 0)

    d = "decs.1"
    z = sd["quantize.embed.weight"][tokens].permute(0, 3, 1, 2)
    h = conv(z, d + ".conv_in", 1)
    h = resnet(attn(resnet(h, d + ".mid.block_1"), d + ".mid.attn_1"), d + ".mid.block_2")
    for level in (3, 2, 1, 0):
        h = resnet(h, f"{d}.up.{level}.block.0")
        if level:
            h = conv(F.interpolate(h, scale_factor=2, mode="nearest"), f"{d}.up.{level}.upsample.conv", 1)
    h = conv(swish(gn(h, d + ".norm_out")), d + ".conv_out", 1)
    std, mean = (torch.tensor(c, dtype=dtype).view(1, 3, 1, 1) for c in (IMAGE_STD, IMAGE_MEAN))
    return h * std + mean


@pytest.fixture(scope="module")
def ice_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("icetk") / "ice_image.pt"
    return path, random_ice_image(path)


def test_decoder_matches_the_functional_computation(ice_image):
    path, sd = ice_image
    decoder = load_image_decoder(path)
    tokens = torch.randint(0, 20000, (2, 20, 20), generator=torch.Generator().manual_seed(1))
    out = decoder.decode(tokens)
    assert out.shape == (2, 3, 160, 160) and out.dtype == torch.float32
    exact, reference = functional_decode(sd, tokens, torch.float64), functional_decode(sd, tokens)
    assert_fp_close(out, exact, reference, factor=MODEL_FACTOR)
    assert torch.equal(decoder.decode(tokens.reshape(2, 400)), out)  # [B, 400] works too: the same computation
    # one frame per decoder call
    assert_fp_close(decoder.decode(tokens, max_pixels=1), exact, reference, factor=MODEL_FACTOR)
    exact_decoder = load_image_decoder(path, dtype=torch.float64)  # the decoder's own fp64 mode
    assert_fp_close(exact_decoder.decode(tokens), exact, ulps=64)


def test_decoder_parameter_count_matches_spec(ice_image):
    """SPEC.md Appendix A: decs.1 holds 22,172,803 parameters; the codebook is [20000, 256]."""
    decoder = load_image_decoder(ice_image[0])
    assert sum(p.numel() for p in decoder.decs["1"].parameters()) == 22_172_803
    assert decoder.quantize.embed.weight.shape == (20000, 256)


def test_super_resolution_grid_and_dtypes(ice_image):
    tokens = torch.randint(0, 20000, (1, 60, 60), generator=torch.Generator().manual_seed(2))
    path, sd = ice_image
    out32 = load_image_decoder(path).decode(tokens[:, :24, :24])
    assert out32.shape == (1, 3, 192, 192)
    low = load_image_decoder(path, dtype=torch.bfloat16).decode(tokens[:, :24, :24])
    assert low.dtype == torch.float32
    assert_fp_close(low, functional_decode(sd, tokens[:, :24, :24], torch.float64),
                    functional_decode(sd, tokens[:, :24, :24], torch.bfloat16), dtype=torch.bfloat16,
                    factor=MODEL_FACTOR)
    assert load_image_decoder(path).decode(tokens).shape == (1, 3, 480, 480)


def test_decoder_input_errors(ice_image, tmp_path):
    decoder = load_image_decoder(ice_image[0])
    with pytest.raises(ValueError, match="not a square"):
        decoder.decode(torch.zeros(1, 399, dtype=torch.long))
    with pytest.raises(ValueError, match=r"0\.\.19999"):
        decoder.decode(torch.full((1, 4, 4), 20000))
    torch.save({"module": {"quantize.embed.weight": torch.zeros(20000, 256)}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="missing"):
        load_image_decoder(tmp_path / "bad.pt")
