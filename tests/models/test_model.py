"""The reference model: full forward == prefill + cached steps, rule-driven behaviour, real presets on meta."""

import pytest
import torch

from cogvideo_engine.generation.scoring import stream_input_ids
from cogvideo_engine.kernels.rules import Pass, StreamLayout
from cogvideo_engine.models.cogvideo import CogVideoModel, count_parameters
from cogvideo_engine.models.config import ModelConfig, stage1_config, stage2_config
from cogvideo_engine.models.random_init import init_random_weights

from helpers.models import SMALL_BOI, SMALL_GEOMETRY, small_model
from helpers.numerics import MODEL_FACTOR, assert_fp_close, fp_bound

FRAME = SMALL_GEOMETRY.frame_len


def random_stream(pass_, text_len, batch=2, seed=0, num_targets=None):
    gen = torch.Generator().manual_seed(seed)
    layout = StreamLayout(pass_, text_len, num_targets or pass_.max_targets, SMALL_GEOMETRY)
    text = torch.randint(20000, SMALL_BOI, (batch, text_len), generator=gen)
    given = torch.randint(0, 20000, (batch, layout.num_given, FRAME), generator=gen)
    target = torch.randint(0, 20000, (batch, layout.num_targets, FRAME), generator=gen)
    return layout, stream_input_ids(layout, text, given, target, SMALL_BOI)


@pytest.mark.parametrize("pass_", list(Pass))
@pytest.mark.parametrize("text_bias", [1.4, 0.0])
def test_full_forward_equals_prefill_and_steps(pass_, text_bias):
    model = small_model(pass_.model_stage)
    layout, ids = random_stream(pass_, text_len=5)
    full = model.forward_full(ids, layout, text_bias)
    cache = model.new_cache(layout, ids.shape[0])
    ctx = layout.context_len
    parts = [model.extend(cache, ids[:, :ctx], range(ctx), text_bias)]
    parts += [model.extend(cache, ids[:, i:i + 1], [i], text_bias) for i in range(ctx, layout.length)]
    stepped = torch.cat(parts, dim=1)
    assert stepped.shape == (2, layout.length, 20000)
    exact = small_model(pass_.model_stage, dtype=torch.float64).forward_full(ids, layout, text_bias)
    assert exact.dtype == torch.float64  # the fp64 model computes attention and logits in fp64 too
    assert_fp_close(stepped, exact, full, factor=MODEL_FACTOR)
    assert full.std() > 1.0  # logits are far from flat, so a rule error would show


def test_wavefront_step_equals_sequential_steps():
    """Stage 2: once slot 3 is far enough ahead, a slot-4 position can be fed in the same call."""
    model = small_model(2)
    layout, ids = random_stream(Pass.STAGE2, text_len=4, batch=1)
    ctx = layout.context_len
    seq_cache = model.new_cache(layout, 1)
    model.extend(seq_cache, ids[:, :ctx], range(ctx), 1.4)
    sequential = {i: model.extend(seq_cache, ids[:, i:i + 1], [i], 1.4) for i in range(ctx, layout.length)}
    exact = small_model(2, dtype=torch.float64).forward_full(ids, layout, 1.4)

    wave_cache = model.new_cache(layout, 1)
    model.extend(wave_cache, ids[:, :ctx], range(ctx), 1.4)
    lag = FRAME - 1  # slot-4 position p needs slot-3 positions up to p + lag at most in this geometry
    for i in range(ctx, ctx + lag):
        model.extend(wave_cache, ids[:, i:i + 1], [i], 1.4)
    for t in range(FRAME):
        a, b = ctx + lag + t, ctx + FRAME + t
        pair = [a, b] if a < ctx + FRAME else [b]
        out = model.extend(wave_cache, ids[:, pair], pair, 1.4)
        for j, i in enumerate(pair):
            assert_fp_close(out[:, j:j + 1], exact[:, i:i + 1], sequential[i], factor=MODEL_FACTOR,
                            what=f"position {i}")


def test_extend_refuses_bad_feeds():
    model = small_model(2)
    layout, ids = random_stream(Pass.STAGE2, text_len=4, batch=1)
    cache = model.new_cache(layout, 1)
    ctx = layout.context_len
    with pytest.raises(ValueError, match="not fed yet"):
        model.extend(cache, ids[:, :ctx - 1], range(ctx - 1), 1.4)  # a given row sees all given slots
    model.extend(cache, ids[:, :ctx], range(ctx), 1.4)
    with pytest.raises(ValueError, match="fed twice"):
        model.extend(cache, ids[:, :1], [0], 1.4)
    with pytest.raises(ValueError, match="not fed yet"):
        model.extend(cache, ids[:, ctx + FRAME:ctx + FRAME + 1], [ctx + FRAME], 1.4)
    with pytest.raises(ValueError, match="shape"):
        model.extend(cache, ids[:, ctx:ctx + 2], [ctx], 1.4)


def test_first_frame_ignores_the_temporal_channel():
    model = small_model(1)
    layout, ids = random_stream(Pass.FIRST_FRAME, text_len=6)
    before = model.forward_full(ids, layout, 1.4)
    exact = small_model(1, dtype=torch.float64).forward_full(ids, layout, 1.4)
    with torch.no_grad():
        for p in model.mixins["attention_plus"].parameters():
            p.add_(torch.randn_like(p))
    assert_fp_close(model.forward_full(ids, layout, 1.4), exact, before, factor=MODEL_FACTOR)
    assert (model.forward_full(ids, layout, 0.0) - before).abs().max() > 1e-2  # the text bias matters


def test_video_pass_uses_the_temporal_channel_and_alpha():
    model = small_model(1)
    layout, ids = random_stream(Pass.STAGE1, text_len=6)
    before = model.forward_full(ids, layout, 1.4)
    exact = small_model(1, dtype=torch.float64).forward_full(ids, layout, 1.4)
    with torch.no_grad():
        model.mixins["attention_plus"].attn_distribution[1].add_(1.0)
    after = model.forward_full(ids, layout, 1.4)
    text_rows = slice(0, layout.text_len)
    # text rows never mix
    assert_fp_close(after[:, text_rows], exact[:, text_rows], before[:, text_rows], factor=MODEL_FACTOR)
    assert (after[:, layout.text_len:] - before[:, layout.text_len:]).abs().max() > 1e-2


def _single_effective_layer(model, keep: int):
    """Make every layer but ``keep`` the identity (zero sandwich-LN outputs), so influence is one hop."""
    with torch.no_grad():
        for i, layer in enumerate(model.transformer.layers):
            if i != keep:
                for ln in (layer.third_layernorm, layer.fourth_layernorm):
                    ln.weight.zero_()
                    ln.bias.zero_()
    return model


@pytest.mark.parametrize("pass_", list(Pass))
@pytest.mark.parametrize("layer", [0, 1])
def test_each_row_depends_exactly_on_the_keys_its_rules_allow(pass_, layer):
    """Perturb one input at a time (one batch row each, beside the unperturbed stream): a row's logits move iff
    the rules let it see the perturbed input. In float64, so rounding (BLAS kernels differ by row count and by a
    row's place in a tile) stays 10 orders of magnitude below what a seen input moves."""
    model = CogVideoModel(small_model(pass_.model_stage).config)
    model = _single_effective_layer(init_random_weights(model, seed=3, peaky=False).eval(), keep=layer).double()
    layout, ids = random_stream(pass_, text_len=3, batch=1)
    n = layout.length
    batch = ids.repeat(n + 1, 1)  # row 0 unperturbed, row 1 + i with input i changed
    batch[torch.arange(1, n + 1), torch.arange(n)] = (batch[torch.arange(1, n + 1), torch.arange(n)] + 7) % 20000
    out = model.forward_full(batch, layout, 1.4)
    delta = (out[1:] - out[:1]).abs().amax(-1)  # [perturbed key, query row]
    moved = delta > 1e-9 * out.abs().max()
    assert delta[moved].min() > 1e-4  # a seen input moves a row by far more than rounding
    for q in range(n):
        expected = set(layout.spatial_keys(q))
        if layout.mixes_temporal(q):
            expected |= set(layout.temporal_keys(q, layer))
        assert set(moved[:, q].nonzero().flatten().tolist()) == expected, q


def test_position_tables():
    model = small_model(2)
    start = model.config.geometry.extra_table_start
    pos = torch.tensor([0, start - 1, start, start + 5])
    emb = model.position_embeddings(pos)
    base = model.transformer.position_embeddings.weight
    extra = model.mixins["extra_position_embedding"].position_embeddings.weight
    assert torch.equal(emb, torch.stack([base[0], base[start - 1], extra[0], extra[5]]))
    with pytest.raises(ValueError, match="extra table"):
        model.position_embeddings(torch.tensor([start + extra.shape[0]]))


@pytest.mark.parametrize("make", [stage1_config, stage2_config])
def test_real_presets_on_meta(make):
    cfg = make()
    with torch.device("meta"):
        model = CogVideoModel(cfg)
    assert count_parameters(model) == cfg.num_parameters()
    assert 7.72e9 < count_parameters(model) < 7.725e9  # SPEC.md §1.4: 7.721 B per stage model
    layer = model.transformer.layers[0]
    assert count_parameters(layer) == 113_298_432
    sd = model.state_dict()
    assert sd["transformer.word_embeddings.weight"].shape == (150010, 3072)
    assert sd["mixins.extra_position_embedding.position_embeddings.weight"].shape == (2000, 3072)
    assert sd["mixins.attention_plus.query_key_value.47.weight"].shape == (9216, 3072)
    assert sd["mixins.attention_plus.attn_distribution.47"].shape == (3072,)
    assert cfg.head_dim == 64 and cfg.geometry.frame_len == 400


def test_config_round_trips():
    cfg = small_model(2).config
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_sat_json(cfg.to_sat_json()) == cfg
    assert ModelConfig.from_sat_json(stage1_config().to_sat_json()) == stage1_config()
    with pytest.raises(ValueError, match="sandwich"):
        ModelConfig.from_sat_json({"layernorm_order": "pre"})


@pytest.mark.parametrize("pass_", [Pass.STAGE1, Pass.STAGE2])
def test_text_bias_reaches_the_temporal_channel_of_target_rows_only(pass_):
    """The prefill quirk: given rows' temporal channel carries no text bias; target rows' does."""
    model = init_random_weights(CogVideoModel(small_model(pass_.model_stage).config), seed=1, peaky=False)
    with torch.no_grad():  # alpha = sigmoid(-40) ~ 0: frame rows see only the temporal channel
        for p in model.mixins["attention_plus"].attn_distribution:
            p.fill_(-40.0)
    layout, ids = random_stream(pass_, text_len=5, num_targets=1)
    biased = model.forward_full(ids, layout, 1.4)
    delta = (biased - model.forward_full(ids, layout, 0.0)).abs().amax(-1)[0]
    ctx = layout.context_len
    exact = model.double().forward_full(ids, layout, 1.4)
    rounding, _, _ = fp_bound(exact[:, :ctx], biased[:, :ctx], torch.float32)
    assert delta[:ctx].max() <= rounding  # text rows (bias cancels: a softmax shift) and given rows (no bias)
    assert delta[ctx:].min() > 1e-3


def test_bf16_model_runs_close_to_fp32():
    model = small_model(2)
    layout, ids = random_stream(Pass.STAGE2, text_len=5, batch=1)
    ref = model.forward_full(ids, layout, 1.4)
    low = small_model(2, dtype=torch.bfloat16).forward_full(ids, layout, 1.4)
    assert low.dtype == torch.float32 and torch.isfinite(low).all()
    agree = (low.argmax(-1) == ref.argmax(-1)).float().mean()
    assert agree > 0.8, agree
