"""Token-level stage-1 and stage-2 pipelines: texts formed segment by segment, frame counts, merge order,
determinism, resuming stage 2 from saved stage-1 tokens."""

import torch

from cogvideo_engine.generation.pipeline import (interpolation_windows, merge_round, stage1_tokens, stage2_tokens,
                                                 video_text)
from cogvideo_engine.generation.sampler import ClusterSampler
from cogvideo_engine.generation.settings import PipelineSettings

from helpers.engines import ToyEncoder
from helpers.models import SMALL_GEOMETRY, small_model

FRAME = SMALL_GEOMETRY.frame_len


SETTINGS = PipelineSettings(max_batch=3)
SAMPLER = ClusterSampler(torch.arange(20000) % 500)


def test_texts_are_encoded_segment_by_segment():
    enc = ToyEncoder()
    ids = video_text(enc, 4, "a cat 视频")
    assert enc.calls == ["4.0秒", "a cat 视频"]
    assert ids == enc.encode("4.0秒") + [20001] + enc.encode("a cat 视频")


def test_stage1_runs_both_passes_with_the_pipeline_texts():
    enc = ToyEncoder()
    tokens = stage1_tokens(small_model(1), enc, "cat", 2, seed=7, sampler=SAMPLER, settings=SETTINGS,
                           backend="reference")
    assert tokens.shape == (2, 5, FRAME) and (tokens >= 0).all() and (tokens < 20000).all()
    assert enc.calls == ["cat 高清摄影", "4.0秒", "cat 视频", "4.0秒", "视频"]
    again = stage1_tokens(small_model(1), ToyEncoder(), "cat", 2, seed=7, sampler=SAMPLER, settings=SETTINGS,
                          backend="reference")
    assert torch.equal(tokens, again)
    assert not torch.equal(tokens[0], tokens[1])  # samples differ by key


def test_stage2_rounds_merge_to_33_frames_and_resume_from_saved_tokens():
    enc = ToyEncoder()
    first = torch.randint(0, 20000, (2, 5, FRAME), generator=torch.Generator().manual_seed(0))
    frames = stage2_tokens(small_model(2), enc, "cat", first, seed=3, sampler=SAMPLER, settings=SETTINGS,
                           backend="reference")
    assert frames.shape == (2, 33, FRAME)
    assert [c for c in enc.calls if c.endswith("秒")] == ["2.0秒", "1.0秒", "0.5秒"]
    assert torch.equal(frames[:, ::8], first)  # the stage-1 frames stay in place: 0, 8, 16, 24, 32


def test_merge_order_and_windows():
    assert interpolation_windows(5) == [(0, 1, 2), (2, 3, 4)]
    parents = torch.arange(5)[None, :, None].expand(1, 5, 1)
    generated = torch.tensor([[[[10], [11]], [[12], [13]]]])
    assert merge_round(parents, generated)[0, :, 0].tolist() == [0, 10, 1, 11, 2, 12, 3, 13, 4]
