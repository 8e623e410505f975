"""The ranks of a tensor-parallel engine on ``torch.distributed``: launched from the user's process, or joined
under ``torchrun``.

Rank 0, the *driver*, is the process that holds the :class:`~cogvideo_engine.api.Engine`: its serving loop
schedules, samples and owns every request, as in vLLM, where the driver broadcasts each step's scheduler output
to its workers. Every device call of the driver's :class:`~cogvideo_engine.generation.runner.ModelRunner` s --
a runner made, a cache made, a prefill, a decode step (with the step's input tokens) -- is first broadcast as a
small command over a gloo group (:meth:`TensorParallelGroup.send`); ranks 1..N-1 run :func:`serve`, which repeats
the same calls on their own shard runners. The forwards then meet in the collectives: one all-reduce after each
layer's attention (both channels' partial outputs, mixed before the reduce), one after its MLP, one all-gather of
the logits' vocabulary slices. The collectives run on the default process group -- NCCL on CUDA, gloo on the
CPU --, the same code either way.

Since the step's tokens travel with its command, no rank but the driver samples; every rank nevertheless holds
the same gathered logits (an all-gather), so keyed sampling would draw the same tokens on each (a test checks).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
import threading
import traceback
import weakref
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .sharding import ShardSpec, is_layer_tensor, load_model_shard

STARTUP_TIMEOUT_S = 300.0
"""How long the ranks wait for one another to start (process start, import, shard loading)."""
COLLECTIVE_TIMEOUT_S = 1800.0
"""How long a forward's collective waits for the other ranks."""
IDLE_TIMEOUT = timedelta(days=365)
"""The command group's timeout: a worker waits for the driver's next command as long as the engine lives."""


@dataclass(frozen=True)
class ModelSource:
    """A stage model every rank loads its shard of: ``name`` (how commands refer to it), its checkpoint ``path``
    (SAT or converted directory) and ``stage``."""

    name: str
    path: str
    stage: int


class TensorParallelGroup:
    """This process's place among the ranks (see the module docstring): ``spec`` (rank, world), ``device``, the
    collectives of the forward, and on the driver the command channel to the workers."""

    def __init__(self, spec: ShardSpec, device: torch.device, control, *, processes=(), owns_process_group=True):
        self.spec, self.device, self.control = spec, device, control
        self.processes = list(processes)
        self.owns_process_group = owns_process_group
        self._ids = itertools.count()
        self._dropped: list[int] = []
        self._names: dict[int, str] = {}
        self._runners: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # the driver's mirrored runners
        self._sending = threading.RLock()  # one command (with a query's answers) at a time, from any thread
        self.closed = False

    @property
    def world(self) -> int:
        return self.spec.world

    @property
    def is_driver(self) -> bool:
        return self.spec.rank == 0

    # -- the forward's collectives ----------------------------------------------------------------------------

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks, in place (every rank gets the same bits); returns it."""
        dist.all_reduce(t)
        return t

    def gather_last(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's ``t [..., n]`` concatenated in rank order along the last dimension: ``[..., world * n]``."""
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, dim=-1)

    # -- commands (driver) ------------------------------------------------------------------------------------

    def name_model(self, model, name: str) -> None:
        self._names[id(model)] = name

    def send(self, op: str, *args) -> None:
        """Broadcast one command to the workers (driver only); caches and runners dropped since the last command
        are freed on the workers first."""
        with self._sending:
            if self.closed:
                raise RuntimeError("the tensor-parallel ranks were shut down (Engine.close)")
            dropped, self._dropped = self._dropped, []
            dist.broadcast_object_list([(op, args, dropped)], src=0, group=self.control)

    def _track(self, obj) -> int:
        """An id for a driver object the workers mirror; when ``obj`` is collected, the mirror is freed."""
        ident = next(self._ids)
        weakref.finalize(obj, self._dropped.append, ident)
        return ident

    def mirror_runner(self, runner) -> int:
        name = self._names.get(id(runner.model))
        if name is None:
            raise ValueError("this model is not one the tensor-parallel ranks loaded")
        if callable(runner.backend):
            raise ValueError("a tensor-parallel runner needs an attention backend by name, not a function")
        ident = self._track(runner)
        self._runners[ident] = runner
        self.send("runner", ident, name, runner.backend, runner.cuda_graphs, runner.batch_invariant)
        return ident

    def mirror_cache(self, runner, cache, layout, text_capacity: int, capacity: int) -> int:
        ident = self._track(cache)
        self.send("cache", runner.tp_id, ident, layout, text_capacity, capacity)
        return ident

    def call(self, op: str, *args) -> list:
        """Every rank's answer to a query, in rank order (driver only): ``"shard_load"`` (per model: the bytes its
        shard loading read and the checkpoint's, by kind, :class:`~.sharding.ShardLoad`), ``"layer_bytes"`` (per
        model: the layer weight bytes the rank holds), ``"last_logits", runner.tp_id`` (the raw bytes of that
        runner's last gathered logits)."""
        with self._sending:
            self.send("query", op, args)
            answers = [None] * self.world
            dist.gather_object(_answer(op, args, self._runners), answers, dst=0, group=self.control)
        return answers

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the workers and leave the process group (idempotent). Not while a forward runs: the workers
        stop at the command, the forward's collectives would wait for them."""
        if self.closed:
            return
        try:
            if self.is_driver and self.world > 1 and all(p.is_alive() for p in self.processes):
                self.send("stop")  # (a dead worker cannot take it: its peers' next collective fails instead)
                dist.barrier(group=self.control)  # nothing in flight when the groups go
        finally:
            self.closed = True
            if self.owns_process_group and dist.is_initialized():
                dist.destroy_process_group()
            for p in self.processes:
                p.join(timeout_s)
                if p.is_alive():
                    p.terminate()
                    p.join(5)


# -- queries every rank answers (tests, reports) ------------------------------------------------------------

_MODELS: dict[str, object] = {}  # this process's shard models by name (a worker's; the driver's are its engine's)


def _answer(op: str, args: tuple, runners) -> object:
    """This rank's answer to query ``op`` (``runners``: this rank's runners by mirror id)."""
    if op == "shard_load":  # what loading each model's shard read
        return {name: (dict(m.shard_load.read_bytes), dict(m.shard_load.checkpoint_bytes))
                for name, m in _MODELS.items()}
    if op == "layer_bytes":  # the layer weights each rank holds
        return {name: sum(p.numel() * p.element_size() for n, p in m.named_parameters() if is_layer_tensor(n))
                for name, m in _MODELS.items()}
    if op == "last_logits":  # the gathered logits of a runner's last forward, as bytes (every rank holds the same)
        (runner_id,) = args
        t = runners[runner_id].last_logits
        return None if t is None else t.detach().cpu().numpy().tobytes()
    raise ValueError(f"unknown query {op!r}")


# -- starting the ranks -------------------------------------------------------------------------------------

def _device_of(kind: str, rank: int) -> torch.device:
    if kind == "cuda":
        if torch.cuda.device_count() <= rank:
            raise RuntimeError(f"rank {rank} needs cuda:{rank}, but {torch.cuda.device_count()} GPUs are visible")
        torch.cuda.set_device(rank)
        return torch.device("cuda", rank)
    return torch.device("cpu")


def _collective_backend(kind: str) -> str:
    return "nccl" if kind == "cuda" else "gloo"


def _load(sources: list[ModelSource], spec: ShardSpec, dtype: torch.dtype, device: torch.device) -> dict:
    return {s.name: load_model_shard(s.path, spec, dtype, device, stage=s.stage) for s in sources}


def _ready(control, error: str | None, world: int) -> None:
    """Every rank reports whether it loaded; the driver raises naming the ranks that did not."""
    answers = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(error, answers, dst=0, group=control)
    if answers is not None:
        failed = [(r, e) for r, e in enumerate(answers) if e is not None]
        if failed:
            raise RuntimeError("tensor-parallel ranks failed to start:\n" +
                               "\n".join(f"rank {r}: {e}" for r, e in failed))


def launch(world: int, device_kind: str, sources: list[ModelSource], dtype: torch.dtype,
           ) -> tuple[TensorParallelGroup, dict]:
    """Start ranks 1..world-1 as spawned processes (never forked: the parent may hold threads and a CUDA
    context), join them as rank 0, load this rank's shards. Returns the group and the driver's shard models by
    source name. Scripts that call this at import level need the ``if __name__ == "__main__":`` guard: a spawned
    process imports the parent's main module."""
    if dist.is_initialized():
        raise RuntimeError("torch.distributed is already initialised in this process: run every rank under "
                           "torchrun (each calls Engine.from_pretrained(..., tensor_parallel=N)) instead of "
                           "spawning a second group")
    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, timeout=timedelta(seconds=STARTUP_TIMEOUT_S),
                          wait_for_workers=False)
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, torch.get_num_threads() // world)
    processes = [ctx.Process(target=_worker_main, name=f"cogvideo-tp-rank{rank}", daemon=True,
                             args=(rank, world, store.port, device_kind, sources, dtype, threads))
                 for rank in range(1, world)]
    for p in processes:
        p.start()
    try:
        dist.init_process_group(_collective_backend(device_kind), store=store, rank=0, world_size=world,
                                timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
        group, models, _ = _meet(ShardSpec(0, world), device_kind, 0, sources, dtype, processes=processes)
    except BaseException:
        if dist.is_initialized():
            dist.destroy_process_group()
        for p in processes:
            p.terminate()
        raise
    return group, models


def join_torchrun(world: int, device_kind: str, sources: list[ModelSource], dtype: torch.dtype,
                  ) -> tuple[TensorParallelGroup, dict]:
    """Under ``torchrun`` (``RANK``, ``WORLD_SIZE`` set): join the job's process group and load this rank's
    shards. On rank 0 returns like :func:`launch`; on the others serves the driver's commands until it closes,
    then exits the process (the user's script goes no further there)."""
    env_world = int(os.environ["WORLD_SIZE"])
    if env_world != world:
        raise ValueError(f"tensor_parallel={world} but torchrun started {env_world} processes")
    rank = int(os.environ["RANK"])
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(_collective_backend(device_kind), timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    group, models, error = _meet(ShardSpec(rank, world), device_kind, int(os.environ.get("LOCAL_RANK", rank)),
                                 sources, dtype, owns_process_group=owns)
    if error is not None:
        raise RuntimeError(error)
    if rank != 0:
        serve(group, models)
        group.close()
        sys.exit(0)
    return group, models


def _meet(spec: ShardSpec, device_kind: str, device_index: int, sources: list[ModelSource], dtype: torch.dtype,
          **group_options) -> tuple[TensorParallelGroup | None, dict, str | None]:
    """Once the process group is up, on every rank: the command group, this rank's device and shards bound to
    the group, then every rank reports whether it loaded (:func:`_ready`: the driver raises naming the ranks that
    did not). Returns ``(group, models, this rank's error or None)``."""
    control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
    group, models, error = None, {}, None
    try:
        device = _device_of(device_kind, device_index)
        group = TensorParallelGroup(spec, device, control, **group_options)
        models = _load(sources, spec, dtype, device)
    except Exception as e:  # noqa: BLE001  (reported to the driver, which raises it with the others')
        error = f"{type(e).__name__}: {e}"
    _ready(control, error, spec.world)
    if error is None:
        _MODELS.clear()
        _MODELS.update(models)
        for name, model in models.items():
            model.tensor_parallel = group
            group.name_model(model, name)
    return group, models, error


def _worker_main(rank: int, world: int, port: int, device_kind: str, sources: list[ModelSource],
                 dtype: torch.dtype, threads: int) -> None:
    torch.set_num_threads(threads)
    store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timedelta(seconds=STARTUP_TIMEOUT_S))
    dist.init_process_group(_collective_backend(device_kind), store=store, rank=rank, world_size=world,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    group, models, error = _meet(ShardSpec(rank, world), device_kind, rank, sources, dtype)
    if error is not None:  # the driver raises it
        dist.destroy_process_group()
        return
    try:
        serve(group, models)
    except Exception:  # noqa: BLE001  (a failed command: say so, and leave; the driver's next collective fails)
        traceback.print_exc()
        sys.stderr.write(f"cogvideo tensor-parallel rank {rank}: stopping after the error above\n")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def serve(group: TensorParallelGroup, models: dict) -> None:
    """A worker's loop: repeat the driver's runner calls on this rank's shards until it says stop."""
    from ..generation.runner import ModelRunner

    runners: dict[int, ModelRunner] = {}
    caches: dict[int, object] = {}
    while True:
        box = [None]
        dist.broadcast_object_list(box, src=0, group=group.control)
        op, args, dropped = box[0]
        for ident in dropped:
            runners.pop(ident, None)
            caches.pop(ident, None)
        if op == "stop":
            dist.barrier(group=group.control)  # the driver's close waits here too
            return
        if op == "runner":
            ident, name, backend, cuda_graphs, batch_invariant = args
            runners[ident] = ModelRunner(models[name], backend, cuda_graphs=cuda_graphs,
                                         batch_invariant=batch_invariant)
        elif op == "cache":
            runner_id, ident, layout, text_capacity, capacity = args
            caches[ident] = runners[runner_id].allocate_cache(layout, text_capacity, capacity)
        elif op == "prefill":
            runner_id, cache_id, layouts, text_ids, given_ids, text_bias, logits = args
            cache = caches[cache_id].bind(layouts)
            runners[runner_id].prefill(cache, text_ids, given_ids, text_bias, logits=logits)
        elif op == "step":
            runner_id, cache_id, positions, input_ids, text_bias, graphed = args
            runner, cache = runners[runner_id], caches[cache_id]
            if graphed:
                runner.stepper(cache)(positions, input_ids, text_bias)
            else:
                runner.step(cache, positions, input_ids, text_bias)
        elif op == "query":
            name, qargs = args
            dist.gather_object(_answer(name, qargs, runners), None, dst=0, group=group.control)
        else:
            raise RuntimeError(f"unknown tensor-parallel command {op!r}")


def source_paths(stage1: Path, stage2: Path | None) -> list[ModelSource]:
    out = [ModelSource("stage1", str(stage1), 1)]
    if stage2 is not None:
        out.append(ModelSource("stage2", str(stage2), 2))
    return out
