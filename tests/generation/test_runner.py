"""The fused-weight runner with its static cache against the reference model, including rows of different
text lengths sharing one forward (batched guidance)."""

import pytest
import torch

from cogvideo_engine.generation.runner import ModelRunner, batch_invariance_status, layouts_for
from cogvideo_engine.generation.scoring import stream_input_ids
from cogvideo_engine.kernels.registry import backend_status
from cogvideo_engine.kernels.rules import Pass

from helpers.models import SMALL_BOI, SMALL_GEOMETRY, small_model
from helpers.numerics import FUSED_FACTOR, assert_fp_close

FRAME = SMALL_GEOMETRY.frame_len
BACKENDS = [b.name for b in backend_status("cpu") if b.available and b.name in ("reference", "cpu")]


def _stream(pass_, text, given, target):
    return stream_input_ids(small_model(pass_.model_stage).config.layout(pass_, text.shape[1], target.shape[1]),
                            text, given, target, SMALL_BOI)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pass_", list(Pass))
def test_runner_matches_the_reference_model_with_rows_of_different_text_lengths(pass_, backend):
    """Each row against the reference model run alone, in fp32 (the reference) and fp64 (exact)."""
    model = small_model(pass_.model_stage)
    exact_model = small_model(pass_.model_stage, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    n_t = pass_.max_targets
    given = torch.randint(0, 20000, (1, pass_.num_given, FRAME), generator=gen)
    target = torch.randint(0, 20000, (1, n_t, FRAME), generator=gen)
    texts = [torch.randint(20000, SMALL_BOI, (1, t), generator=gen) for t in (5, 2)]
    prefill_bias, step_bias = torch.tensor([1.4, 1.4]), torch.tensor([1.4, 0.0])  # the guider quirk per row

    def alone(m, i):  # the reference model on row i alone: (prefill logits, step logits, stream ids)
        lay = model.config.layout(pass_, texts[i].shape[1], n_t)
        ids = stream_input_ids(lay, texts[i], given, target, SMALL_BOI)
        cache = m.new_cache(lay, 1)
        ctx = lay.context_len
        pre = m.extend(cache, ids[:, :ctx], range(ctx), float(prefill_bias[i]))
        steps = [m.extend(cache, ids[:, j:j + 1], [j], float(step_bias[i])) for j in range(ctx, ctx + 2 * FRAME)
                 if j < lay.length]
        return pre, torch.cat(steps, 1), ids

    expected = [alone(model, i) for i in range(2)]
    exact = [alone(exact_model, i) for i in range(2)]

    runner = ModelRunner(model, backend)
    cache = runner.new_cache(layouts_for(model, pass_, [5, 2], n_t))
    given_ids = torch.cat([torch.full((1, pass_.num_given, 1), SMALL_BOI), given[..., :-1]], -1).repeat(2, 1, 1)
    pre = runner.prefill(cache, [t[0] for t in texts], given_ids, prefill_bias, logits=True)
    for i, ((ref_pre, _, _), (exact_pre, _, _)) in enumerate(zip(expected, exact, strict=True)):
        t = texts[i].shape[1]
        assert_fp_close(pre[i, :t], exact_pre[0, :t], ref_pre[0, :t], factor=FUSED_FACTOR,
                        what=f"row {i} text prefill")
        assert_fp_close(pre[i, cache.text_capacity:], exact_pre[0, t:], ref_pre[0, t:], factor=FUSED_FACTOR,
                        what=f"row {i} frame prefill")
    first = pass_.num_given
    steps = []
    for j in range(min(2 * FRAME, n_t * FRAME)):
        slot, p = first + j // FRAME, j % FRAME
        inputs = torch.stack([expected[i][2][0, texts[i].shape[1] + FRAME * slot + p] for i in range(2)])[:, None]
        steps.append(runner.step(cache, [(slot, p)], inputs, step_bias))
    steps = torch.cat(steps, 1)
    for i, ((_, ref_steps, _), (_, exact_steps, _)) in enumerate(zip(expected, exact, strict=True)):
        assert_fp_close(steps[i], exact_steps[0], ref_steps[0], factor=FUSED_FACTOR, what=f"row {i} steps")
    assert cache.nbytes == 2 * 2 * model.config.num_layers * 2 * (cache.rule("spatial", 0).cache_len + 1) * \
        model.config.hidden_size * 4 or not pass_.mixes_temporal


def test_cache_rows_must_share_the_pass():
    model = small_model(1)
    runner = ModelRunner(model, "reference")
    with pytest.raises(ValueError, match="share the pass"):
        runner.new_cache(layouts_for(model, "stage1", [3], 1) + layouts_for(model, "stage1", [3], 2))


def test_a_rows_logits_do_not_depend_on_the_other_rows():
    """Per-row logits alone vs in a batch of 3 (other prompts and text lengths) agree within fp32 rounding:
    attention is per row, but the GEMMs' blocking depends on the batch size (reassociation), which is the one
    way a batch can flip a near-tie token."""
    model, exact_model = small_model(2), small_model(2, dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    given = torch.randint(0, 20000, (3, 3, FRAME), generator=gen)
    texts = [torch.randint(20000, SMALL_BOI, (t,), generator=gen) for t in (4, 7, 2)]
    boi = torch.full((3, 3, 1), SMALL_BOI)
    given_ids = torch.cat([boi, given[..., :-1]], -1)
    feed = torch.full((3, 1), SMALL_BOI)

    def alone(m):
        runner = ModelRunner(m, "reference")
        cache = runner.new_cache(layouts_for(m, "stage2", [7], 2))
        runner.prefill(cache, texts[1:2], given_ids[1:2], torch.full((1,), 1.4))
        return runner.step(cache, [(3, 0)], feed[:1], torch.full((1,), 1.4))

    runner = ModelRunner(model, "reference")
    together = runner.new_cache(layouts_for(model, "stage2", [4, 7, 2], 2))
    runner.prefill(together, texts, given_ids, torch.full((3,), 1.4))
    a = runner.step(together, [(3, 0)], feed, torch.full((3,), 1.4))
    assert_fp_close(a[1], alone(exact_model)[0], alone(model)[0], factor=FUSED_FACTOR)


@pytest.mark.skipif(not batch_invariance_status("cpu", torch.float32)[0],
                    reason=batch_invariance_status("cpu", torch.float32)[1])
@pytest.mark.parametrize("backend", [None, "reference"])
def test_decode_logits_are_batch_invariant(backend):
    """With the batch-invariant decode a row's logits are bit-identical alone, at another place in a batch and
    beside other prompts, text lengths and frames: what makes batched requests' tokens their own. The caches
    share their text capacity, as the serving loop's do (the reference attention's softmax runs over every cache
    row, so its reduction order follows the cache's length)."""
    model = small_model(2)
    gen = torch.Generator().manual_seed(3)
    given = torch.randint(0, 20000, (5, 3, FRAME), generator=gen)
    texts = [torch.randint(20000, SMALL_BOI, (t,), generator=gen) for t in (4, 7, 2, 9, 5)]
    given_ids = torch.cat([torch.full((5, 3, 1), SMALL_BOI), given[..., :-1]], -1)
    runner = ModelRunner(model, backend)
    assert runner.batch_invariant

    def logits(rows):  # the decode logits of a batch of the given rows, two positions per step as the wavefront
        cache = runner.new_cache(layouts_for(model, "stage2", [texts[i].numel() for i in rows], 2), text_capacity=9)
        runner.prefill(cache, [texts[i] for i in rows], given_ids[rows], torch.full((len(rows),), 1.4))
        feed = torch.tensor([[SMALL_BOI, 7]] * len(rows))
        return runner.step(cache, [(3, 0), (4, 3)], feed, torch.full((len(rows),), 1.4))

    alone = logits([1])[0]
    assert torch.equal(logits([0, 1, 2])[1], alone)
    assert torch.equal(logits([3, 4, 2, 0, 1])[4], alone)
    assert not torch.equal(logits([0, 1, 2])[0], alone)  # the rows do differ
