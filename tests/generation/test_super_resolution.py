"""One-shot super-resolution sampling: keyed, batch-independent, with the shipped sampler settings."""

import torch

from cogvideo_engine.generation.sampler import ClusterSampler
from cogvideo_engine.generation.settings import SR_SAMPLING
from cogvideo_engine.generation.super_resolution import frames_per_batch, super_resolve

from helpers.models import SMALL_BOI, SMALL_LOCAL, small_dsr


def _labels():
    return torch.randperm(20000, generator=torch.Generator().manual_seed(0)) % 500


def test_shipped_settings():
    assert (SR_SAMPLING.temperature, SR_SAMPLING.top_k, SR_SAMPLING.temperature2) == (1.0, 6, 0.6)


def test_tokens_are_keyed_and_independent_of_batching():
    model, sampler = small_dsr(seed=5), ClusterSampler(_labels())
    low = torch.randint(0, 20000, (3, SMALL_LOCAL.num_low), generator=torch.Generator().manual_seed(2))
    texts = [[4, 5], [4, 5], [6]]
    keys = [(7, 0, 3, 0, f) for f in range(3)]
    together = super_resolve(model, texts, low, sampler, keys, SMALL_BOI, max_batch=3, backend="reference")
    one_by_one = super_resolve(model, texts, low, sampler, keys, SMALL_BOI, max_batch=1, backend="reference")
    assert together.tokens.shape == (3, SMALL_LOCAL.num_queries)
    assert torch.equal(together.tokens, one_by_one.tokens)
    assert one_by_one.batch_frames == [1, 1, 1] and len(together.frame_seconds) == 3
    # each token is the keyed draw from its own row of logits, inside the chosen cluster
    logits = model.logits(model.hidden_states(texts[:1], low[:1], SMALL_BOI, backend="reference"))[0]
    expect = sampler.sample(logits, SR_SAMPLING, [keys[0] + (0, j) for j in range(SMALL_LOCAL.num_queries)])
    assert torch.equal(together.tokens[0], expect)
    other_seed = super_resolve(model, texts, low, sampler, [(8, 0, 3, 0, f) for f in range(3)], SMALL_BOI,
                               backend="reference")
    assert not torch.equal(other_seed.tokens, together.tokens)


def test_memory_aware_batch_size():
    model = small_dsr()
    assert 1 <= frames_per_batch(model, 12) <= 12
    assert frames_per_batch(model, 12, memory_fraction=0.0) == 1
