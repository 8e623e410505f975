"""CogView2's direct super-resolution (DSR) model: 20x20 frame tokens to 60x60 in one forward (SPEC.md §6.2).

The module tree mirrors SwissArmyTransformer's ``DsrModel``, so ``state_dict()`` keys are the ``cogview2-dsr``
checkpoint's keys: ``transformer.*`` (the CogView2 backbone, same shape as CogVideo's),
``mixins.extra_position_embedding`` (one row per high-resolution cell) and ``mixins.attention_plus``
(per layer a QKV and output projection for the high-resolution rows; no ``attn_distribution``).

One forward over ``[text | low-res | high-res]``:

* level 0 (text and low-resolution rows) uses the base QKV/dense and dense attention: text rows see the
  text, low-resolution rows see the text and every low-resolution row;
* level 1 (the high-resolution rows, every input the BOI token) uses the attention-plus QKV/dense and the
  local attention of :mod:`cogvideo_engine.kernels.local_rules`: a 9x5 window of high-resolution keys and a
  5x5 window of the level-0 low-resolution keys, one softmax, no text;
* the logits at high-resolution row ``j`` (tied to ``word_embeddings[:20000]``, fp32) are the distribution of
  high-resolution token ``j``.

Position ids: text ``0..T-1``, low-resolution ``513..`` (no BOI shift), high-resolution
``max_sequence_length + j``, read from the extra table row ``j``. The original left-pads the text to 96
positions with pads no other row can see; the engine pads each batch only to its longest text, which gives
the same result for every real row.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cogvideo_engine.kernels.local_rules import DSR_GEOMETRY, LocalGeometry
from cogvideo_engine.kernels.reference import compute_dtype, dense_attention
from cogvideo_engine.kernels.registry import get_local_backend

from .checkpoint import SAT_CONFIG, CheckpointError, check_state_dict, read_sat_state_dict, sat_checkpoint_file
from .config import MODEL_CLASSES, NUM_IMAGE_TOKENS, BackboneShape
from .model import AttentionPlus, Backbone, ExtraPositions, init_random_weights, merge_heads

LOW_POSITION_START = 513
"""Position id of the first low-resolution token (the CogView2 image block starts at 512 + BOI)."""
DSR_MODEL_CLASS = "DsrModel"


@dataclass(frozen=True)
class DsrConfig(BackboneShape):
    """Shape of a DSR model; the released ``cogview2-dsr`` is built from the CogVideo backbone arguments."""

    num_layers: int = 48
    hidden_size: int = 3072
    num_attention_heads: int = 48
    vocab_size: int = 150010
    max_sequence_length: int = 1024
    inner_hidden_size: int | None = None
    layernorm_epsilon: float = 1e-5
    text_len: int = 96
    """Text positions of the original layout ``[96, 496, 4096]``: prompts may use ``text_len - 1`` tokens."""
    local: LocalGeometry = field(default_factory=lambda: DSR_GEOMETRY)

    def __post_init__(self):
        self.check_backbone()
        if self.max_sequence_length < LOW_POSITION_START + self.local.num_low:
            raise ValueError(f"the base position table ({self.max_sequence_length} rows) must cover the "
                             f"low-resolution ids {LOW_POSITION_START}..{LOW_POSITION_START + self.local.num_low - 1}")

    @property
    def additional_seqlen(self) -> int:
        """Rows of the extra position table: one per high-resolution cell (3600)."""
        return self.local.num_queries

    def check_prompt_len(self, num_tokens: int) -> None:
        """``ValueError`` unless a prompt of ``num_tokens`` fits the text positions (1..``text_len - 1``; the
        original asserts at least one pad)."""
        if num_tokens < 1:
            raise ValueError("super-resolution needs a non-empty prompt for every frame")
        if num_tokens >= self.text_len:
            raise ValueError(f"prompt of {num_tokens} tokens is too long for super-resolution: the model's "
                             f"layout holds at most {self.text_len - 1}")

    def num_parameters(self) -> int:
        h, f, n = self.hidden_size, self.ffn_hidden_size, self.num_layers
        layer = 4 * 2 * h + 2 * (3 * h * h + 3 * h) + 2 * (h * h + h) + (f * h + f) + (h * f + h)
        return n * layer + (self.vocab_size + self.max_sequence_length + self.additional_seqlen) * h + 2 * h

    @classmethod
    def from_sat_json(cls, raw: dict[str, Any]) -> DsrConfig:
        """Backbone keys of a ``model_config.json``; the engine's own small test models add
        ``engine_local_geometry`` and ``engine_text_len``."""
        head_dim, hidden = raw.get("hidden_size_per_attention_head"), raw.get("hidden_size", 3072)
        heads = raw.get("num_attention_heads", 48)
        if head_dim is not None and head_dim * heads != hidden:
            raise ValueError(f"hidden_size_per_attention_head {head_dim} x {heads} heads != hidden_size {hidden}")
        return cls(num_layers=raw.get("num_layers", 48), hidden_size=hidden, num_attention_heads=heads,
                   vocab_size=raw.get("vocab_size", 150010), max_sequence_length=raw.get("max_sequence_length", 1024),
                   inner_hidden_size=raw.get("inner_hidden_size"), text_len=raw.get("engine_text_len", 96),
                   local=LocalGeometry(**raw.get("engine_local_geometry", {})))

    def to_sat_json(self) -> dict[str, Any]:
        low = self.local.num_low
        cfg: dict[str, Any] = {
            "model_class": DSR_MODEL_CLASS, "num_layers": self.num_layers, "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads, "vocab_size": self.vocab_size,
            "layernorm_order": "sandwich", "model_parallel_size": 1,
            "max_sequence_length": self.max_sequence_length,
            "layout": [self.text_len, self.text_len + low, self.text_len + low + self.local.num_queries],
            "kernel_size": (self.local.window_rows + 1) // 2, "kernel_size2": self.local.low_window,
            "new_sequence_length": self.max_sequence_length + self.local.num_queries,
        }
        if self.inner_hidden_size is not None:
            cfg["inner_hidden_size"] = self.inner_hidden_size
        if self.local != DSR_GEOMETRY:
            cfg["engine_local_geometry"] = {k: getattr(self.local, k) for k in
                                            ("grid", "low_grid", "window_rows", "window_cols", "low_window")}
        if self.text_len != 96:
            cfg["engine_text_len"] = self.text_len
        return cfg


def tiny_dsr_config(*, num_layers: int = 2, hidden_size: int = 64, num_attention_heads: int = 4,
                    local: LocalGeometry = DSR_GEOMETRY, vocab_size: int = 150010) -> DsrConfig:
    """A small DSR model in the real geometry (by default), for tests and the embedded default model."""
    return DsrConfig(num_layers=num_layers, hidden_size=hidden_size, num_attention_heads=num_attention_heads,
                     vocab_size=vocab_size, local=local)


class DsrModel(nn.Module):
    """The super-resolution model; see the module docstring."""

    def __init__(self, config: DsrConfig):
        super().__init__()
        self.config = config
        self.transformer = Backbone(config)
        self.mixins = nn.ModuleDict({"extra_position_embedding": ExtraPositions(config),
                                     "attention_plus": AttentionPlus(config, mixing=False)})

    def _heads(self, x: torch.Tensor) -> list[torch.Tensor]:  # [B, N, 3*H*d] -> 3 x [B, H, N, d] views
        b, n, _ = x.shape
        c = self.config
        return list(x.view(b, n, 3, c.num_attention_heads, c.head_dim).permute(2, 0, 3, 1, 4).unbind(0))


    def level0_inputs(self, text_ids: list[list[int]], low_tokens: torch.Tensor):
        """Input ids ``[B, P + M]``, position ids and the ``[B, 1, P + M, P + M]`` additive mask of level 0.

        Text is left-padded to the longest prompt ``P`` (pads: id 0, position 0, seen by no other row).
        """
        c, dev = self.config, low_tokens.device
        lengths = [len(t) for t in text_ids]
        c.check_prompt_len(min(lengths))
        c.check_prompt_len(max(lengths))
        width, m = max(lengths), c.local.num_low
        ids = torch.zeros(len(text_ids), width, dtype=torch.long)
        pos = torch.zeros(len(text_ids), width, dtype=torch.long)
        for b, t in enumerate(text_ids):
            ids[b, width - len(t):] = torch.as_tensor(t, dtype=torch.long)
            pos[b, width - len(t):] = torch.arange(len(t))
        n_pad = torch.tensor([width - n for n in lengths])
        ids = torch.cat([ids, low_tokens.cpu().long()], 1).to(dev)
        pos = torch.cat([pos, torch.arange(LOW_POSITION_START, LOW_POSITION_START + m).expand(len(lengths), -1)],
                        1).to(dev)
        row = torch.arange(width + m)
        visible = torch.ones(len(lengths), width + m, width + m, dtype=torch.bool)
        visible[:, :width, width:] = False                                  # text rows never see the image
        visible &= ~((row[None, :, None] >= n_pad[:, None, None]) & (row[None, None, :] < n_pad[:, None, None]))
        additive = torch.zeros(visible.shape).masked_fill(~visible, float("-inf"))[:, None]
        return ids, pos, additive.to(dev)

    @torch.no_grad()
    def hidden_states(self, text_ids: list[list[int]], low_tokens: torch.Tensor, boi_id: int, *,
                      backend: str | None = None) -> torch.Tensor:
        """Final-LN hidden states ``[B, N, hidden]`` of the high-resolution rows.

        text_ids: per frame its prompt ids (not padded); low_tokens: ``LongTensor[B, M]`` (``[B, 400]``) the
        low-resolution frame tokens; ``boi_id``: the input of every high-resolution row. ``backend`` names the
        level-1 attention backend (``reference``, ``triton``, ``cpu``, ``cuda``; None: best available).
        """
        c = self.config
        g = c.local
        if low_tokens.dim() != 2 or low_tokens.shape[1] != g.num_low:
            raise ValueError(f"low-resolution tokens must be [frames, {g.num_low}], got {tuple(low_tokens.shape)}")
        if len(text_ids) != low_tokens.shape[0]:
            raise ValueError(f"{len(text_ids)} prompts for {low_tokens.shape[0]} frames")
        p = next(self.parameters())
        local = get_local_backend(backend, p.device)
        ids, pos, additive = self.level0_inputs(text_ids, low_tokens.to(p.device))
        emb = self.transformer.word_embeddings
        x0 = emb(ids) + self.transformer.position_embeddings(pos)
        high = self.mixins["extra_position_embedding"].position_embeddings.weight
        x1 = (emb.weight[boi_id] + high).expand(x0.shape[0], -1, -1)
        x = torch.cat([x0, x1], 1)
        split = x0.shape[1]
        plus = self.mixins["attention_plus"]
        for layer_id, layer in enumerate(self.transformer.layers):
            a = layer.input_layernorm(x)
            q0, k0, v0 = self._heads(layer.attention.query_key_value(a[:, :split]))
            q1, k1, v1 = self._heads(plus.query_key_value[layer_id](a[:, split:]))
            ctx0 = dense_attention(q0, k0, v0, additive)
            low = slice(split - g.num_low, split)
            ctx1 = local(q1, k1, v1, k0[:, :, low], v0[:, :, low], g)
            out = torch.cat([layer.attention.dense(merge_heads(ctx0)), plus.dense[layer_id](merge_heads(ctx1))], 1)
            x = layer.finish(x, out)
        return self.transformer.final_layernorm(x[:, split:])

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 (fp64 for an fp64 model) logits over the image tokens from the tied ``word_embeddings[:20000]``."""
        weight = self.transformer.word_embeddings.weight[:NUM_IMAGE_TOKENS]
        dtype = compute_dtype(weight.dtype)
        return F.linear(hidden.to(dtype), weight.to(dtype))


# -- checkpoints ---------------------------------------------------------------------------------------------

def read_dsr_config(directory: str | os.PathLike) -> DsrConfig:
    """The model shape of a ``cogview2-dsr`` directory: backbone keys from ``model_config.json`` when present
    (the original builds the DSR model from the CogVideo arguments, so defaults are CogVideo's)."""
    file = Path(directory) / SAT_CONFIG
    raw: dict[str, Any] = {}
    if file.is_file():
        try:
            raw = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{file} is not valid JSON: {e}") from None
    if raw.get("model_class") in MODEL_CLASSES:
        raise CheckpointError(f"{file} describes a CogVideo stage model ({raw['model_class']}), not the "
                              f"cogview2-dsr super-resolution model")
    try:
        return DsrConfig.from_sat_json(raw)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{file}: {e}") from None


def load_dsr_model(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> DsrModel:
    """Load the super-resolution model from a SwissArmyTransformer ``cogview2-dsr`` directory.

    Raises :class:`CheckpointError` naming the problem (missing files, wrong tensors, unsafe pickle).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"super-resolution checkpoint directory {path} does not exist")
    config = read_dsr_config(path)
    state, source = read_sat_state_dict(path), str(sat_checkpoint_file(path))
    with torch.device("meta"):
        model = DsrModel(config)
    check_state_dict({k: v.shape for k, v in model.state_dict().items()}, state, source)
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, assign=True,
                          strict=True)
    return model.eval().requires_grad_(False)


def random_dsr_model(config: DsrConfig, seed: int) -> DsrModel:
    """A DSR model with deterministic random weights (tests, the embedded default model); write it in the
    released layout with :func:`cogvideo_engine.checkpoint.write_sat_checkpoint`."""
    return init_random_weights(DsrModel(config), seed=seed).eval().requires_grad_(False)


__all__ = ["DSR_MODEL_CLASS", "LOW_POSITION_START", "DsrConfig", "DsrModel", "load_dsr_model", "random_dsr_model",
           "read_dsr_config", "tiny_dsr_config"]
