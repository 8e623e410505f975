"""Small models in small geometries: every rule case (window edges, shifted and clamped regions) in a few cells."""

import torch

from cogvideo_engine.generation.sampler import ClusterSampler
from cogvideo_engine.kernels.local_rules import LocalGeometry
from cogvideo_engine.kernels.rules import FrameGeometry
from cogvideo_engine.models.cogvideo import CogVideoModel
from cogvideo_engine.models.config import DsrConfig, tiny_config
from cogvideo_engine.models.dsr import DsrModel
from cogvideo_engine.models.random_init import init_random_weights, random_dsr_model

SMALL_GEOMETRY = FrameGeometry(grid=4, window=2, shift=1)
"""4x4 frames, window 2, shift 1: every stage-2 window case (edges, shifted, clamped regions) in 16 cells."""

SMALL_VOCAB = 20100
SMALL_BOI = 20099
"""The BOI id of the small models (their vocabulary's last id)."""

SMALL_LOCAL = LocalGeometry(grid=12, low_grid=4)
"""12x12 super-resolution frames from 4x4: windows clipped at every edge."""


def small_model(stage: int, seed: int = 0, geometry: FrameGeometry = SMALL_GEOMETRY,
                dtype=torch.float32) -> CogVideoModel:
    """A 2-layer CogVideo stage model (hidden 32, 2 heads) with peaky random weights."""
    cfg = tiny_config(stage, num_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=SMALL_VOCAB,
                      geometry=geometry)
    return init_random_weights(CogVideoModel(cfg), seed=seed).to(dtype).eval()


def small_dsr(seed: int = 0, local: LocalGeometry = SMALL_LOCAL, text_len: int = 12) -> DsrModel:
    """A 2-layer DSR model (hidden 32, 2 heads) with random weights."""
    cfg = DsrConfig(num_layers=2, hidden_size=32, num_attention_heads=2, vocab_size=SMALL_VOCAB, text_len=text_len,
                    local=local)
    return random_dsr_model(cfg, seed)


def toy_sampler(num_clusters: int = 500) -> ClusterSampler:
    """A cluster sampler with token ``t`` in cluster ``t % num_clusters``."""
    return ClusterSampler(torch.arange(20000) % num_clusters)
