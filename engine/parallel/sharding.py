"""Which slice of each CogVideo stage-model tensor a tensor-parallel rank holds, and loading only those slices.

Megatron's split, by attention head and MLP column (``N`` ranks, rank ``r``, ``h`` hidden, ``H`` heads, ``f`` the
MLP width):

* QKV projections of both channels (``attention.query_key_value`` and ``attention_plus.query_key_value``,
  ``[3h, h]`` rows ``q | k | v``): rank ``r`` holds heads ``r H/N .. (r+1) H/N - 1`` of each of q, k and v
  (three row ranges of ``h/N``), biases alike;
* the output projections (``attention.dense``, ``attention_plus.dense``, ``[h, h]``) and ``mlp.dense_4h_to_h``
  (``[h, f]``): the columns of the rank's heads (of its MLP rows), so each rank's product is a partial sum; their
  biases are whole on every rank and added once, after the all-reduce;
* ``mlp.dense_h_to_4h`` (``[f, h]``): rows ``r f/N .. (r+1) f/N - 1``, bias alike;
* everything else (layer norms, the mixing logits, the position tables, the word embeddings) whole on every rank.
  The logits head (``word_embeddings[:20000]``) is split over the image tokens by the runner, which keeps its
  own fp32 copy of the rank's rows; the table itself stays whole because any token id may be looked up.

Loading reads the released ``mp_rank_00`` file (memory-mapped by ``torch.load(mmap=True)``) or a converted
safetensors file (``safe_open(...).get_slice``), and copies out only the rank's slices: :class:`ShardLoad`
counts the bytes read per kind of tensor.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..io.checkpoints import CONVERTED_WEIGHTS, read_model_config
from ..io.sat import CheckpointError, checked_meta_module, read_sat_state_dict, sat_checkpoint_file
from ..models.cogvideo import CogVideoModel
from ..models.config import NUM_IMAGE_TOKENS, ModelConfig

TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16)
"""Degrees that divide the released model's 48 heads, its MLP width and the 20,000 image tokens."""

_QKV = re.compile(r"(transformer\.layers\.\d+\.attention\.query_key_value|"
                  r"mixins\.attention_plus\.query_key_value\.\d+)\.(weight|bias)$")
_OUT = re.compile(r"(transformer\.layers\.\d+\.attention\.dense|mixins\.attention_plus\.dense\.\d+|"
                  r"transformer\.layers\.\d+\.mlp\.dense_4h_to_h)\.weight$")
_MLP_UP = re.compile(r"transformer\.layers\.\d+\.mlp\.dense_h_to_4h\.(weight|bias)$")
_LAYER = re.compile(r"(transformer\.layers\.|mixins\.attention_plus\.)")


@dataclass(frozen=True)
class ShardSpec:
    """Rank ``rank`` of ``world`` tensor-parallel ranks."""

    rank: int = 0
    world: int = 1

    def __post_init__(self):
        if not (isinstance(self.world, int) and self.world >= 1 and isinstance(self.rank, int)
                and 0 <= self.rank < self.world):
            raise ValueError(f"rank {self.rank!r} of world {self.world!r}: need 0 <= rank < world, world >= 1")

    def share(self, n: int) -> int:
        """How many of ``n`` (which the world size divides) this rank holds."""
        return n // self.world

    def part(self, n: int) -> slice:
        """This rank's share of ``n``, as a slice."""
        step = self.share(n)
        return slice(self.rank * step, (self.rank + 1) * step)


def check_tensor_parallel(config: ModelConfig, world: int) -> None:
    """Raise ValueError unless ``world`` ranks can split a model of ``config``: the heads, the MLP width and the
    20,000 image tokens each divide evenly."""
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise ValueError(f"tensor_parallel must be a positive int, got {world!r}")
    for what, n in (("attention heads", config.num_attention_heads), ("MLP width", config.ffn_hidden_size),
                    ("image tokens of the logits head", NUM_IMAGE_TOKENS)):
        if n % world:
            raise ValueError(f"tensor_parallel={world} does not divide the model's {n} {what} "
                             f"(the released model takes one of {TENSOR_PARALLEL_SIZES})")


def shard_index(name: str, shape: tuple[int, ...], spec: ShardSpec) -> list[tuple[int, slice]] | None:
    """The pieces of tensor ``name`` (full shape ``shape``) rank ``spec`` holds, as ``(dim, slice)`` in the order
    they are concatenated along ``dim``; None: the whole tensor (see the module docstring)."""
    if spec.world == 1:
        return None
    if _QKV.search(name):
        h = shape[0] // 3
        own = spec.part(h)
        return [(0, slice(i * h + own.start, i * h + own.stop)) for i in range(3)]
    if _OUT.search(name):
        return [(1, spec.part(shape[1]))]
    if _MLP_UP.search(name):
        return [(0, spec.part(shape[0]))]
    return None


def is_layer_tensor(name: str) -> bool:
    """Whether ``name`` belongs to a transformer layer (either channel), the weights every decode step streams."""
    return bool(_LAYER.match(name))


@dataclass
class ShardLoad:
    """What loading one rank's shard read: bytes by kind (``layers`` sharded, ``layers_whole`` the layer tensors
    every rank holds whole -- norms, biases added after the reduce, mixing logits --, ``other`` embeddings and
    position tables), and the full checkpoint's bytes by the same kinds."""

    spec: ShardSpec
    read_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    checkpoint_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def count(self, name: str, pieces: list[tuple[int, slice]] | None, full: int, read: int) -> None:
        kind = "other" if not is_layer_tensor(name) else "layers" if pieces is not None else "layers_whole"
        self.read_bytes[kind] += read
        self.checkpoint_bytes[kind] += full


class _SatSource:
    """The released file: ``torch.load(mmap=True)`` tensors (pages are read when a slice is copied out)."""

    def __init__(self, path: Path):
        self.state = read_sat_state_dict(path)
        self.source = str(sat_checkpoint_file(path))

    def shapes(self) -> dict[str, torch.Size]:
        return {k: v.shape for k, v in self.state.items()}

    def dtype(self, name: str) -> torch.dtype:
        return self.state[name].dtype

    def read(self, name: str, dim: int | None, part: slice | None) -> torch.Tensor:
        t = self.state[name]
        return t if dim is None else t.narrow(dim, part.start, part.stop - part.start)


_SAFETENSORS_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


class _SafetensorsSource:
    """A converted file, through ``safe_open``: a slice reads only its own bytes."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.source = str(path / CONVERTED_WEIGHTS)
        if not (path / CONVERTED_WEIGHTS).is_file():
            raise CheckpointError(f"{self.source} does not exist")
        self.file = safe_open(self.source, framework="pt")

    def shapes(self) -> dict[str, torch.Size]:
        return {k: torch.Size(self.file.get_slice(k).get_shape()) for k in self.file.keys()}  # noqa: SIM118

    def dtype(self, name: str) -> torch.dtype:
        return _SAFETENSORS_DTYPES[self.file.get_slice(name).get_dtype()]

    def read(self, name: str, dim: int | None, part: slice | None) -> torch.Tensor:
        if dim is None:
            return self.file.get_tensor(name)
        piece = self.file.get_slice(name)
        return piece[part] if dim == 0 else piece[:, part]


def _open(path: Path, stage: int | None) -> tuple[ModelConfig, _SatSource | _SafetensorsSource]:
    config, fmt = read_model_config(path, stage=stage)
    return config, (_SafetensorsSource(path) if fmt == "converted" else _SatSource(path))


def _assign(module: nn.Module, name: str, value: torch.Tensor) -> None:
    *path, leaf = name.split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part)
    owner._parameters[leaf] = nn.Parameter(value, requires_grad=False)


def load_model_shard(path: str | os.PathLike, spec: ShardSpec, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu", *, stage: int | None = None) -> CogVideoModel:
    """Rank ``spec``'s shard of the CogVideo stage model at ``path`` (a SAT or converted directory): a
    :class:`CogVideoModel` whose sharded parameters hold only the rank's slices (shapes ``1/world`` of the full
    ones along the split dimension), built without reading the other ranks' slices. ``model.shard`` is the
    :class:`ShardSpec`, ``model.shard_load`` the :class:`ShardLoad` count. The shard runs through the
    :class:`~cogvideo_engine.generation.runner.ModelRunner` only (the reference forward needs the whole model).
    """
    path = Path(path)
    config, source = _open(path, stage)
    check_tensor_parallel(config, spec.world)
    shapes = source.shapes()
    model = checked_meta_module(lambda: CogVideoModel(config),
                                {k: torch.empty(s, device="meta") for k, s in shapes.items()}, source.source)
    load = ShardLoad(spec)
    for name, shape in shapes.items():
        pieces = shard_index(name, tuple(shape), spec)
        if pieces is None:  # whole: as load_model assigns it (a mapped tensor stays mapped when nothing converts)
            parts = [source.read(name, None, None)]
            value = parts[0].to(device=device, dtype=dtype)
        else:
            parts = [source.read(name, d, s) for d, s in pieces]
            value = torch.cat([p.to(device=device, dtype=dtype) for p in parts], dim=pieces[0][0])
        itemsize = source.dtype(name).itemsize
        load.count(name, pieces, shape.numel() * itemsize, sum(p.numel() for p in parts) * itemsize)
        _assign(model, name, value.contiguous())
    model.shard, model.shard_load = spec, load
    return model.eval().requires_grad_(False)


def shard_of(model: nn.Module) -> ShardSpec:
    """The :class:`ShardSpec` of a model (``ShardSpec()`` -- rank 0 of 1 -- for a whole model)."""
    return getattr(model, "shard", None) or ShardSpec()
