"""Engines over the small models (4x4 frames): the whole serving path -- stage 1, the three interpolation rounds,
super-resolution, VQ decode -- in a second or two per video."""

import torch

from cogvideo_engine.api import Engine
from cogvideo_engine.models.random_init import random_image_decoder_state
from cogvideo_engine.models.vq_decoder import ImageDecoder

from .models import SMALL_BOI, small_dsr, small_model, toy_sampler


class ToyEncoder:
    """Deterministic stand-in for icetk: one id per character, recording every call."""

    newline_id = 20001
    boi_id = SMALL_BOI

    def __init__(self):
        self.calls = []

    def encode(self, text):
        self.calls.append(text)
        return [20002 + (ord(c) % 90) for c in text]


def small_decoder(seed: int = 0) -> ImageDecoder:
    decoder = ImageDecoder()
    decoder.load_state_dict(random_image_decoder_state(seed))
    return decoder.eval()


def small_engine(*, dsr: bool = False, backend: str | None = None, **kwargs) -> Engine:
    """An :class:`Engine` of the small stage models (and a small DSR model with ``dsr``), the toy encoder, a random
    VQ decoder and the toy cluster sampler; ``kwargs`` go to ``Engine``."""
    return Engine(small_model(1, seed=1), small_model(2, seed=2), ToyEncoder(), small_decoder(), toy_sampler(),
                  backend=backend, dsr_model=small_dsr(seed=3) if dsr else None, **kwargs)


def tokens_of(videos) -> torch.Tensor:
    """``[S, F, N]``: the tokens of a request's videos (one per sample)."""
    return torch.stack([v.tokens for v in videos])
