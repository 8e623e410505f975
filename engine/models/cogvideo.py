"""The reference CogVideo transformer: plain PyTorch, exact to the released model (SPEC.md §3).

The module tree mirrors SwissArmyTransformer's, so ``state_dict()`` keys are the checkpoint's keys:
``transformer.*`` is the CogView2 backbone (the spatial channel), ``mixins.attention_plus.*`` the temporal
channel and ``mixins.extra_position_embedding`` the extra position table.

One code path runs everything: :meth:`CogVideoModel.extend` feeds a set of stream positions into a
:class:`KVCache` and returns their logits, with the keys each row sees taken from the rule module. A
teacher-forced full forward is one ``extend`` over every position; generation is one ``extend`` for the
prefill and one per step.
"""

from __future__ import annotations

import torch
from torch import nn

from cogvideo_engine.kernels.layout import AttentionRule
from cogvideo_engine.kernels.masks import ChannelMask, spatial_mask, temporal_mask
from cogvideo_engine.kernels.registry import WindowAttentionFn, get_backend
from cogvideo_engine.kernels.rules import Pass, StreamLayout

from .config import ModelConfig
from .layers import AttentionPlus, Backbone, ExtraPositions, merge_heads


class KVCache:
    """K/V of every fed position of a batch of streams sharing one layout.

    Two channels per layer, ``[num_layers, B, H, rows, head_dim]`` each: the spatial channel (base QKV) and,
    for passes that mix it, the temporal channel (attention-plus QKV). Rows follow the kernels' cache layout
    (:mod:`cogvideo_engine.kernels.layout`) with ``text_capacity = text_len``, so row == stream index.
    Which keys a row reads is decided by the rule module, so this simple cache needs no per-frame resets.
    ``filled[i]`` says whether stream index ``i`` has been fed.
    """

    def __init__(self, cfg: ModelConfig, layout: StreamLayout, batch_size: int, *, dtype: torch.dtype,
                 device: torch.device | str):
        self.layout = layout
        self.batch_size = batch_size
        self.rules = AttentionRule.launch_rules(layout, text_capacity=layout.text_len)
        rows = self.rule("spatial", 0).cache_len
        shape = (cfg.num_layers, batch_size, cfg.num_attention_heads, rows, cfg.head_dim)
        channels = 2 if layout.pass_.mixes_temporal else 1
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(channels)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(channels)]
        self.filled = torch.zeros(layout.length, dtype=torch.bool, device=device)
        self._masks: dict[tuple[str, int], ChannelMask] = {}

    @property
    def num_filled(self) -> int:
        return int(self.filled.sum())

    def rule(self, channel: str, layer_id: int) -> AttentionRule:
        return self.rules[channel, layer_id % 2]

    def write(self, channel: int, layer_id: int, index: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k[channel][layer_id][:, :, index] = k
        self.v[channel][layer_id][:, :, index] = v

    def keys(self, channel: int, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[channel][layer_id], self.v[channel][layer_id]

    def visibility(self, channel: str, layer_id: int) -> ChannelMask:
        """Dense ``[length, length]`` mask of ``channel`` ('spatial' / 'temporal') for a layer (validation)."""
        parity = 1 if self.rule(channel, layer_id).shift else 0  # only stage 2's temporal channel varies
        if (channel, parity) not in self._masks:
            idx = torch.arange(self.layout.length, device=self.filled.device)
            self._masks[channel, parity] = spatial_mask(self.layout, idx, idx) if channel == "spatial" else \
                temporal_mask(self.layout, idx, idx, parity)
        return self._masks[channel, parity]


class CogVideoModel(nn.Module):
    """One CogVideo stage model (the stage-1 or stage-2 checkpoint); see the module docstring."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.transformer = Backbone(config)
        self.mixins = nn.ModuleDict({"extra_position_embedding": ExtraPositions(config),
                                     "attention_plus": AttentionPlus(config, mixing=True)})

    # -- pieces ---------------------------------------------------------------------------------------

    def position_embeddings(self, position_ids: torch.Tensor) -> torch.Tensor:
        """Ids below ``geometry.extra_table_start`` (912) read the base table, the rest ``extra[id - 912]``."""
        g = self.config.geometry
        base = self.transformer.position_embeddings.weight
        extra = self.mixins["extra_position_embedding"].position_embeddings.weight
        in_extra, row = g.uses_extra_table(position_ids), g.table_row(position_ids)
        if bool((in_extra & (row >= extra.shape[0])).any()):
            raise ValueError(f"position id {int(position_ids.max())} is beyond the extra table "
                             f"({extra.shape[0]} rows from {g.extra_table_start})")
        return torch.where(in_extra[..., None], extra[row.clamp(max=extra.shape[0] - 1)],
                           base[row.clamp(max=base.shape[0] - 1)])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 (fp64 for an fp64 model) logits over the image tokens from the tied ``word_embeddings[:20000]``."""
        return self.transformer.image_logits(hidden)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, H*d] -> [B, H, N, d]
        b, n, _ = x.shape
        return x.view(b, n, self.config.num_attention_heads, self.config.head_dim).transpose(1, 2)


    def _channel(self, cache: KVCache, name: str, layer_id: int, qkv: torch.Tensor, index: torch.Tensor,
                 call: tuple, attend: WindowAttentionFn) -> torch.Tensor:
        q, k, v = (self._heads(t) for t in qkv.chunk(3, dim=-1))
        channel = 0 if name == "spatial" else 1
        cache.write(channel, layer_id, index, k, v)
        k_all, v_all = cache.keys(channel, layer_id)
        return merge_heads(attend(q, k_all, v_all, *call, cache.rule(name, layer_id)))

    # -- the one forward ------------------------------------------------------------------------------

    def new_cache(self, layout: StreamLayout, batch_size: int) -> KVCache:
        p = next(self.parameters())
        shard = getattr(self, "shard", None)
        if shard is not None and shard.world > 1:
            raise ValueError("a tensor-parallel shard runs through the ModelRunner only; the reference forward "
                             "(extend, scoring) needs the whole model (load_model)")
        if layout.geometry != self.config.geometry:
            raise ValueError(f"layout geometry {layout.geometry} differs from the model's {self.config.geometry}")
        if layout.stage1_windowed != (self.config.stage1_windowed and layout.pass_ is Pass.STAGE1):
            raise ValueError("layout.stage1_windowed must match the model config (use model.config.layout)")
        return KVCache(self.config, layout, batch_size, dtype=p.dtype, device=p.device)

    @torch.no_grad()
    def extend(self, cache: KVCache, input_ids: torch.Tensor, index: torch.Tensor | list[int],
               text_bias: float, *, backend: str | None = "reference") -> torch.Tensor:
        """Feed stream positions ``index [N]`` with inputs ``input_ids [B, N]``; return logits ``[B, N, 20000]``.

        The rows follow the rule of their kind (text / given / target) in ``cache.layout``; each row attends
        to the cached keys its rule allows plus the rows fed in this call. ``text_bias`` is
        ``log_text_attention_weights`` (:data:`cogvideo_engine.generation.settings.TEXT_BIAS`, or 0).
        ``backend`` names the attention backend (:mod:`cogvideo_engine.kernels.registry`; None picks the best
        available). Raises ``ValueError`` if a
        position is fed twice or before a key its rule needs. Logits at position ``i`` predict the token
        after the input at ``i``.
        """
        layout = cache.layout
        dev = cache.filled.device
        attend = get_backend(backend, dev)
        index = torch.as_tensor(index, dtype=torch.long, device=dev).reshape(-1)
        if input_ids.shape != (cache.batch_size, index.numel()):
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}; expected "
                             f"[batch {cache.batch_size}, {index.numel()} positions]")
        if index.numel() == 0:
            raise ValueError("extend() needs at least one position")
        if int(index.min()) < 0 or int(index.max()) >= layout.length:
            raise ValueError(f"stream index out of range 0..{layout.length - 1}")
        if cache.filled[index].any() or index.unique().numel() != index.numel():
            raise ValueError("a stream position was fed twice")
        filled_after = cache.filled.clone()
        filled_after[index] = True
        channels = ["spatial", "temporal"] if layout.pass_.mixes_temporal else ["spatial"]
        for name in channels:
            parities = 2 if name == "temporal" else 1  # only the temporal channel varies by layer parity
            for layer_id in range(min(parities, self.config.num_layers)):
                if (cache.visibility(name, layer_id).visible[index] & ~filled_after).any():
                    raise ValueError(f"a fed position attends ({name} channel) to a position not fed yet")
        cache.filled = filled_after

        b = cache.batch_size
        call = (index.expand(b, -1), torch.full((b,), layout.text_len, device=dev),
                torch.full((b,), float(text_bias), device=dev))
        ids = input_ids.to(dev)
        x = self.transformer.word_embeddings(ids) + self.position_embeddings(layout.position_id(index))
        mixes = layout.mixes_temporal(index)[None, :, None]
        plus = self.mixins["attention_plus"]
        for layer_id, layer in enumerate(self.transformer.layers):
            a = layer.input_layernorm(x)
            ctx = self._channel(cache, "spatial", layer_id, layer.attention.query_key_value(a), index, call, attend)
            out = layer.attention.dense(ctx)
            if len(channels) == 2:
                ctx_t = self._channel(cache, "temporal", layer_id, plus.query_key_value[layer_id](a), index, call,
                                      attend)
                alpha = torch.sigmoid(plus.attn_distribution[layer_id])
                mixed = out * alpha + plus.dense[layer_id](ctx_t) * (1 - alpha)
                out = torch.where(mixes, mixed, out)
            x = layer.finish(x, out)
        return self.logits(self.transformer.final_layernorm(x))

    def forward_full(self, input_ids: torch.Tensor, layout: StreamLayout, text_bias: float, *,
                     backend: str | None = "reference") -> torch.Tensor:
        """Teacher-forced forward over a whole stream ``input_ids [B, layout.length]`` -> ``[B, length, 20000]``.

        Given rows follow the prefill rules and target rows the autoregressive rules, so this equals a
        prefill followed by one cached step per target position.
        """
        cache = self.new_cache(layout, input_ids.shape[0])
        return self.extend(cache, input_ids, torch.arange(layout.length), text_bias, backend=backend)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
