"""Tensor-parallel engines end to end on the CPU: the CLI's ``--tensor-parallel`` (spawned ranks) and
``torchrun`` (its processes join one engine) give the videos of one rank. In a module of their own: the
spawned groups of test_tensor_parallel.py must be closed first (one process group per process)."""

import os
import subprocess
import sys

import pytest
import torch

from cogvideo_engine.generation.passes import generate_pass
from cogvideo_engine.generation.settings import FIRST_FRAME_SAMPLING
from cogvideo_engine.io.checkpoints import load_model
from cogvideo_engine.io.default_assets import default_assets_root

pytestmark = pytest.mark.slow


def test_cli_generate_with_two_ranks_gives_the_one_rank_video(engine_home, tmp_path):
    """The contract's command on the CPU (gloo, spawned ranks): the same tokens as ``Engine.default()``."""
    from cogvideo_engine import Engine, SamplingParams
    from cogvideo_engine.cli import main
    from cogvideo_engine.io.export import read_tokens

    out = tmp_path / "video.gif"
    assert main(["generate", "a cat plays the piano", "--tensor-parallel", "2", "--only-first-stage", "--quiet",
                 "--seed", "5", "-o", str(out)]) == 0
    tp = read_tokens(out.with_suffix(".tokens.pt"))
    [one] = Engine.default().generate("a cat plays the piano", SamplingParams(seed=5, only_first_stage=True))
    assert torch.equal(tp[0], one.tokens[0]), "the first frame differs from TP=1"
    agreement = float((tp == one.tokens).float().mean())
    print(f"TP=2 engine: stage-1 tokens identical to TP=1 at {agreement:.4f} of the positions")


TORCHRUN_SCRIPT = """
import sys, torch
import cogvideo_engine as ce
from cogvideo_engine.generation.passes import generate_pass
from cogvideo_engine.generation.settings import FIRST_FRAME_SAMPLING

engine = ce.Engine.default(tensor_parallel=2)  # rank 1 serves rank 0 in here, then exits
text = torch.tensor([[20001, 20002, 20003, 20004, 20005]])
out = generate_pass(engine.stage1_model, "stage1-first-frame", text, None, 1, engine.sampler, FIRST_FRAME_SAMPLING,
                    [(3, 0, 0, 0, 0)], backend=None)
torch.save(out.tokens, sys.argv[1])
engine.close()
"""


def test_torchrun_ranks_join_one_engine(tmp_path):
    default_assets_root()  # built here, before both ranks look for it
    script = tmp_path / "tp_script.py"
    script.write_text(TORCHRUN_SCRIPT)
    out = tmp_path / "tokens.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(out)],
                          check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from cogvideo_engine.generation.sampler import ClusterSampler

    root = default_assets_root()
    one = generate_pass(load_model(root / "cogvideo-stage1", stage=1), "stage1-first-frame",
                        torch.tensor([[20001, 20002, 20003, 20004, 20005]]), None, 1,
                        ClusterSampler.from_file(root / "cluster_label2.npy"), FIRST_FRAME_SAMPLING,
                        [(3, 0, 0, 0, 0)], backend=None)
    assert torch.equal(torch.load(out), one.tokens)
