"""Window-attention benchmark cases at the real shapes, our kernel and its baselines, and their roofline units.

Cases (48 heads, d = 64, 20x20 frames): stage-2 prefill of the 3 given frames, stage-1 prefill of frame 0,
and decode steps at batch 1 and 8 with 1 and 2 queries per sequence (2 = the stage-2 wavefront: one query
in slot 3, one in slot 4). Implementations, all fed the same cache:

* ``triton``  -- the fused Triton kernel (CUDA only; the interpreter is not a speed),
* ``triton-ranged`` -- the same on the prefill path's ranged frame-key walk (``walk="ranged"``: pipelined loads),
* ``cpu`` / ``cuda`` -- the csrc kernels (C++ with OpenMP; CUDA C++),
* ``sdpa``    -- dense masked ``scaled_dot_product_attention`` with the rule mask (mask built outside timing),
* ``flex``    -- FlexAttention with ``mask_mod`` / ``score_mod`` taken from the same rule functions
  (compiled, per case), BlockMask built outside timing,
* ``gather``  -- decode only: the original code's way, Python index lists + ``index_select`` + dense math.

Useful FLOPs count only visible (query, key) pairs: ``4 * d * pairs * heads`` (QK^T and PV). Bytes count
what an ideal kernel must move: each visible key's K and V once per (sequence, head), plus Q and O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cogvideo_engine.generation.settings import TEXT_BIAS
from cogvideo_engine.kernels.layout import AttentionRule, stream_index_of_row
from cogvideo_engine.kernels.reference import rule_additive
from cogvideo_engine.kernels.rules import FrameGeometry, Pass, StreamLayout

HEADS, HEAD_DIM = 48, 64


@dataclass(frozen=True)
class Case:
    name: str
    pass_: Pass
    channel: str
    layer_parity: int
    text_len: int
    batch: int
    queries: tuple[tuple[int, int], ...] | None  # (slot, block position) per query; None: the whole prefill

    @property
    def rule(self) -> AttentionRule:
        return AttentionRule(self.pass_, self.channel, self.layer_parity, FrameGeometry(), self.text_len)

    @property
    def layout(self) -> StreamLayout:
        return StreamLayout(self.pass_, self.text_len, self.pass_.max_targets)

    def q_index(self) -> torch.Tensor:
        lay = self.layout
        if self.queries is None:
            idx = torch.arange(lay.context_len)
        else:
            idx = torch.tensor([lay.index(s, p) for s, p in self.queries])
        return idx.expand(self.batch, -1).contiguous()

    @property
    def decode(self) -> bool:
        return self.queries is not None


CASES = [
    Case("stage2-prefill-3frames-odd", Pass.STAGE2, "temporal", 1, 20, 1, None),
    Case("stage2-prefill-3frames-even", Pass.STAGE2, "temporal", 0, 20, 1, None),
    Case("stage2-prefill-3frames-spatial", Pass.STAGE2, "spatial", 0, 20, 1, None),
    Case("stage1-prefill-frame0", Pass.STAGE1, "temporal", 0, 20, 1, None),
    Case("stage2-decode-b1-q1", Pass.STAGE2, "temporal", 1, 9, 1, ((3, 215),)),
    Case("stage2-decode-b1-q2", Pass.STAGE2, "temporal", 1, 9, 1, ((3, 215), (4, 25))),
    Case("stage2-decode-b8-q1", Pass.STAGE2, "temporal", 1, 9, 8, ((3, 215),)),
    Case("stage2-decode-b8-q2", Pass.STAGE2, "temporal", 1, 9, 8, ((3, 215), (4, 25))),
    Case("stage1-decode-b1-q1", Pass.STAGE1, "temporal", 0, 20, 1, ((4, 399),)),
    Case("stage1-decode-b8-q1", Pass.STAGE1, "temporal", 0, 20, 8, ((4, 399),)),
]


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    q_index: torch.Tensor
    text_len: torch.Tensor
    text_bias: torch.Tensor
    additive: torch.Tensor  # [B, 1, Q, S]
    visible_pairs: int
    visible_keys: int


def make_inputs(case: Case, device: str, dtype: torch.dtype, seed: int = 0) -> Inputs:
    rule = case.rule
    gen = torch.Generator().manual_seed(seed)
    q_index = case.q_index()
    shape_kv = (case.batch, HEADS, rule.cache_len, HEAD_DIM)
    q = torch.randn(case.batch, HEADS, q_index.shape[1], HEAD_DIM, generator=gen)
    k, v = torch.randn(shape_kv, generator=gen), torch.randn(shape_kv, generator=gen)
    additive = torch.stack([rule_additive(rule, q_index[b], case.text_len, TEXT_BIAS, rule.cache_len)
                            for b in range(case.batch)])[:, None]
    visible = torch.isfinite(additive)
    return Inputs(q.to(device, dtype), k.to(device, dtype), v.to(device, dtype), q_index.to(device),
                  torch.full((case.batch,), case.text_len, device=device),
                  torch.full((case.batch,), TEXT_BIAS, device=device), additive.to(device),
                  int(visible.sum()), int(visible.any(dim=2).sum()))


def useful_flops(case: Case, x: Inputs) -> float:
    return 4.0 * HEAD_DIM * x.visible_pairs * HEADS


def ideal_bytes(case: Case, x: Inputs) -> float:
    elt = x.q.element_size()
    return elt * HEAD_DIM * HEADS * (2 * x.visible_keys + 2 * x.q.shape[0] * x.q.shape[2])


# -- implementations -----------------------------------------------------------------------------------------

def run_triton(case: Case, x: Inputs):
    from cogvideo_engine.kernels.triton_attention import window_attention_triton

    rule = case.rule
    return lambda: window_attention_triton(x.q, x.k, x.v, x.q_index, x.text_len, x.text_bias, rule)


def run_triton_ranged(case: Case, x: Inputs):
    from cogvideo_engine.kernels.triton_attention import window_attention_triton

    rule = case.rule
    return lambda: window_attention_triton(x.q, x.k, x.v, x.q_index, x.text_len, x.text_bias, rule, walk="ranged")


def run_sdpa(case: Case, x: Inputs):
    mask = x.additive.to(x.q.dtype)
    return lambda: F.scaled_dot_product_attention(x.q, x.k, x.v, attn_mask=mask)


def run_flex(case: Case, x: Inputs):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    rule, lay = case.rule, case.layout
    q_rows = x.q_index  # [B, Q] stream indices
    text_len, cap = case.text_len, rule.text_capacity
    bias = TEXT_BIAS

    def key_stream(kv_idx):
        return stream_index_of_row(kv_idx, text_len, cap)

    def mask_mod(b, h, q_idx, kv_idx):
        qi = q_rows[b, q_idx]
        ki, ok = key_stream(kv_idx)
        if rule.temporal:
            return lay.temporal_visible(qi, ki, rule.layer_parity) & ok
        return lay.spatial_visible(qi, ki) & ok

    def score_mod(score, b, h, q_idx, kv_idx):
        qi = q_rows[b, q_idx]
        biased = (kv_idx < text_len) & ((lay.kind(qi) == 2) if rule.temporal else (qi >= 0))
        return score + biased * bias

    n_q, n_k = x.q.shape[2], x.k.shape[2]
    block = create_block_mask(mask_mod, case.batch, None, n_q, n_k, device=x.q.device.type)
    torch._dynamo.reset()  # compile each case for its own static shapes (recompiling dynamic ones fails on CPU)
    fn = torch.compile(flex_attention)  # FlexAttention is meant to run compiled (CPU and CUDA)
    return lambda: fn(x.q, x.k, x.v, score_mod=score_mod, block_mask=block)


def original_key_rows(case: Case, qi: int) -> list[int]:
    """Cache rows a decode query reads in the original code: contiguous ranges, or (stage-2 temporal) the
    index list its Python loops build from the clipped window start/end, slot by slot."""
    lay, g = case.layout, case.rule.geometry
    text = list(range(case.text_len))
    slot, p = int(lay.slot(qi)), int(lay.block_pos(qi))
    frame0 = case.text_len
    if not case.rule.temporal:  # [text | current frame so far]
        return text + list(range(frame0 + g.frame_len * slot, qi + 1))
    if not case.rule.windowed:  # stage 1: [text | every fed frame position]
        return text + list(range(frame0, qi + 1))
    s, w = case.rule.shift, g.window
    x, y = divmod(p, g.grid)
    xs, ys = ((x + s) // w) * w - s, ((y + s) // w) * w - s
    xe, ye = min(xs + w, g.grid), min(ys + w, g.grid)
    xs, ys = max(xs, 0), max(ys, 0)
    window = [a * g.grid + c for a in range(xs, xe) for c in range(ys, ye)]
    rows = [frame0 + f * g.frame_len + c for f in range(slot) for c in window]
    rows += [frame0 + slot * g.frame_len + c for c in window if c < p]
    return text + rows + [qi]


def run_gather(case: Case, x: Inputs):
    """Decode in the original code's style: per-query Python index lists, index_select, dense softmax."""
    lay = case.layout
    q_index = x.q_index.tolist()
    scale = 1.0 / math.sqrt(HEAD_DIM)
    bias = [TEXT_BIAS if (not case.rule.temporal or lay.kind(qi) == 2) else 0.0 for qi in q_index[0]]

    def step():
        outs = []
        for b in range(case.batch):
            rows = []
            for j, qi in enumerate(q_index[b]):
                idx = torch.tensor(original_key_rows(case, qi), device=x.k.device)
                k = x.k[b].index_select(1, idx)
                v = x.v[b].index_select(1, idx)
                s = (x.q[b, :, j:j + 1] * scale) @ k.transpose(-1, -2)
                s[..., :case.text_len] += bias[j]
                rows.append(torch.softmax(s.float(), -1).to(v.dtype) @ v)
            outs.append(torch.cat(rows, dim=1))
        return torch.stack(outs)
    return step


def run_csrc(case: Case, x: Inputs):
    from cogvideo_engine.kernels.csrc_ops import window_attention_csrc

    rule = case.rule
    return lambda: window_attention_csrc(x.q, x.k, x.v, x.q_index, x.text_len, x.text_bias, rule)


IMPLS = {"triton": run_triton, "triton-ranged": run_triton_ranged, "cuda": run_csrc, "cpu": run_csrc,
         "sdpa": run_sdpa, "flex": run_flex, "gather": run_gather}


def applicable(impl: str, case: Case, device: str) -> str | None:
    """None if ``impl`` runs for ``case`` on ``device``, else the reason it is skipped."""
    if impl.startswith("triton") and device != "cuda":
        return "the Triton kernel runs on CUDA only (the CPU interpreter is not a speed)"
    if impl == "triton-ranged" and case.decode:
        return "the ranged walk is the prefill path's (decode steps take the split-KV path)"
    if impl in ("cpu", "cuda"):
        from cogvideo_engine.kernels.csrc_ops import csrc_status

        if impl != device:
            return f"the {impl} kernel runs on {impl} tensors"
        ok, why = csrc_status(impl)
        if not ok:
            return why
    if impl == "gather" and not case.decode:
        return "the original code's gather path is a decode path"
    return None
