"""The cluster sampler and its keyed randomness."""

from dataclasses import replace

import pytest
import torch

from cogvideo_engine.generation.sampler import ClusterSampler, keyed_uniforms, keyed_uniforms_last
from cogvideo_engine.generation.settings import VIDEO_SAMPLING, PassSampling

from helpers.models import toy_sampler
from helpers.numerics import assert_fp_close


def test_keyed_uniforms_depend_only_on_the_key():
    assert keyed_uniforms((1, 2, 3)) == keyed_uniforms((1, 2, 3))
    assert keyed_uniforms((1, 2, 3)) != keyed_uniforms((1, 2, 4))
    u = [keyed_uniforms((7, i))[0] for i in range(4000)]
    assert 0.47 < sum(u) / len(u) < 0.53 and min(u) >= 0 and max(u) < 1


def test_sampler_matches_its_exact_distribution():
    """Empirical token frequencies of many keyed draws against the exact two-stage probabilities."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.full((1, 20000), -30.0)
    hot = torch.randperm(20000, generator=gen)[:40]
    logits[0, hot] = torch.randn(40, generator=gen) * 2
    sampler = toy_sampler(8)
    params = replace(VIDEO_SAMPLING, top_k=3)
    exact = sampler.token_distribution(logits, params)[0]
    n = 6000
    drawn = sampler.sample(logits.expand(n, -1), params, [(1, i) for i in range(n)])
    freq = torch.bincount(drawn, minlength=20000).double() / n
    assert (freq - exact.double()).abs().max() < 0.02
    # top_k counts clusters: tokens of clusters outside the top 3 are never drawn
    mass = sampler.cluster_mass(logits, params)[0]
    allowed = set(mass.topk(3).indices.tolist())
    assert {int(sampler.labels[t]) for t in drawn.tolist()} <= allowed


def test_in_cluster_draw_equals_the_full_width_masked_softmax():
    """The draw over the chosen cluster's members is the original's full-width draw: logits outside the
    cluster set to -65504, softmax(. / temperature2) over all 20000, inverse CDF with the same uniform."""
    from cogvideo_engine.generation.sampler import keyed_uniforms

    sampler = ClusterSampler(torch.randperm(20000, generator=torch.Generator().manual_seed(1)) % 500)
    params = VIDEO_SAMPLING
    logits = torch.randn(300, 20000, generator=torch.Generator().manual_seed(2)) * 3
    keys = [(9, i) for i in range(300)]
    drawn = sampler.sample(logits, params, keys)
    clusters = sampler.labels[drawn]
    scaled = logits / params.temperature
    masked = torch.where(sampler.labels[None, :] == clusters[:, None], scaled, torch.full_like(scaled, -65504.0))
    cdf = torch.softmax(masked / params.temperature2, -1).double().cumsum(-1)
    u = torch.tensor([keyed_uniforms(k)[1] for k in keys], dtype=torch.float64)[:, None]
    assert torch.equal(drawn, torch.searchsorted(cdf, u, right=True).squeeze(1))


def test_sampler_temperatures():
    sampler = toy_sampler(num_clusters=1)  # one cluster: the draw is softmax(logits / (t * t2))
    logits = torch.zeros(1, 20000)
    logits[0, :3] = torch.tensor([2.0, 1.0, 0.0])
    params = PassSampling(temperature=2.0, top_k=1, temperature2=0.5)
    dist = sampler.token_distribution(logits, params)[0, :3]
    expected = torch.tensor([2.0, 1.0, 0.0])
    assert_fp_close(dist / dist.sum(), torch.softmax(expected.double(), 0), torch.softmax(expected, 0))


def test_sampler_inputs():
    with pytest.raises(ValueError, match="cover the 20000"):
        ClusterSampler(torch.zeros(10, dtype=torch.long))
    with pytest.raises(FileNotFoundError, match=r"cluster_label2\.npy"):
        ClusterSampler.from_file("/nonexistent/cluster_label2.npy")
    with pytest.raises(ValueError, match="keys"):
        toy_sampler().sample(torch.zeros(2, 20000), VIDEO_SAMPLING, [(1,)])
    with pytest.raises(ValueError, match="exceeds the sampler's 8 clusters"):
        toy_sampler(8).sample(torch.zeros(1, 20000), VIDEO_SAMPLING, [(1,)])



def test_vectorised_keyed_uniforms_equal_the_scalar_ones():

    last = torch.tensor([0, 1, 2, 399, 3599, 10**6, 2**62 + 12345])
    for prefix in [(1234, 0, 3, 0, 7, 0), (2**63 + 5, -1, 2**40), ()]:
        expect = torch.tensor([keyed_uniforms(prefix + (int(j),)) for j in last], dtype=torch.float64)
        assert torch.equal(keyed_uniforms_last(prefix, last), expect)
