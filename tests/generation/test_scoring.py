"""The public teacher-forced scoring entry point: layout of the inputs, guidance, validation."""

import pytest
import torch

from cogvideo_engine import teacher_forced_logits
from cogvideo_engine.generation.scoring import stream_input_ids
from cogvideo_engine.kernels.rules import Pass, StreamLayout

from helpers.models import SMALL_BOI, SMALL_GEOMETRY, small_model
from helpers.numerics import MODEL_FACTOR, assert_fp_close, float64_copy

FRAME = SMALL_GEOMETRY.frame_len


def clip(pass_, batch=2, text_len=5, num_targets=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    text = torch.randint(20000, SMALL_BOI, (batch, text_len), generator=gen)
    given = torch.randint(0, 20000, (batch, pass_.num_given, FRAME), generator=gen)
    target = torch.randint(0, 20000, (batch, num_targets or pass_.max_targets, FRAME), generator=gen)
    return text, given, target


def test_stream_inputs_shift_every_block_by_boi():
    layout = StreamLayout(Pass.STAGE2, 3, 2, SMALL_GEOMETRY)
    text = torch.tensor([[20001, 20002, 20003]])
    frames = torch.arange(5 * FRAME).reshape(1, 5, FRAME) % 20000
    ids = stream_input_ids(layout, text, frames[:, :3], frames[:, 3:], SMALL_BOI)
    assert ids.shape == (1, layout.length)
    for slot in range(5):
        block = ids[0, layout.index(slot, 0): layout.index(slot, 0) + FRAME]
        assert block[0] == SMALL_BOI and torch.equal(block[1:], frames[0, slot, :-1])


@pytest.mark.parametrize("pass_", list(Pass))
def test_scoring_equals_the_dense_forward(pass_):
    model = small_model(pass_.model_stage)
    text, given, target = clip(pass_)
    out = teacher_forced_logits(model, pass_, text, given, target, text_bias=1.4, boi_id=SMALL_BOI)
    layout = StreamLayout(pass_, text.shape[1], target.shape[1], SMALL_GEOMETRY)
    ids = stream_input_ids(layout, text, given, target, SMALL_BOI)
    full = model.forward_full(ids, layout, 1.4)
    exact = float64_copy(model).forward_full(ids, layout, 1.4)
    ctx = layout.context_len
    assert out.prefill_logits.shape == (2, ctx, 20000)
    assert out.logits.shape == (2, FRAME * target.shape[1], 20000)
    assert_fp_close(out.prefill_logits, exact[:, :ctx], full[:, :ctx], what="prefill", factor=MODEL_FACTOR)
    assert_fp_close(out.logits, exact[:, ctx:], full[:, ctx:], what="steps", factor=MODEL_FACTOR)
    lp = out.target_log_probs()
    assert lp.shape == (2, FRAME * target.shape[1]) and (lp <= 0).all()
    assert out.frame_nll().shape == (2, target.shape[1])
    assert out.guided_logits is None


def test_guidance_uses_its_own_stream_and_the_reference_bias_quirk():
    model = small_model(1)
    text, given, target = clip(Pass.STAGE1, num_targets=1)
    guider_text = text[:, :2]
    progress = []
    out = teacher_forced_logits(model, "stage1", text, given, target, text_bias=1.4, guider_text_ids=guider_text,
                                guidance_alpha=3.0, boi_id=SMALL_BOI, progress=lambda d, t: progress.append((d, t)))
    assert progress[-1] == (2 * FRAME, 2 * FRAME) and len(progress) == 2 * FRAME
    layout = StreamLayout("stage1", 2, 1, SMALL_GEOMETRY)
    ids = stream_input_ids(layout, guider_text, given, target, SMALL_BOI)

    def guider(m):  # the guider stream by hand: prefill with lt = 1.4, steps with lt = 0, as the reference
        cache = m.new_cache(layout, 2)
        prefill = m.extend(cache, ids[:, :layout.context_len], range(layout.context_len), 1.4)
        steps = torch.cat([m.extend(cache, ids[:, i:i + 1], [i], 0.0)
                           for i in range(layout.context_len, layout.length)], 1)
        return prefill, steps

    (prefill, steps), (exact_prefill, exact_steps) = guider(model), guider(float64_copy(model))
    assert_fp_close(out.guider_prefill_logits, exact_prefill, prefill, what="guider prefill", factor=MODEL_FACTOR)
    assert_fp_close(out.guider_logits, exact_steps, steps, what="guider steps", factor=MODEL_FACTOR)
    assert torch.equal(out.guided_logits, out.guider_logits + (out.logits - out.guider_logits) * 3.0)
    assert out.target_log_probs(guided=True).shape == (2, FRAME)


def test_bad_inputs_are_named():
    model = small_model(1)
    text, given, target = clip(Pass.STAGE1, num_targets=1)
    call = lambda **kw: teacher_forced_logits(model, **{  # noqa: E731
        "stage": "stage1", "text_ids": text, "given_frames": given, "target_frames": target, "boi_id": SMALL_BOI,
        **kw})
    with pytest.raises(ValueError, match="runs on the stage-2 model"):
        call(stage="stage2")
    with pytest.raises(ValueError, match="unknown pass"):
        call(stage="stage3")
    with pytest.raises(ValueError, match="takes 1 given frames, got 0"):
        call(given_frames=None)
    with pytest.raises(ValueError, match=r"target_frames must have shape \[2, \*, 16\], got \[2, 1, 10\]"):
        call(target_frames=target[..., :10])
    with pytest.raises(ValueError, match=r"scores 1\.\.4 target frames, got 5"):
        call(target_frames=target.repeat(1, 5, 1))
    with pytest.raises(ValueError, match=r"outside 0\.\.19999"):
        call(target_frames=target + 20000)
    with pytest.raises(TypeError, match="integer"):
        call(text_ids=text.float())
    with pytest.raises(ValueError, match="text length 75"):
        call(text_ids=text[:, :1].repeat(1, 75))
    with pytest.raises(ValueError, match=r"target_frames must have shape \[2, \*, 16\], got \[1, 1, 16\]"):
        call(target_frames=target[:1])
    with pytest.raises(ValueError, match="boi_id"):
        call(boi_id=10**6)
