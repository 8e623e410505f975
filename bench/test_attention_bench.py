"""pytest-benchmark form of the window-attention benchmark (not part of the test suite).

    pytest bench/test_attention_bench.py --benchmark-json=bench/results/attention-bench.json
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_cases import CASES, IMPLS, applicable, ideal_bytes, make_inputs, useful_flops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_window_attention(benchmark, case, impl):
    why = applicable(impl, case, DEVICE)
    if why:
        pytest.skip(why)
    x = make_inputs(case, DEVICE, DTYPE)
    fn = IMPLS[impl](case, x)
    if DEVICE == "cuda":
        def timed():
            fn()
            torch.cuda.synchronize()
    else:
        timed = fn
    benchmark.extra_info.update(useful_flop=useful_flops(case, x), ideal_bytes=ideal_bytes(case, x),
                                dtype=str(DTYPE), device=DEVICE)
    benchmark.pedantic(timed, rounds=20 if DEVICE == "cuda" else 3, warmup_rounds=2)
