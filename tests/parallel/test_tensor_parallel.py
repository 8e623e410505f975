"""Tensor parallel on the CPU (gloo, spawned ranks): TP = 2 and 4 against TP = 1 on the tiny default model.

The ranks sum partial products in another order than one process does, so their logits may differ from TP = 1
within what fp32 promises (bounded against a float64 run, tests/helpers/numerics.py); tokens are compared where
every earlier token agrees (a token drawn differently feeds different inputs to every later step), and the
agreement is reported.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.numerics import MODEL_FACTOR, assert_fp_close

from cogvideo_engine.generation.passes import PassResult, generate_pass
from cogvideo_engine.generation.runner import ModelRunner
from cogvideo_engine.generation.sampler import ClusterSampler
from cogvideo_engine.generation.settings import VIDEO_SAMPLING
from cogvideo_engine.io.checkpoints import convert, load_model
from cogvideo_engine.io.default_assets import default_assets_root
from cogvideo_engine.kernels.rules import Pass
from cogvideo_engine.parallel import ShardSpec, load_model_shard
from cogvideo_engine.parallel.group import launch, source_paths
from cogvideo_engine.parallel.sharding import is_layer_tensor, shard_index

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root() -> Path:
    return default_assets_root()


@pytest.fixture(scope="module")
def whole(root):
    """The whole stage models in fp32 and float64 (the exact side of the bound)."""
    return {(stage, dtype): load_model(root / f"cogvideo-stage{stage}", dtype, stage=stage)
            for stage in (1, 2) for dtype in (torch.float32, torch.float64)}


@pytest.fixture(scope="module", params=[2, 4], ids=["tp2", "tp4"])
def ranks(request, root):
    group, models = launch(request.param, "cpu", source_paths(root / "cogvideo-stage1", root / "cogvideo-stage2"),
                           torch.float32)
    yield group, models
    group.close()


def _inputs(stage: Pass, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = 20000 + torch.randint(0, 1000, (1, 9), generator=g)
    given = torch.randint(0, 20000, (1, stage.num_given, 400), generator=g) if stage.num_given else None
    guider = 20000 + torch.randint(0, 1000, (1, 4), generator=g) if stage is Pass.STAGE1 else None
    return text, given, guider


def _run(model, stage: Pass, num_targets: int, runner: ModelRunner | None = None) -> PassResult:
    text, given, guider = _inputs(stage)
    sampler = ClusterSampler.from_file(default_assets_root() / "cluster_label2.npy")
    return generate_pass(model, stage, text, given, num_targets, sampler, VIDEO_SAMPLING, [(7, 0, 1, 0, 0)],
                         guider_text_ids=guider, backend=None, runner=runner, record_logits=True)


def _steps_of(result: PassResult, model, stage: Pass, num_targets: int) -> torch.Tensor:
    """The decode step each target position (in target order) is drawn in."""
    layout = model.config.layout(stage, _inputs(stage)[0].shape[1], num_targets)
    frame_len = layout.geometry.frame_len
    steps = torch.empty(num_targets * frame_len, dtype=torch.long)
    for step, positions in enumerate(result.schedule):
        for q in positions:
            steps[(int(layout.slot(q)) - layout.num_given) * frame_len + int(layout.block_pos(q))] = step
    return steps


def _same_inputs(steps: torch.Tensor, *results: PassResult) -> torch.Tensor:
    """Positions whose logits every run computed from the same inputs: drawn at or before the first step where
    any two runs drew a token differently."""
    first = len(results[0].schedule)
    for other in results[1:]:
        differ = (results[0].tokens != other.tokens).reshape(-1)
        if differ.any():
            first = min(first, int(steps[differ].min()))
    return steps <= first


@pytest.mark.parametrize("stage, num_targets", [(Pass.STAGE1, 1), (Pass.STAGE2, 1)], ids=["stage1-guided", "stage2"])
def test_logits_and_tokens_match_one_rank(ranks, whole, stage, num_targets, record_property):
    group, models = ranks
    number = 1 if stage is Pass.STAGE1 else 2
    shard = models[f"stage{number}"]
    one = _run(whole[number, torch.float32], stage, num_targets)
    exact = _run(whole[number, torch.float64], stage, num_targets, ModelRunner(whole[number, torch.float64],
                                                                              "reference"))
    runner = ModelRunner(shard, None)
    tp = _run(shard, stage, num_targets, runner)
    steps = _steps_of(one, shard, stage, num_targets)
    same = _same_inputs(steps, one, tp, exact)
    assert same.float().mean() > 0.5, "the runs' tokens part early: the bound below would compare little"
    assert_fp_close(tp.logits[:, same], exact.logits[:, same].double(), one.logits[:, same], factor=MODEL_FACTOR,
                    what=f"TP={group.world} {stage.value} logits")
    agreement = float((tp.tokens == one.tokens).float().mean())
    record_property(f"tp{group.world}_{stage.value}_token_agreement", agreement)
    print(f"TP={group.world} {stage.value}: tokens identical to TP=1 at {agreement:.4f} of the positions")
    # every rank gathered the same logits bit for bit, so the same keyed draw gives each the same token
    answers = group.call("last_logits", runner.tp_id)
    assert answers[0] is not None and all(a == answers[0] for a in answers)


def test_sharded_loading_reads_only_the_ranks_slices(ranks, whole):
    group, _ = ranks
    world = group.world
    model = whole[1, torch.float32]
    sharded = sum(p.numel() for n, p in model.named_parameters()
                  if is_layer_tensor(n) and shard_index(n, tuple(p.shape), ShardSpec(0, world)) is not None)
    kept = sum(p.numel() for n, p in model.named_parameters()
               if is_layer_tensor(n) and shard_index(n, tuple(p.shape), ShardSpec(0, world)) is None)
    assert sharded > 10 * kept  # the weights a decode step streams are nearly all split
    for rank, per_model in enumerate(group.call("layer_bytes")):  # fp32 in memory
        assert per_model["stage1"] == 4 * (sharded // world + kept), f"rank {rank}"
    for per_model in group.call("shard_load"):
        for name in ("stage1", "stage2"):
            read, total = per_model[name]
            assert read["layers"] * world == total["layers"]  # 1/world of the split layer tensors' bytes
            assert read["layers_whole"] == total["layers_whole"] and read["other"] == total["other"]


def test_shards_from_sat_and_safetensors_hold_the_same_slices(root, tmp_path, whole):
    converted = convert(root / "cogvideo-stage2", tmp_path / "stage2")
    full = dict(whole[2, torch.float32].named_parameters())
    spec = ShardSpec(1, 4)
    for path in (root / "cogvideo-stage2", converted):
        shard = load_model_shard(path, spec, stage=2)
        for name, p in shard.named_parameters():
            pieces = shard_index(name, tuple(full[name].shape), spec)
            want = full[name] if pieces is None else torch.cat([full[name].narrow(d, s.start, s.stop - s.start)
                                                                for d, s in pieces], dim=pieces[0][0])
            assert torch.equal(p, want), name
        assert shard.shard_load.read_bytes["layers"] * 4 == shard.shard_load.checkpoint_bytes["layers"]


def test_tensor_parallel_refusals(root, whole):
    from cogvideo_engine import Engine

    with pytest.raises(ValueError, match="does not divide the model's 4 attention heads"):
        Engine.default(tensor_parallel=3)
    with pytest.raises(ValueError, match="offload"):
        Engine.default(tensor_parallel=2, offload=True)
    with pytest.raises(ValueError, match=r"cuda:0\.\.N-1"):
        Engine.default(tensor_parallel=2, device="cuda:1")
    with pytest.raises(TypeError, match="tensor_parallel"):
        Engine.default(tensor_parallel=2.0)
    shard = load_model_shard(root / "cogvideo-stage1", ShardSpec(0, 2), stage=1)
    with pytest.raises(ValueError, match="inside its group"):
        ModelRunner(shard)
    with pytest.raises(ValueError, match="whole model"):
        shard.new_cache(shard.config.layout(Pass.STAGE1, 5, 1), 1)
