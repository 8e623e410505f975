"""Dense masks from the rule module: the slow, obviously-right form every kernel is tested against."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .rules import StreamLayout


@dataclass(frozen=True)
class ChannelMask:
    """Which keys each query row sees in one channel, and where the text bias goes.

    ``visible``: bool ``[num_queries, num_keys]``. ``text_bias``: bool ``[num_queries, num_keys]``, True
    where the additive text bias applies (visible text keys of rows whose rule carries the bias).
    """

    visible: torch.Tensor
    text_bias: torch.Tensor

    def additive(self, bias: float, dtype=torch.float32) -> torch.Tensor:
        """``[Q, K]`` additive score term: ``bias`` on biased text keys, ``-inf`` on hidden keys, else 0."""
        out = torch.zeros(self.visible.shape, dtype=dtype, device=self.visible.device)
        if bias:
            out = out.masked_fill(self.text_bias, bias)
        return out.masked_fill(~self.visible, float("-inf"))


def _grid(query_index: torch.Tensor, key_index: torch.Tensor):
    return query_index.to(torch.long)[:, None], key_index.to(torch.long)[None, :]


def spatial_mask(layout: StreamLayout, query_index: torch.Tensor, key_index: torch.Tensor) -> ChannelMask:
    """Spatial-channel mask of the stream indices ``query_index [Q]`` against ``key_index [K]``."""
    q, k = _grid(query_index, key_index)
    visible = layout.spatial_visible(q, k)
    text_bias = visible & ~layout.is_frame(k) & layout.spatial_text_bias(q)
    return ChannelMask(visible, text_bias)


def temporal_mask(layout: StreamLayout, query_index: torch.Tensor, key_index: torch.Tensor,
                  layer_id: int) -> ChannelMask:
    """Temporal-channel mask of layer ``layer_id``; rows of text queries are all False."""
    q, k = _grid(query_index, key_index)
    visible = layout.temporal_visible(q, k, layer_id)
    text_bias = visible & ~layout.is_frame(k) & layout.temporal_text_bias(q)
    return ChannelMask(visible, text_bias)
