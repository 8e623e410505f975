"""Plot the serving benchmark's rows: per model, throughput (videos/hour) and p50/p90 end-to-end latency against
the number of requests N, one line per mode (serial / together / poisson). Needs matplotlib
(``pip install matplotlib``).

    python bench/plot_serving.py bench/results/serving-medium-cpu-<date>.json [more.json ...] [--out F.png]

Without ``--out`` the PNG goes next to the (first) JSON file, with the same name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MODES = {"serial": ("tab:gray", "o"), "together": ("tab:blue", "s"), "poisson": ("tab:orange", "^")}


def style_count_axes(axes: list[tuple], counts: list[int], xlabel: str, *, headroom: float = 1.08,
                     legend_size: int = 8) -> None:
    """``(axis, y label)`` pairs plotted against a count (requests, clients): log2 x with the counts as ticks, y from
    0 with ``headroom``, grid, legend."""
    for ax, ylabel in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(c) for c in counts])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, ax.get_ylim()[1] * headroom)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=legend_size)


def plot(paths: Path | list[Path], out: Path | None = None) -> Path:
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    rows = [r for p in paths for r in json.loads(p.read_text()) if r.get("bench") == "serving"]
    if not rows:
        raise ValueError(f"no serving rows in {', '.join(map(str, paths))}")
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(len(models), 2, figsize=(11, 4 * len(models)), squeeze=False)
    for (ax_tp, ax_lat), model in zip(axes, models, strict=True):
        mine = [r for r in rows if r["model"] == model]
        stage = "stage 1 only" if all(r["only_first_stage"] for r in mine) else "full video"
        for mode, (color, marker) in MODES.items():
            pts = sorted((r["n"], r) for r in mine if r["mode"] == mode)
            if not pts:
                continue
            ns = [n for n, _ in pts]
            ax_tp.plot(ns, [r["videos_per_hour"] for _, r in pts], color=color, marker=marker, label=mode)
            ax_lat.plot(ns, [r["p50_e2e_s"] for _, r in pts], color=color, marker=marker, label=f"{mode} p50")
            ax_lat.plot(ns, [r["p90_e2e_s"] for _, r in pts], color=color, marker=marker, linestyle="--",
                        alpha=0.7, label=f"{mode} p90")
            for n, r in pts:
                if not r.get("tokens_match", True):
                    ax_tp.annotate("tokens differ!", (n, r["videos_per_hour"]), color="red", fontsize=8)
        style_count_axes([(ax_tp, "videos / hour"), (ax_lat, "end-to-end latency (s)")],
                         sorted({r["n"] for r in mine}), "requests N")
        env = mine[0]
        ax_tp.set_title(f"{model} ({stage}): throughput")
        ax_lat.set_title(f"{model} ({stage}): latency, {env.get('torch_threads')} threads, {env.get('commit')}")
    fig.tight_layout()
    out = Path(out) if out is not None else paths[0].with_suffix(".png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", type=Path)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    print(plot(args.json, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
