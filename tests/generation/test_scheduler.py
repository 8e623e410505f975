"""The wavefront schedule: step counts that follow from the rules, and no position fed before its keys."""

from cogvideo_engine.generation.scheduler import feed_steps, schedule
from cogvideo_engine.kernels.rules import FrameGeometry, Pass, StreamLayout

from helpers.models import SMALL_GEOMETRY

REAL = FrameGeometry()


def test_released_step_counts_follow_from_the_rules():
    stage2 = StreamLayout(Pass.STAGE2, 9, 2)
    steps = feed_steps(stage2, num_layers=48)
    lags = {steps[stage2.index(4, p)] - steps[stage2.index(3, p)] for p in range(400)}
    assert lags == {190} and len(schedule(stage2, 48, "wavefront")) == 590
    assert len(schedule(stage2, 48, "sequential")) == 800
    assert len(schedule(StreamLayout(Pass.STAGE1, 20, 4), 48, "wavefront")) == 1600  # full causal: no overlap
    assert len(schedule(StreamLayout(Pass.FIRST_FRAME, 13, 1), 48, "wavefront")) == 400


def test_windowed_stage1_chains_frames_at_the_same_lag():
    windowed = StreamLayout(Pass.STAGE1, 20, 4, stage1_windowed=True)
    plan = schedule(windowed, 48, "wavefront")
    assert len(plan) == 970 and max(len(s) for s in plan) == 3


def test_wavefront_steps_never_feed_a_position_before_its_keys():
    lay = StreamLayout(Pass.STAGE2, 5, 2, SMALL_GEOMETRY)
    steps = feed_steps(lay, num_layers=2)
    for q, step in steps.items():
        for parity in (0, 1):
            for k in lay.temporal_keys(q, parity) + lay.spatial_keys(q):
                if k in steps and k != q:
                    assert steps[k] < step
        if lay.block_pos(q) > 0:
            assert steps[q - 1] < step  # the input token exists
