"""The C++ decode stack (``kernels.decode_stack``: a decode step's whole forward in one call) against its twin, the
runner's Python forward with the same batch-invariant linears and csrc attention, and both against float64: every
pass (first frame: one channel; stage 1: full causal temporal channel; stage 2: windowed, both layer parities),
rows of different text lengths and text biases, one and two positions per step, padded queries."""

import pytest
import torch

from cogvideo_engine.generation.runner import ModelRunner, layouts_for
from cogvideo_engine.kernels.decode_stack import LAYER_TENSORS, MATRICES, DecodeStack, decode_stack_available
from cogvideo_engine.kernels.rules import Pass

from helpers.models import SMALL_BOI, SMALL_GEOMETRY, small_model
from helpers.numerics import MODEL_FACTOR, assert_fp_close

FRAME = SMALL_GEOMETRY.frame_len
AVAILABLE, WHY = decode_stack_available()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=WHY)


def _feed(runner, model, pass_, texts, given, step_bias, steps):
    """Prefill the rows, then ``steps`` (positions, inputs) through ``runner``; the logits of every step and the
    cache."""
    cache = runner.new_cache(layouts_for(model, pass_, [t.numel() for t in texts], pass_.max_targets),
                             text_capacity=9)
    given_ids = torch.cat([torch.full((len(texts), pass_.num_given, 1), SMALL_BOI), given[..., :-1]], -1)
    runner.prefill(cache, texts, given_ids, torch.full((len(texts),), 1.4))
    return [runner.step(cache, positions, inputs, step_bias) for positions, inputs in steps], cache


@pytest.mark.parametrize("pass_", [Pass.FIRST_FRAME, Pass.STAGE1, Pass.STAGE2])
def test_decode_stack_matches_its_python_twin_and_float64(pass_):
    model = small_model(pass_.model_stage)
    exact_model = small_model(pass_.model_stage, dtype=torch.float64)
    gen = torch.Generator().manual_seed(5)
    texts = [torch.randint(20000, SMALL_BOI, (t,), generator=gen) for t in (5, 2, 9)]
    given = torch.randint(0, 20000, (3, max(pass_.num_given, 1), FRAME), generator=gen)[:, :pass_.num_given]
    step_bias = torch.tensor([1.4, 0.0, 1.4])  # the guider quirk: an unguided row's steps without the bias
    first = pass_.num_given
    positions = [[(first, p)] for p in range(FRAME)]  # the first target frame, one position per step
    if pass_.max_targets > 1:  # then two per step (the wavefront's shape), into the second target
        positions += [[(first, p), (first + 1, p)] for p in range(4)]
    steps = [(pos, torch.randint(0, 20000, (3, len(pos)), generator=gen)) for pos in positions]

    fused = ModelRunner(model, "cpu")
    twin = ModelRunner(model, "cpu", decode_stack=False)
    exact = ModelRunner(exact_model, "reference")
    assert fused.decode_stack is not None and twin.decode_stack is None and exact.decode_stack is None
    got, got_cache = _feed(fused, model, pass_, texts, given, step_bias, steps)
    ref, ref_cache = _feed(twin, model, pass_, texts, given, step_bias, steps)
    want, want_cache = _feed(exact, exact_model, pass_, texts, given, step_bias, steps)
    # over all steps at once: a single step's own error swings by 10x (a few ulps of the logits either way)
    assert_fp_close(torch.cat(got, 1), torch.cat(want, 1), torch.cat(ref, 1), factor=MODEL_FACTOR,
                    what="steps' logits")
    for c in range(len(got_cache.k)):  # what the steps wrote into the cache (and the prefill before them)
        for name in ("k", "v"):
            assert_fp_close(getattr(got_cache, name)[c], getattr(want_cache, name)[c],
                            getattr(ref_cache, name)[c], factor=MODEL_FACTOR, what=f"channel {c} {name} cache")


def test_decode_stack_rows_are_batch_invariant_and_padding_writes_only_the_scratch_row():
    """A row's logits are bit-identical alone and in a batch; a padded query (stream index -1) writes the scratch
    row only, and the real queries beside it get the logits they get without it."""
    model = small_model(2)
    runner = ModelRunner(model, "cpu")
    gen = torch.Generator().manual_seed(6)
    texts = [torch.randint(20000, SMALL_BOI, (t,), generator=gen) for t in (4, 7)]
    given = torch.randint(0, 20000, (2, 3, FRAME), generator=gen)
    inputs = torch.randint(0, 20000, (2, 2), generator=gen)
    steps = [([(3, 0), (4, 0)], inputs)]
    both, _ = _feed(runner, model, Pass.STAGE2, texts, given, torch.full((2,), 1.4), steps)
    alone, cache = _feed(runner, model, Pass.STAGE2, texts[1:], given[1:], torch.full((1,), 1.4),
                         [(p, i[1:]) for p, i in steps])
    assert torch.equal(both[0][1], alone[0][0])

    before = [t.clone() for t in cache.k + cache.v]
    q_index = runner.frame_index(cache, [(3, 1), (4, 1)])
    padded = torch.stack([q_index[0, 0], torch.tensor(-1)])[None]
    ids = torch.tensor([[11, 12]])
    logits = runner._forward(cache, ids, padded, runner.position_ids(cache, padded), torch.full((1,), 1.4), True,
                             invariant=True)
    solo = q_index[:, :1]
    for now, then in zip(cache.k + cache.v, before, strict=True):
        changed = (now != then).flatten(3).any(-1)  # [layers, B, rows]
        rows = changed.any(0).any(0).nonzero().flatten().tolist()
        row = cache.text_capacity + 3 * FRAME + 1
        assert rows == [row, cache.scratch_row], rows
    alone_logits = runner._forward(cache, ids[:, :1], solo, runner.position_ids(cache, solo), torch.full((1,), 1.4),
                                   True, invariant=True)
    assert torch.equal(logits[0, 0], alone_logits[0, 0])


def test_decode_stack_refuses_what_does_not_fit():
    model = small_model(2)
    runner = ModelRunner(model, "cpu")
    w = runner.layers[0]
    layer = {name: torch.zeros(4) for name in LAYER_TENSORS}
    mlp = model.transformer.layers[0].mlp
    layer.update(qkv_w=w.qkv_w, base_w=w.base_out_w, mixed_w=w.mixed_out_w, up_w=mlp.dense_h_to_4h.weight,
                 down_w=mlp.dense_4h_to_h.weight)
    with pytest.raises(ValueError, match="ln_in_w must be a contiguous fp32 vector of 32"):
        DecodeStack([layer], torch.ones(32), torch.zeros(32), runner.logits_head, heads=2, head_dim=16, eps=1e-5)
    with pytest.raises(ValueError, match=r"takes up_b as a torch\.float32 CPU tensor, got torch\.float64"):
        DecodeStack([{**layer, "up_b": torch.zeros(4, dtype=torch.float64)}], torch.ones(32), torch.zeros(32),
                    runner.logits_head, heads=2, head_dim=16, eps=1e-5)
    with pytest.raises(ValueError, match="decode_stack cannot run here: it runs the csrc CPU attention"):
        ModelRunner(model, "reference", decode_stack=True)
    with pytest.raises(ValueError, match="batch-invariant"):
        ModelRunner(model, "cpu", batch_invariant=False, decode_stack=True)


def test_decode_stack_says_where_a_steps_time_went():
    model = small_model(2)
    runner = ModelRunner(model, "cpu")
    gen = torch.Generator().manual_seed(7)
    texts = [torch.randint(20000, SMALL_BOI, (4,), generator=gen)]
    given = torch.randint(0, 20000, (1, 3, FRAME), generator=gen)
    _feed(runner, model, Pass.STAGE2, texts, given, torch.full((1,), 1.4), [([(3, 0)], torch.tensor([[5]]))])
    t = runner.decode_stack.last_timings
    assert t["linear"] > 0 and t["attention"] > 0 and t["linear"] + t["attention"] <= t["total"], t


def test_bf16_decode_weights_are_the_fp32_stack_on_the_rounded_weights():
    """``decode_weights=torch.bfloat16``: the stack streams bf16 copies of its matrices and the logits head, and its
    logits are bit for bit the fp32 stack's on those matrices widened back (the linears widen them exactly as they
    read them); against the model's own fp32 logits they differ by the weights' rounding."""
    model = small_model(2)
    half = ModelRunner(model, "cpu", decode_weights=torch.bfloat16)
    tensors, final_w, final_b, head = half.decode_stack._tensors
    assert all(t.dtype == torch.bfloat16 for layer in tensors for n, t in zip(LAYER_TENSORS, layer, strict=True)
               if n in MATRICES) and head.dtype == torch.bfloat16
    widened = ModelRunner(model, "cpu")
    layers = [{n: t.float() if n in MATRICES else t for n, t in zip(LAYER_TENSORS, layer, strict=True)}
              for layer in tensors]
    widened.decode_stack = DecodeStack(layers, final_w, final_b, head.float(), heads=half.heads,
                                       head_dim=half.head_dim, eps=1e-5)
    full = ModelRunner(model, "cpu")
    gen = torch.Generator().manual_seed(8)
    texts = [torch.randint(20000, SMALL_BOI, (t,), generator=gen) for t in (4, 7)]
    given = torch.randint(0, 20000, (2, 3, FRAME), generator=gen)
    steps = [([(3, p), (4, p)], torch.randint(0, 20000, (2, 2), generator=gen)) for p in range(6)]
    runs = [torch.cat(_feed(r, model, Pass.STAGE2, texts, given, torch.full((2,), 1.4), steps)[0], 1)
            for r in (half, widened, full)]
    assert torch.equal(runs[0], runs[1])
    rel = float((runs[0] - runs[2]).abs().max() / runs[2].abs().max())
    assert 0 < rel < 0.05, rel  # (a sanity bound: the exactness above is the check)


def test_bf16_decode_weights_need_the_decode_stack():
    model = small_model(2)
    with pytest.raises(ValueError, match=r"decode_weights must be None, torch\.float32 or torch\.bfloat16"):
        ModelRunner(model, "cpu", decode_weights=torch.float16)
    with pytest.raises(ValueError, match=r"decode_stack \(decode_weights=bfloat16 needs it\) cannot run here: "
                                         "decode_stack=False"):
        ModelRunner(model, "cpu", decode_stack=False, decode_weights=torch.bfloat16)
    with pytest.raises(ValueError, match="cannot run here: it runs the csrc CPU attention"):
        ModelRunner(model, "reference", decode_weights=torch.bfloat16)
    assert ModelRunner(model, "cpu", decode_weights=torch.float32).decode_weights is None
    with pytest.raises(ValueError, match=r"takes ln_in_w as a torch\.float32 CPU tensor, got torch\.bfloat16"):
        runner = ModelRunner(model, "cpu")
        tensors, final_w, final_b, head = runner.decode_stack._tensors
        layers = [dict(zip(LAYER_TENSORS, layer, strict=True)) for layer in tensors]
        layers[0]["ln_in_w"] = layers[0]["ln_in_w"].bfloat16()
        DecodeStack(layers, final_w, final_b, head, heads=runner.heads, head_dim=runner.head_dim, eps=1e-5)
