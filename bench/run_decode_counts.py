"""What a decode pass loads: K rows loaded against (query, key) pairs visible, and programs per step, counted by the
window kernels themselves over the decode schedule of whole passes.

    python bench/run_decode_counts.py [--passes stage1-first-frame,stage1,stage2] [--samples 16]
        [--paths decode,prefill] [--heads 48] [--sms 132] [--text-lens 20,9] [--out F]

For each pass, a batch of sequences (one per ``--text-lens`` entry, the released geometry and text capacity) walks
its wavefront schedule (``generation.scheduler``, the released layer count); at ``--samples`` evenly spaced steps
each window rule of the pass (channel x layer parity) is launched with the step's queries on each ``--paths`` path
(``decode``: the split-KV kernel, ``prefill``: the tiled kernel, which every decode launch took before the decode
path existed) with ``counts=``. A row per (pass, channel, parity, path): rows loaded, lanes walked and visible pairs
summed over the sampled steps, their ratio (the byte floor is 1: each visible row read once per query), and
programs per step at ``--heads`` heads (the kernels launch one program per head, so the count at one head times the
heads) against twice ``--sms`` (H200: 132 SMs). Counts depend on the rule and the schedule only, not on the values:
on CPU the kernels run under Triton's interpreter at one head and d = 16. Sampling estimates the whole pass's
ratio; ``--samples 0`` counts every step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cogvideo_engine.generation.scheduler import wavefront_schedule
from cogvideo_engine.kernels import triton_attention
from cogvideo_engine.kernels.layout import SPATIAL, TEMPORAL, AttentionRule
from cogvideo_engine.kernels.reference import rule_additive
from cogvideo_engine.kernels.rules import FrameGeometry, Pass, StreamLayout
from cogvideo_engine.models.config import stage1_config

from run_attention import JsonRows, environment

FIELDS = ("rows_loaded", "lanes_walked", "programs", "programs_with_work")
"""The kernels' ``counts`` entries, in order."""


def sampled_steps(num_steps: int, samples: int) -> list[int]:
    """``samples`` step indices spread evenly over ``range(num_steps)``, first and last included (all if 0)."""
    if samples <= 0 or samples >= num_steps:
        return list(range(num_steps))
    return sorted({round(i * (num_steps - 1) / (samples - 1)) for i in range(samples)})


def step_queries(schedules: list[list[list[int]]], step: int) -> torch.Tensor:
    """``[B, Q]`` stream indices fed at ``step`` by each sequence, padded with -1."""
    rows = [s[step] if step < len(s) else [] for s in schedules]
    q_index = torch.full((len(rows), max(map(len, rows))), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        q_index[b, :len(row)] = torch.tensor(row, dtype=torch.long)
    return q_index


def visible_pairs(rule: AttentionRule, q_index: torch.Tensor, text_lens: list[int]) -> int:
    return sum(int(torch.isfinite(rule_additive(rule, q_index[b], t, 0.0, rule.cache_len)).sum())
               for b, t in enumerate(text_lens))


def count_pass(pass_: Pass, text_lens: list[int], samples: int, paths: list[str], device: str):
    """Yield (rule, path, totals dict, programs per step at one head, steps) for every window rule of ``pass_``."""
    geo, layers = FrameGeometry(), stage1_config().num_layers
    capacity = geo.frame_position_base if pass_ is Pass.FIRST_FRAME else geo.max_text_len
    schedules = [wavefront_schedule(StreamLayout(pass_, t, pass_.max_targets, geo), layers) for t in text_lens]
    num_steps = max(map(len, schedules))
    steps = sampled_steps(num_steps, samples)
    channels = [SPATIAL, TEMPORAL] if pass_.mixes_temporal else [SPATIAL]
    batch, d = len(text_lens), 16
    text_len = torch.tensor(text_lens, device=device)
    text_bias = torch.zeros(batch, device=device)
    for channel in channels:
        for parity in (0, 1):
            rule = AttentionRule(pass_, channel, parity, geo, capacity)
            k = torch.randn(batch, 1, rule.cache_len, d, device=device)
            for path in paths:
                totals = dict.fromkeys((*FIELDS, "pairs_visible", "queries"), 0)
                per_step = []
                for step in steps:
                    q_index = step_queries(schedules, step)
                    counts = torch.zeros(4, dtype=torch.int64, device=device)
                    q = torch.randn(batch, 1, q_index.shape[1], d, device=device)
                    triton_attention.window_attention_triton(q, k, k, q_index.to(device), text_len, text_bias, rule,
                                                             path=path, counts=counts)
                    for name, value in zip(FIELDS, counts.tolist(), strict=True):
                        totals[name] += value
                    per_step.append(counts[2].item())
                    totals["pairs_visible"] += visible_pairs(rule, q_index, text_lens)
                    totals["queries"] += int((q_index >= 0).sum())
                yield rule, path, totals, per_step, (num_steps, len(steps))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--passes", default="stage1-first-frame,stage1,stage2")
    p.add_argument("--samples", type=int, default=16, help="steps counted per pass (0: every step)")
    p.add_argument("--paths", default="decode,prefill")
    p.add_argument("--heads", type=int, default=stage1_config().num_attention_heads)
    p.add_argument("--sms", type=int, default=132, help="the GPU's SM count the programs are compared with")
    p.add_argument("--text-lens", default="20,9", help="one sequence per text length")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if triton_attention.triton is None:
        raise SystemExit("run_decode_counts.py needs triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    text_lens = [int(t) for t in args.text_lens.split(",")]
    env = environment(device)
    out = args.out or Path(__file__).parent / "results" / f"decode-counts-{device}-{env['date'][:10]}.json"
    rows, start = JsonRows(out), time.perf_counter()
    print(f"{'pass':<20}{'channel':<10}{'par':>4} {'path':<8}{'loaded/visible':>15}{'lanes/visible':>14}"
          f"{'programs/step':>15}{'min':>7}   ({args.heads} heads, batch {len(text_lens)}, 2 x SMs = {2 * args.sms})")
    for name in args.passes.split(","):
        for rule, path, totals, per_step, (num_steps, counted) in count_pass(
                Pass.parse(name), text_lens, args.samples, args.paths.split(","), device):
            programs = [n * args.heads for n in per_step]
            row = {"bench": "decode-counts", "pass": rule.pass_.value, "channel": rule.channel,
                   "parity": rule.layer_parity, "path": path, "batch": len(text_lens), "text_lens": text_lens,
                   "heads": args.heads, "counts_at": "one head (rows, lanes, pairs); programs at --heads",
                   "steps": num_steps, "steps_counted": counted, **totals,
                   "loaded_per_visible": round(totals["rows_loaded"] / max(totals["pairs_visible"], 1), 3),
                   "lanes_per_visible": round(totals["lanes_walked"] / max(totals["pairs_visible"], 1), 3),
                   "programs_per_step_mean": round(sum(programs) / len(programs), 1),
                   "programs_per_step_min": min(programs), "sm_count": args.sms, **env}
            row["programs"] *= args.heads
            row["programs_with_work"] *= args.heads
            rows.append(row)
            print(f"{row['pass']:<20}{row['channel']:<10}{row['parity']:>4} {path:<8}"
                  f"{row['loaded_per_visible']:>15.3f}{row['lanes_per_visible']:>14.3f}"
                  f"{row['programs_per_step_mean']:>15.0f}{row['programs_per_step_min']:>7}"
                  f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    rows.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
