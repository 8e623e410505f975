"""Tensor parallelism over ``torch.distributed``: which slices each rank holds and loads
(:mod:`.sharding`), and the ranks themselves -- spawned or under ``torchrun`` -- with their collectives and
the driver's command channel (:mod:`.group`, imported where used: it starts processes)."""

from .sharding import TENSOR_PARALLEL_SIZES, ShardSpec, check_tensor_parallel, load_model_shard, shard_of

__all__ = ["TENSOR_PARALLEL_SIZES", "ShardSpec", "check_tensor_parallel", "load_model_shard", "shard_of"]
