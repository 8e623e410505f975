"""The super-resolution (DSR) model against a literal transcription of the original's forward, and its loading."""

import math

import pytest
import torch
import torch.nn.functional as F

from cogvideo_engine.io.checkpoints import load_dsr_model
from cogvideo_engine.io.sat import CheckpointError, write_sat_checkpoint
from cogvideo_engine.models.config import LOW_POSITION_START, DsrConfig, tiny_dsr_config
from cogvideo_engine.models.dsr import DsrModel
from cogvideo_engine.models.layers import gelu_tanh
from cogvideo_engine.models.random_init import init_random_weights, random_dsr_model

from helpers.local_cases import unfold_attention
from helpers.models import SMALL_BOI, SMALL_LOCAL, small_dsr
from helpers.numerics import MODEL_FACTOR, assert_fp_close, float64_copy

def original_logits(model, text: list[int], low: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """The original's forward, step by step: text left-padded to ``text_len`` with id 0 / position 0, the
    level-0 mask applied as ``scores * mask - 10000 * (1 - mask)``, level-1 scores over the low-resolution
    patch then the high-resolution patch with -10000 outside the frame. Returns ``[N, 20000]`` in ``dtype``."""
    c, g = model.config, model.config.local
    sd = {k: v.to(dtype) for k, v in model.state_dict().items()}
    n_pad, m, n = c.text_len - len(text), g.num_low, g.num_queries
    l1 = c.text_len + m
    tokens = torch.tensor([0] * n_pad + text + low.tolist() + [SMALL_BOI] * n)
    positions = torch.cat([torch.zeros(n_pad, dtype=torch.long), torch.arange(len(text)),
                           torch.arange(LOW_POSITION_START, LOW_POSITION_START + m),
                           torch.arange(c.max_sequence_length, c.max_sequence_length + n)])
    mask = torch.ones(l1, l1, dtype=dtype)
    mask[:c.text_len, c.text_len:] = 0
    mask[n_pad:, :n_pad] = 0
    x = sd["transformer.word_embeddings.weight"][tokens] + torch.cat([
        sd["transformer.position_embeddings.weight"][positions[:l1]],
        sd["mixins.extra_position_embedding.position_embeddings.weight"][positions[l1:] - c.max_sequence_length]])
    h, d = c.num_attention_heads, c.head_dim

    def ln(t, name):
        return F.layer_norm(t, (c.hidden_size,), sd[name + ".weight"], sd[name + ".bias"], c.layernorm_epsilon)

    def lin(t, name):
        return F.linear(t, sd[name + ".weight"], sd[name + ".bias"])

    for i in range(c.num_layers):
        p = f"transformer.layers.{i}."
        a = ln(x, p + "input_layernorm")
        q0, k0, v0 = (t.reshape(l1, h, d).transpose(0, 1)
                      for t in lin(a[:l1], p + "attention.query_key_value").chunk(3, -1))
        q1, k1, v1 = (t.reshape(n, h, d).transpose(0, 1)[None]
                      for t in lin(a[l1:], f"mixins.attention_plus.query_key_value.{i}").chunk(3, -1))
        scores = (q0 / math.sqrt(d)) @ k0.transpose(-1, -2)
        probs = torch.softmax(scores * mask - 10000.0 * (1 - mask), -1)
        ctx0 = (probs @ v0).transpose(0, 1).reshape(l1, -1)
        ctx1 = unfold_attention(q1, k1, v1, k0[None, :, -m:], v0[None, :, -m:], g)[0].transpose(0, 1).reshape(n, -1)
        out = torch.cat([lin(ctx0, p + "attention.dense"), lin(ctx1, f"mixins.attention_plus.dense.{i}")])
        x = x + ln(out, p + "third_layernorm")
        up = lin(ln(x, p + "post_attention_layernorm"), p + "mlp.dense_h_to_4h")
        mlp = lin(gelu_tanh(up), p + "mlp.dense_4h_to_h")
        x = x + ln(mlp, p + "fourth_layernorm")
    x = ln(x, "transformer.final_layernorm")
    return F.linear(x[l1:], sd["transformer.word_embeddings.weight"][:20000])


def test_model_matches_the_original_forward():
    model = small_dsr()
    gen = torch.Generator().manual_seed(3)
    texts = [[5, 17, 300], [9, 4, 1000, 77, 12]]
    low = torch.randint(0, 20000, (2, SMALL_LOCAL.num_low), generator=gen)
    logits = model.logits(model.hidden_states(texts, low, SMALL_BOI, backend="reference"))
    for b in range(2):  # against the original in fp64, bounded by the original's own fp32 error
        exact = original_logits(model, texts[b], low[b], torch.float64)
        assert_fp_close(logits[b], exact, original_logits(model, texts[b], low[b]), factor=MODEL_FACTOR,
                        what=f"frame {b}")


def test_frames_are_independent_of_their_batch():
    """Padding to the longest prompt of a batch changes nothing for the other frames."""
    model = small_dsr(seed=1)
    low = torch.randint(0, 20000, (3, SMALL_LOCAL.num_low), generator=torch.Generator().manual_seed(0))
    texts = [[1], [2, 3, 4, 5, 6, 7], [8, 9]]
    together = model.hidden_states(texts, low, SMALL_BOI, backend="reference")
    exact_model = float64_copy(model)
    for b in range(3):
        alone, exact = (m.hidden_states(texts[b:b + 1], low[b:b + 1], SMALL_BOI, backend="reference")
                        for m in (model, exact_model))
        assert_fp_close(together[b], exact[0], alone[0], what=f"frame {b}", factor=MODEL_FACTOR)


def test_every_high_resolution_token_depends_on_its_low_resolution_window_only_in_one_layer():
    """With one layer, high-res row j moves when a low-res token inside its 5x5 window changes, not outside."""
    cfg = DsrConfig(num_layers=1, hidden_size=32, num_attention_heads=2, vocab_size=20100, text_len=12,
                    local=SMALL_LOCAL)
    model = init_random_weights(DsrModel(cfg), seed=2, peaky=False).eval()  # no weight underflows to 0
    model = model.double()  # rounding 10 orders of magnitude below what a seen token moves
    low = torch.randint(0, 20000, (1, 16), generator=torch.Generator().manual_seed(1))
    base = model.hidden_states([[3, 4]], low, SMALL_BOI, backend="reference")[0]
    changed = low.clone()
    changed[0, 0] = (changed[0, 0] + 1) % 20000  # low cell (0, 0)
    delta = (model.hidden_states([[3, 4]], changed, SMALL_BOI, backend="reference")[0] - base).abs().amax(-1)
    moved = delta > 1e-9 * base.abs().max()
    assert delta[moved].min() > 1e-4
    g = SMALL_LOCAL
    expected = torch.tensor([(r // g.ratio) <= 2 and (c // g.ratio) <= 2 for r in range(g.grid) for c in range(g.grid)])
    assert torch.equal(moved, expected)


def test_prompt_length_errors():
    model = small_dsr()
    low = torch.zeros(1, SMALL_LOCAL.num_low, dtype=torch.long)
    with pytest.raises(ValueError, match="at most 11"):
        model.hidden_states([list(range(12))], low, SMALL_BOI)
    with pytest.raises(ValueError, match="non-empty"):
        model.hidden_states([[]], low, SMALL_BOI)
    with pytest.raises(ValueError, match="frames"):
        model.hidden_states([[1], [2]], low, SMALL_BOI)


def test_released_shape_and_parameter_count():
    cfg = DsrConfig()
    assert cfg.additional_seqlen == 3600 and cfg.text_len == 96 and cfg.local.keys_per_query == 70
    with torch.device("meta"):
        model = DsrModel(cfg)
    count = sum(p.numel() for p in model.parameters())
    assert count == cfg.num_parameters()
    assert 7.6e9 < count < 7.8e9  # SPEC.md §1.6: about 7.73 B
    assert "mixins.attention_plus.attn_distribution.0" not in model.state_dict()


def test_sat_checkpoint_round_trip(tmp_path):
    model = random_dsr_model(tiny_dsr_config(hidden_size=32, num_attention_heads=2), seed=4)
    write_sat_checkpoint(tmp_path / "cogview2-dsr", model, iteration=20000)
    loaded = load_dsr_model(tmp_path / "cogview2-dsr")
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().float()), k  # fp16 on disk, exactly


def test_loading_a_stage_checkpoint_as_dsr_is_refused(tmp_path):
    from helpers.models import small_model

    write_sat_checkpoint(tmp_path / "stage1", small_model(1))
    with pytest.raises(CheckpointError, match="not the cogview2-dsr"):
        load_dsr_model(tmp_path / "stage1")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_dsr_model(tmp_path / "missing")
