"""The model runner: fused weights, a static KV cache in the kernels' layout, rows with their own text length.

What the reference model computes (:mod:`cogvideo_engine.models.cogvideo`), arranged for speed:

* both channels' QKV projections read the same LN'd input: one GEMM with concatenated weights;
* frame rows of video passes mix ``alpha * dense_base(cs) + (1 - alpha) * dense_plus(ct)``: one GEMM over
  ``[cs | ct]`` with alpha folded into the weights (text rows and the first-frame pass use dense_base alone);
* the KV cache is preallocated in the layout of :mod:`cogvideo_engine.kernels.layout` -- a fixed text region of
  ``text_capacity`` rows, then every slot at a fixed offset -- so rows with different text lengths (the
  guided cond and uncond streams, different prompts) share every forward, frames aligned; a cache holds up
  to ``capacity`` rows and is re-bound to new rows (:meth:`StaticCache.bind`) for every batch it serves, so it
  lives as long as the engine (:class:`~.cache_pool.CachePool`);
* on CPU in fp32 the linear layers run the batch-invariant kernel (``kernels.batch_invariant``): a row's
  outputs are bit-identical whatever else shares the forward, so batching requests changes no token;
* there, with the csrc attention, a decode step's whole forward (every layer, the logits head) is one C++ call
  (``kernels.decode_stack``: no interpreter between the few-row operations around the weight streams);
  :meth:`ModelRunner._layers` is its twin and runs everywhere else;
* attention goes through a backend by name (``reference``, ``triton``, ``cpu``, ``cuda``);
* a model shard (:mod:`cogvideo_engine.parallel`: 1/N of the heads of both channels, of the MLP and of the
  logits head) runs the same forward on its heads; each layer's attention output (both channels' partial
  products, mixed before the reduce) and its MLP output are summed over the ranks by one all-reduce each, their
  biases added once after it, and the logits' vocabulary slices are all-gathered. On the driver rank every
  cache made, prefill and step is first sent to the other ranks, which repeat it on their shards
  (:mod:`cogvideo_engine.parallel.group`);
* a forward takes its position ids from one table (base rows below the extra table's start, then the extra
  rows) by plain indexing, and nothing in it waits for the host, so on CUDA a decode step is captured once
  per cache and number of positions as a CUDA graph and replayed (:class:`DecodeGraphs`).

A forward feeds, for every row, the same frame positions (slot, block position); in the prefill each row
feeds its own text (padded to ``text_capacity`` with ignored queries) and the given frames.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cogvideo_engine.kernels.batch_invariant import linear_rows, linear_rows_available
from cogvideo_engine.kernels.decode_stack import MATRICES, DecodeStack, decode_stack_available
from cogvideo_engine.kernels.layout import SPATIAL, TEMPORAL, AttentionRule
from cogvideo_engine.kernels.reference import compute_dtype, text_lengths_checked
from cogvideo_engine.kernels.registry import default_backend, get_backend
from cogvideo_engine.kernels.rules import Pass, StreamLayout

from ..models.cogvideo import CogVideoModel
from ..models.config import NUM_IMAGE_TOKENS, ModelConfig
from ..models.layers import gelu_tanh
from ..parallel.sharding import shard_of

SMALL_ROWS = 8
GRAPH_SAFE_BACKENDS = ("triton", "cuda")  # backends with no host synchronisation inside (CUDA-graph capturable)


def _blas_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``; on CPU with a few rows (decode) as ``W @ x^T``, which the CPU BLAS runs as a
    weight-streaming kernel (measured 7x faster than ``F.linear`` for 2 rows x the 20000 x 512 head)."""
    rows = x.numel() // x.shape[-1]
    if x.is_cuda or rows > SMALL_ROWS:
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, x.shape[-1])
    out = torch.addmm(bias[:, None], weight, flat.t()) if bias is not None else weight @ flat.t()
    return out.t().reshape(*x.shape[:-1], weight.shape[0])


def _on_host(value):
    """``value`` with its tensors (also inside a list) copied to the CPU, to travel in a command."""
    if isinstance(value, list):
        return [_on_host(v) for v in value]
    return value.cpu() if isinstance(value, torch.Tensor) else value


def graphs_by_default(device: torch.device | str, backend=None) -> bool:
    """Whether a runner on ``device`` with ``backend`` replays decode steps as CUDA graphs by default: on CUDA with
    a fused backend (they never wait for the host; the reference and custom functions may)."""
    device = torch.device(device)
    if device.type != "cuda" or callable(backend):
        return False
    return (default_backend(device) if backend in (None, "auto") else backend) in GRAPH_SAFE_BACKENDS


def batch_invariance_status(device: torch.device | str, dtype: torch.dtype, world: int = 1) -> tuple[bool, str]:
    """Whether decode forwards on ``device`` in ``dtype`` over ``world`` tensor-parallel ranks are
    batch-invariant here (a row's logits bit-identical whatever shares its forward), and why (not)."""
    device = torch.device(device)
    if world > 2:
        return False, (f"an all-reduce over {world} ranks sums each element in an order that depends on where it "
                       "falls in the reduced tensor's chunks, so on the batch's size")
    if device.type != "cpu":
        return False, (f"on {device.type} the linear layers use the vendor BLAS; rows are padded to the cache's "
                       "capacity (one shape per cache), which cuBLAS computes the same way for every row position")
    if dtype != torch.float32:
        return False, f"the batch-invariant linear kernel is fp32 only (model dtype {dtype})"
    return linear_rows_available()


@dataclass
class _LayerWeights:
    qkv_w: torch.Tensor  # [6h, h]: base Q|K|V then attention-plus Q|K|V
    qkv_b: torch.Tensor
    base_out_w: torch.Tensor  # [h, h]
    base_out_b: torch.Tensor
    mixed_out_w: torch.Tensor  # [h, 2h]: [alpha * W_base | (1 - alpha) * W_plus]
    mixed_out_b: torch.Tensor


class StaticCache:
    """K/V of both channels for up to ``capacity`` rows, ``[layers, capacity, rows + 1, H, d]`` per channel and
    K/V (``H = heads``: the model's, or a tensor-parallel rank's share), allocated once (zeros) and re-bound to
    the rows of each batch it serves (:meth:`bind`).

    Row ``text_capacity + frame_len * slot + p`` holds slot ``slot``, block position ``p``; text token ``j``
    of batch row ``b`` sits at row ``j`` (rows ``text_len[b]..text_capacity-1`` unused). The extra last row
    absorbs the writes of padded queries. Kernels read it through a ``[B, H, rows, d]`` strided view of the
    first ``B`` bound rows. What a previous batch left in the cache is never read: a query sees only text rows
    below its own text length, the given frames (prefilled) and target positions fed before it.
    """

    def __init__(self, cfg: ModelConfig, layout: StreamLayout, text_capacity: int, capacity: int, dtype, device,
                 heads: int | None = None):
        self.pass_, self.num_targets = layout.pass_, layout.num_targets
        self.geometry, self.stage1_windowed = layout.geometry, layout.stage1_windowed
        self.text_capacity, self.capacity = text_capacity, capacity
        if not layout.text_len <= text_capacity:
            raise ValueError(f"text length {layout.text_len} exceeds the cache's text capacity {text_capacity}")
        self.rules = AttentionRule.launch_rules(layout, text_capacity)
        rows = self.rules[SPATIAL, 0].cache_len
        shape = (cfg.num_layers, capacity, rows + 1, heads or cfg.num_attention_heads, cfg.head_dim)
        channels = 2 if layout.pass_.mixes_temporal else 1
        self._k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(channels)]
        self._v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(channels)]
        self._text_len = torch.ones(capacity, dtype=torch.long, device=device)
        self.scratch_row = rows
        self.graphs: DecodeGraphs | None = None  # the CUDA graphs of this cache's steps, while it lives
        self.frame_offsets: dict[tuple, torch.Tensor] = {}  # positions fed -> their frame offsets, on the device
        self.frame_positions: dict[tuple, torch.Tensor] = {}  # positions fed -> their position ids [1, n], ditto
        self.tp_id: int | None = None  # on a tensor-parallel driver: the id of the workers' mirrors
        self.bind([layout])

    @property
    def key(self) -> tuple:
        """What a batch must share to use this cache: pass, targets, geometry, temporal rule."""
        return self.pass_, self.num_targets, self.geometry, self.stage1_windowed

    def bind(self, layouts: list[StreamLayout]) -> StaticCache:
        """Serve one row per layout (at most ``capacity``; all of this cache's :attr:`key`, text lengths up to
        ``text_capacity``) from now on."""
        if not 1 <= len(layouts) <= self.capacity:
            raise ValueError(f"{len(layouts)} rows for a cache of {self.capacity}")
        for lay in layouts:
            if (lay.pass_, lay.num_targets, lay.geometry, lay.stage1_windowed) != self.key:
                raise ValueError("rows of one cache must share the pass, targets, geometry and temporal rule")
            if not 1 <= lay.text_len <= self.text_capacity:  # checked here, once: the kernels do not read them back
                raise ValueError(f"text length {lay.text_len} must lie in 1..the cache's text capacity "
                                 f"{self.text_capacity}")
        b = len(layouts)
        self.layouts = list(layouts)
        self._text_len[:b].copy_(torch.tensor([lay.text_len for lay in layouts]))
        self.text_len = self._text_len[:b]
        self.k = [t[:, :b] for t in self._k]
        self.v = [t[:, :b] for t in self._v]
        self.stack_channels: list[tuple] | None = None  # the decode stack's view of k and v, made at its first step
        return self

    def row(self, b: int) -> StaticCache:
        """A view of bound row ``b`` alone (a one-row cache sharing this one's memory)."""
        view = copy.copy(self)
        view.layouts, view.text_len = [self.layouts[b]], self.text_len[b:b + 1]
        view.k, view.v = [t[:, b:b + 1] for t in self.k], [t[:, b:b + 1] for t in self.v]
        view.graphs = view.stack_channels = None
        return view

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._k + self._v)

    def rule(self, channel: str, layer_id: int) -> AttentionRule:
        return self.rules[channel, layer_id % 2]

    def view(self, channel: int, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.k[channel][layer_id].transpose(1, 2)[:, :, :-1],
                self.v[channel][layer_id].transpose(1, 2)[:, :, :-1])


def cache_bytes_per_row(cfg: ModelConfig, layout: StreamLayout, text_capacity: int, dtype: torch.dtype,
                        heads: int | None = None) -> int:
    """Bytes one row of a :class:`StaticCache` for ``layout``'s pass takes (both channels where mixed, K and V),
    with ``heads`` heads (default: all of the model's)."""
    rows = AttentionRule.launch_rules(layout, text_capacity)[SPATIAL, 0].cache_len + 1
    channels = 2 if layout.pass_.mixes_temporal else 1
    width = (heads or cfg.num_attention_heads) * cfg.head_dim
    return 2 * channels * cfg.num_layers * rows * width * torch.empty(0, dtype=dtype).element_size()


def weight_bytes(model: CogVideoModel) -> int:
    """Bytes a decode step must read (on this rank, for a tensor-parallel shard): every layer's weights and the
    logits head's 20000 rows (a shard's share of them), which the runner keeps in fp32 as the logits are
    computed in fp32 (the embedding lookup reads only a few rows)."""
    layers = sum(p.numel() * p.element_size() for p in model.transformer.layers.parameters())
    plus = sum(p.numel() * p.element_size() for p in model.mixins["attention_plus"].parameters())
    return layers + plus + shard_of(model).share(NUM_IMAGE_TOKENS) * model.config.hidden_size * 4


class ModelRunner:
    """Runs a :class:`CogVideoModel` with fused weights and a static cache (see the module docstring)."""

    fusions = 0
    """How many runners fused a model's weights in this process (each fuses once, when made)."""

    def __init__(self, model: CogVideoModel, backend=None, *, cuda_graphs: bool | None = None,
                 batch_invariant: bool | None = None, decode_stack: bool | None = None,
                 decode_weights: torch.dtype | None = None):
        """``backend``: a backend name (None: the best available) or an attention function with the contract
        of ``kernels.reference.window_attention`` (e.g. a benchmark's baseline). ``cuda_graphs``: replay decode
        steps as CUDA graphs (None: on CUDA with a fused backend, ``triton`` or ``cuda``). ``batch_invariant``:
        decode forwards with the batch-invariant linear kernel (None: where :func:`batch_invariance_status`
        says it applies -- CPU, fp32, the extension built; True where it does not is an error). ``decode_stack``:
        batch-invariant decode steps as one C++ call (:mod:`~cogvideo_engine.kernels.decode_stack`; None: where it
        applies -- batch-invariant, the csrc CPU attention, one rank; True where it does not is an error; False:
        the Python forward, its twin). ``decode_weights``: ``torch.bfloat16`` runs the decode stack's linears on
        bf16 copies of the weight matrices and the logits head (half the bytes a step streams; the arithmetic stays
        fp32, with the bf16-rounded weights: not the model's exact logits); None (default) or ``torch.float32``:
        the model's fp32 weights. It needs the decode stack (an error where that cannot run).

        A tensor-parallel shard (:func:`~cogvideo_engine.parallel.sharding.load_model_shard`, bound to its
        group) runs its heads; on the driver rank the runner is mirrored on the other ranks (the backend must be
        a name there)."""
        self.model = model
        cfg = model.config
        self.shard = shard_of(model)
        self.tp = getattr(model, "tensor_parallel", None) if self.shard.world > 1 else None
        if self.shard.world > 1 and self.tp is None:
            raise ValueError("a tensor-parallel model shard runs inside its group (Engine.from_pretrained(..., "
                             "tensor_parallel=N) binds it)")
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        if cuda_graphs is None:
            cuda_graphs = graphs_by_default(self.device, backend)
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError("cuda_graphs needs a model on a CUDA device")
        self.cuda_graphs = cuda_graphs
        possible, why = batch_invariance_status(self.device, self.dtype, self.shard.world)
        if batch_invariant and not possible:
            raise ValueError(f"batch_invariant needs the fp32 CPU kernel: {why}")
        self.batch_invariant = possible if batch_invariant is None else batch_invariant
        self.backend = backend
        self.attend = backend if callable(backend) else get_backend(backend, self.device)
        plus = model.mixins["attention_plus"]
        self.layers = []
        wide = compute_dtype(p.dtype)  # alpha folding and the logits head: fp32 (fp64 for an fp64 model)
        with torch.no_grad():
            for i, layer in enumerate(model.transformer.layers):
                alpha = torch.sigmoid(plus.attn_distribution[i].to(wide))
                base_w, base_b = layer.attention.dense.weight, layer.attention.dense.bias
                plus_w, plus_b = plus.dense[i].weight, plus.dense[i].bias
                self.layers.append(_LayerWeights(
                    qkv_w=torch.cat([layer.attention.query_key_value.weight, plus.query_key_value[i].weight]),
                    qkv_b=torch.cat([layer.attention.query_key_value.bias, plus.query_key_value[i].bias]),
                    base_out_w=base_w, base_out_b=base_b,
                    mixed_out_w=torch.cat([alpha[:, None] * base_w.to(wide), (1 - alpha)[:, None] * plus_w.to(wide)],
                                          dim=1).to(p.dtype),
                    mixed_out_b=(alpha * base_b.to(wide) + (1 - alpha) * plus_b.to(wide)).to(p.dtype)))
        self.heads = self.shard.share(cfg.num_attention_heads)  # this rank's heads (all of them at world 1)
        self.head_dim = cfg.head_dim
        self.local_hidden = self.heads * self.head_dim  # the width of this rank's q, k, v and attention contexts
        # the wide logits head (tied to the image-token embeddings; a shard's slice of the image tokens), converted
        # once instead of at every step
        head_rows = model.transformer.word_embeddings.weight[:NUM_IMAGE_TOKENS][self.shard.part(NUM_IMAGE_TOKENS)]
        self.logits_head = head_rows.to(wide)
        start = cfg.geometry.extra_table_start  # position id -> row of [base[:start] | extra]
        self.position_table = torch.cat([model.transformer.position_embeddings.weight[:start],
                                         model.mixins["extra_position_embedding"].position_embeddings.weight])
        if decode_weights not in (None, torch.float32, torch.bfloat16):
            raise ValueError(f"decode_weights must be None, torch.float32 or torch.bfloat16, got {decode_weights}")
        self.decode_weights = decode_weights if decode_weights is not torch.float32 else None
        possible, why = self._decode_stack_status()
        if decode_stack and not possible:
            raise ValueError(f"decode_stack cannot run here: {why}")
        if self.decode_weights is not None and (not possible or decode_stack is False):
            raise ValueError("decode_stack (decode_weights=bfloat16 needs it) cannot run here: "
                             f"{why if not possible else 'decode_stack=False'}")
        self.decode_stack = self._bind_decode_stack() if possible and decode_stack is not False else None
        ModelRunner.fusions += 1
        self.last_logits: torch.Tensor | None = None  # a tensor-parallel forward's gathered logits (for checks)
        self.tp_id = self.tp.mirror_runner(self) if self.tp is not None and self.tp.is_driver else None

    def follow_model(self) -> None:
        """After the model moved (``model.to(device)``, offload): move the runner's own fused copies with it
        (the model's parameters it uses directly move with the model). Cheap when nothing moved."""
        device = next(self.model.parameters()).device
        if device == self.device:
            return
        for w in self.layers:
            for name in ("qkv_w", "qkv_b", "mixed_out_w", "mixed_out_b"):
                setattr(w, name, getattr(w, name).to(device))
            w.base_out_w = w.base_out_w.to(device)
            w.base_out_b = w.base_out_b.to(device)
        self.logits_head = self.logits_head.to(device)
        self.position_table = self.position_table.to(device)
        self.device = device
        if self.decode_stack is not None or device.type == "cpu":  # re-bound to the moved tensors (or dropped)
            self.decode_stack = self._bind_decode_stack() if self._decode_stack_status()[0] else None

    def _decode_stack_status(self) -> tuple[bool, str]:
        """Whether decode steps can run as one C++ call (:mod:`~cogvideo_engine.kernels.decode_stack`), and why
        (not)."""
        if not self.batch_invariant:
            return False, "it runs the batch-invariant fp32 CPU linears, which this runner does not"
        if self.tp is not None:
            return False, "a tensor-parallel shard reduces its partial sums between the layers"
        backend = None if callable(self.backend) else (
            default_backend(self.device) if self.backend in (None, "auto") else self.backend)
        if self.device.type != "cpu" or backend != "cpu":
            return False, "it runs the csrc CPU attention, not this runner's attention backend"
        return decode_stack_available()

    def _bind_decode_stack(self) -> DecodeStack:
        """The decode stack over the model's tensors and the fused copies (with ``decode_weights``: bf16 copies of
        the matrices, made here)."""
        model = self.model
        layers = [dict(ln_in_w=layer.input_layernorm.weight, ln_in_b=layer.input_layernorm.bias,
                       qkv_w=w.qkv_w, qkv_b=w.qkv_b, base_w=w.base_out_w, base_b=w.base_out_b,
                       mixed_w=w.mixed_out_w, mixed_b=w.mixed_out_b,
                       ln_third_w=layer.third_layernorm.weight, ln_third_b=layer.third_layernorm.bias,
                       ln_post_w=layer.post_attention_layernorm.weight,
                       ln_post_b=layer.post_attention_layernorm.bias,
                       up_w=layer.mlp.dense_h_to_4h.weight, up_b=layer.mlp.dense_h_to_4h.bias,
                       down_w=layer.mlp.dense_4h_to_h.weight, down_b=layer.mlp.dense_4h_to_h.bias,
                       ln_fourth_w=layer.fourth_layernorm.weight, ln_fourth_b=layer.fourth_layernorm.bias)
                  for layer, w in zip(model.transformer.layers, self.layers, strict=True)]
        final = model.transformer.final_layernorm
        head = self.logits_head
        if self.decode_weights is not None:
            layers = [{n: t.to(self.decode_weights) if n in MATRICES else t for n, t in layer.items()}
                      for layer in layers]
            head = head.to(self.decode_weights)
        return DecodeStack(layers, final.weight, final.bias, head, heads=self.heads, head_dim=self.head_dim,
                           eps=final.eps)

    def new_cache(self, layouts: list[StreamLayout], *, text_capacity: int | None = None,
                  capacity: int | None = None) -> StaticCache:
        """A cache bound to one row per layout (all rows share the pass, the number of targets and the geometry),
        with room for ``capacity`` rows (default: these) of up to ``text_capacity`` text tokens (default: the
        longest of these)."""
        text_capacity = max(lay.text_len for lay in layouts) if text_capacity is None else text_capacity
        return self.allocate_cache(layouts[0], text_capacity, capacity or len(layouts)).bind(layouts)

    def allocate_cache(self, layout: StreamLayout, text_capacity: int, capacity: int) -> StaticCache:
        """A :class:`StaticCache` of this runner's heads for ``layout``'s pass (``capacity`` rows of up to
        ``text_capacity`` text tokens), bound to ``layout``; on a tensor-parallel driver, mirrored on the other
        ranks. Every cache this runner feeds is made here."""
        cache = StaticCache(self.model.config, layout, text_capacity, capacity, self.dtype, self.device,
                            heads=self.heads)
        if self.tp_id is not None:
            cache.tp_id = self.tp.mirror_cache(self, cache, layout, text_capacity, capacity)
        return cache

    def _announce(self, op: str, cache: StaticCache, *args) -> None:
        """On a tensor-parallel driver: tell the other ranks to run ``op`` on their mirrors of this runner and
        ``cache`` (host tensors travel: they are the same inputs on every rank)."""
        if self.tp_id is None:
            return
        if cache.tp_id is None:
            raise ValueError("this cache was not made by a tensor-parallel runner (ModelRunner.allocate_cache)")
        self.tp.send(op, self.tp_id, cache.tp_id, *[_on_host(a) for a in args])

    # -- inputs -------------------------------------------------------------------------------------------

    @staticmethod
    def frame_index(cache: StaticCache, positions: list[tuple[int, int]]) -> torch.Tensor:
        """``[B, n]`` stream index of each row at frame positions (slot, block position). The offsets of each set
        of positions are made on the device once per cache (a pass's schedule repeats them for every batch), not
        copied from the host at every step."""
        key = tuple(positions)
        rel = cache.frame_offsets.get(key)
        if rel is None:
            frame_len = cache.layouts[0].geometry.frame_len
            rel = cache.frame_offsets[key] = torch.tensor([frame_len * s + p for s, p in positions],
                                                          device=cache.text_len.device)
        return cache.text_len[:, None] + rel[None, :]

    def prefill(self, cache: StaticCache, text_ids: list[torch.Tensor], given_ids: torch.Tensor,
                text_bias: torch.Tensor, *, logits: bool = False) -> torch.Tensor | None:
        """Feed each row's text (``text_ids[b]``: its own length) and the given blocks ``given_ids [B, n, F]``
        (already BOI-shifted: ``[BOI, token 0..F-2]``). Returns ``[B, T + F * n, V]`` logits if asked, ``T``
        the longest row's text length (a shorter row's logits are zeros after its own text).

        Each row is prefilled on its own (its text unpadded): a prefill is thousands of rows, where the BLAS
        picks its algorithm by shape, so a row's cache must not depend on the batch it shares.
        """
        self._announce("prefill", cache, cache.layouts, text_ids, given_ids, text_bias, logits)
        n_given, frame_len = given_ids.shape[1], cache.layouts[0].geometry.frame_len
        longest = max(t.numel() for t in text_ids)
        out = None
        for b, t in enumerate(text_ids):
            row = cache.row(b)
            positions = [(s, p) for s in range(n_given) for p in range(frame_len)]
            ids = torch.cat([t.to(self.device), given_ids[b].reshape(-1).to(self.device)])[None]
            q_text = torch.arange(t.numel(), device=self.device)[None]
            q_index = torch.cat([q_text, self.frame_index(row, positions)], dim=1) if positions else q_text
            got = self._forward(row, ids, q_index, self.position_ids(row, q_index),
                                text_bias[b:b + 1].to(self.device, torch.float32), logits, invariant=False)
            if logits:
                if out is None:
                    out = got.new_zeros(len(text_ids), longest + n_given * frame_len, got.shape[-1])
                out[b, :t.numel()] = got[0, :t.numel()]
                out[b, longest:] = got[0, t.numel():]
        return out

    def step(self, cache: StaticCache, positions: list[tuple[int, int]], input_ids: torch.Tensor,
             text_bias: torch.Tensor) -> torch.Tensor:
        """Feed frame positions (the same for every row) with ``input_ids [B, n]``; logits ``[B, n, V]``."""
        self._announce("step", cache, positions, input_ids, text_bias, False)
        return self._forward(cache, *self.step_inputs(cache, positions, input_ids, text_bias), True,
                             invariant=self.batch_invariant)

    def step_inputs(self, cache: StaticCache, positions: list[tuple[int, int]], input_ids: torch.Tensor,
                    text_bias: torch.Tensor) -> list[torch.Tensor]:
        """The device tensors a step's forward reads: ids, query indices, position ids, text bias."""
        q_index = self.frame_index(cache, positions)
        b = len(cache.layouts)
        return [input_ids.to(self.device), q_index, self.frame_position_ids(cache, positions).expand(b, -1),
                text_bias.to(self.device, torch.float32)]

    def frame_position_ids(self, cache: StaticCache, positions: list[tuple[int, int]]) -> torch.Tensor:
        """``[1, n]`` position ids of frame positions, the same for every row of the cache (a frame's position id
        follows from its slot and block position, not from the row's text length), computed on the host and made
        on the device once per cache and set of positions."""
        key = tuple(positions)
        ids = cache.frame_positions.get(key)
        if ids is None:
            lay = cache.layouts[0]
            ids = cache.frame_positions[key] = torch.tensor([[lay.position_id(lay.index(s, p)) for s, p in positions]],
                                                            device=cache.text_len.device)
        return ids

    def stepper(self, cache: StaticCache):
        """The decode-step function for ``cache``: :meth:`step`, or its CUDA-graph replay when enabled."""
        if not self.cuda_graphs:
            return lambda positions, input_ids, text_bias: self.step(cache, positions, input_ids, text_bias)
        if cache.graphs is None or cache.graphs.runner is not self:
            cache.graphs = DecodeGraphs(self, cache)
        if self.tp_id is None:
            return cache.graphs.step

        def replay(positions, input_ids, text_bias):  # every rank captures and replays its own graphs in step
            self._announce("step", cache, positions, input_ids, text_bias, True)
            return cache.graphs.step(positions, input_ids, text_bias)

        return replay

    @staticmethod
    def position_ids(cache: StaticCache, q_index: torch.Tensor) -> torch.Tensor:
        """``[B, n]`` position id of each query (padding queries: 0)."""
        safe = q_index.clamp(min=0)
        return torch.stack([lay.position_id(safe[i]) for i, lay in enumerate(cache.layouts)])

    # -- the forward --------------------------------------------------------------------------------------

    @torch.no_grad()
    def _forward(self, cache: StaticCache, ids: torch.Tensor, q_index: torch.Tensor, position: torch.Tensor,
                 text_bias: torch.Tensor, want_logits: bool, *, invariant: bool = False) -> torch.Tensor | None:
        """One forward; device tensors in, no host synchronisation inside (CUDA-graph capturable; the cache's text
        lengths were checked when it was bound: :func:`text_lengths_checked`; tests/generation/test_host_sync.py).
        ``invariant``: the linear layers through the batch-invariant kernel (decode steps)."""
        if invariant and self.decode_stack is not None:
            return self._stack_forward(cache, ids, q_index, position, text_bias, want_logits)
        with text_lengths_checked():
            return self._layers(cache, ids, q_index, position, text_bias, want_logits, invariant)

    def _stack_forward(self, cache: StaticCache, ids: torch.Tensor, q_index: torch.Tensor, position: torch.Tensor,
                       text_bias: torch.Tensor, want_logits: bool) -> torch.Tensor | None:
        """:meth:`_layers` with ``invariant`` in one C++ call (``kernels.decode_stack.DecodeStack``)."""
        x = self.model.transformer.word_embeddings(ids) + self.position_table[position]
        if cache.stack_channels is None:  # once per binding of the cache
            names = (SPATIAL, TEMPORAL) if cache.pass_.mixes_temporal else (SPATIAL,)
            cache.stack_channels = DecodeStack.channels([(cache.k[c], cache.v[c], cache.rule(name, 0),
                                                          cache.rule(name, 1)) for c, name in enumerate(names)])
        return self.decode_stack.forward(x, q_index, cache.text_len.to(torch.int32), text_bias.contiguous(),
                                         cache.stack_channels, cache.scratch_row, want_logits)

    def _layers(self, cache: StaticCache, ids: torch.Tensor, q_index: torch.Tensor, position: torch.Tensor,
                text_bias: torch.Tensor, want_logits: bool, invariant: bool) -> torch.Tensor | None:
        model = self.model
        linear = linear_rows if invariant else _blas_linear
        b, n = ids.shape
        valid = q_index >= 0
        safe = q_index.clamp(min=0)
        is_frame = safe >= cache.text_len[:, None]
        rows = torch.where(is_frame, safe - cache.text_len[:, None] + cache.text_capacity, safe)
        rows = torch.where(valid, rows, torch.full_like(rows, cache.scratch_row))
        batch_idx = torch.arange(b, device=self.device)[:, None]
        mixes = (is_frame & valid)[..., None] if cache.pass_.mixes_temporal else None
        meta = (q_index, cache.text_len, text_bias)

        x = model.transformer.word_embeddings(ids) + self.position_table[position]
        tp = self.tp
        h = self.local_hidden
        channels = 2 if cache.pass_.mixes_temporal else 1
        for layer_id, (layer, w) in enumerate(zip(model.transformer.layers, self.layers, strict=True)):
            a = layer.input_layernorm(x)
            qkv = linear(a, w.qkv_w[:3 * h * channels], w.qkv_b[:3 * h * channels])
            contexts = []
            for channel in range(channels):
                q, k, v = qkv[..., 3 * h * channel: 3 * h * (channel + 1)].split(h, dim=-1)
                cache.k[channel][layer_id][batch_idx, rows] = k.view(b, n, self.heads, self.head_dim)
                cache.v[channel][layer_id][batch_idx, rows] = v.view(b, n, self.heads, self.head_dim)
                k_all, v_all = cache.view(channel, layer_id)
                name = SPATIAL if channel == 0 else TEMPORAL
                ctx = self.attend(q.view(b, n, self.heads, self.head_dim).transpose(1, 2), k_all, v_all, *meta,
                                  cache.rule(name, layer_id))
                contexts.append(ctx.transpose(1, 2).reshape(b, n, h))
            if tp is None:
                out = linear(contexts[0], w.base_out_w, w.base_out_b)
                if channels == 2:
                    mixed = linear(torch.cat(contexts, dim=-1), w.mixed_out_w, w.mixed_out_b)
                    out = torch.where(mixes, mixed, out)
            else:  # partial sums of this rank's heads, mixed, reduced once; the (whole) biases added after
                out = linear(contexts[0], w.base_out_w)
                bias = w.base_out_b
                if channels == 2:
                    out = torch.where(mixes, linear(torch.cat(contexts, dim=-1), w.mixed_out_w), out)
                    bias = torch.where(mixes, w.mixed_out_b, w.base_out_b)
                out = tp.all_reduce(out) + bias
            x = x + layer.third_layernorm(out)
            m = layer.post_attention_layernorm(x)
            up = linear(m, layer.mlp.dense_h_to_4h.weight, layer.mlp.dense_h_to_4h.bias)
            down_bias = layer.mlp.dense_4h_to_h.bias
            down = linear(gelu_tanh(up), layer.mlp.dense_4h_to_h.weight, None if tp is not None else down_bias)
            if tp is not None:
                down = tp.all_reduce(down) + down_bias
            x = x + layer.fourth_layernorm(down)
        if not want_logits:
            return None
        logits = linear(model.transformer.final_layernorm(x).to(self.logits_head.dtype), self.logits_head)
        if tp is not None:
            logits = self.last_logits = tp.gather_last(logits)
        return logits


class DecodeGraphs:
    """CUDA graphs of :meth:`ModelRunner.step` for one cache: one per number of positions fed per step, kept on the
    cache (:attr:`StaticCache.graphs`) and replayed for every batch the cache serves at the same bound row count.

    The first step with ``n`` positions runs once eagerly on a side stream (warm-up; feeding the same positions
    twice writes the same keys, so it is harmless), is captured into a graph reading static input buffers, and
    is replayed; later steps with ``n`` positions only copy their inputs into the buffers and replay. The
    returned logits live in the graph's output buffer until the next replay of that graph.
    """

    captures = 0
    """Graphs captured in this process (a test counts them across requests)."""

    def __init__(self, runner: ModelRunner, cache: StaticCache):
        self.runner, self.cache = runner, cache
        self.graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor] | None] = {}

    def step(self, positions: list[tuple[int, int]], input_ids: torch.Tensor, text_bias: torch.Tensor):
        r, cache = self.runner, self.cache
        inputs = r.step_inputs(cache, positions, input_ids, text_bias)
        n = (len(cache.layouts), len(positions))
        if n not in self.graphs:
            try:
                self.graphs[n] = self._capture(inputs)
                DecodeGraphs.captures += 1
            except RuntimeError as e:  # e.g. an op that synchronises: run eagerly from now on, and say so
                warnings.warn(f"CUDA-graph capture of the decode step failed, running it eagerly: {e}", stacklevel=2)
                self.graphs[n] = None
        if self.graphs[n] is None:
            return r._forward(cache, *inputs, True)
        graph, buffers, out = self.graphs[n]
        for buf, value in zip(buffers, inputs, strict=True):
            buf.copy_(value, non_blocking=True)
        graph.replay()
        return out

    def _capture(self, inputs: list[torch.Tensor]):
        r, cache = self.runner, self.cache
        buffers = [t.clone() for t in inputs]
        side = torch.cuda.Stream(r.device)
        side.wait_stream(torch.cuda.current_stream(r.device))
        with torch.cuda.stream(side):
            r._forward(cache, *buffers, True)
        torch.cuda.current_stream(r.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = r._forward(cache, *buffers, True)
        return graph, buffers, out


def layouts_for(model: CogVideoModel, stage: Pass | str, text_lens: list[int], num_targets: int) -> list[StreamLayout]:
    return [model.config.layout(stage, t, num_targets) for t in text_lens]
