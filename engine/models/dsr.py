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

import torch
from torch import nn

from cogvideo_engine.kernels.reference import dense_attention
from cogvideo_engine.kernels.registry import get_local_backend

from .config import LOW_POSITION_START, DsrConfig
from .layers import AttentionPlus, Backbone, ExtraPositions, merge_heads


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
        return self.transformer.image_logits(hidden)


__all__ = ["DsrModel"]
