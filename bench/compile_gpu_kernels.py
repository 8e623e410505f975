"""Compile the Triton kernels for real GPU targets on a machine without a GPU, and report what the compilers say.

    python bench/compile_gpu_kernels.py [--targets 90,80] [--dtypes bf16,fp16,fp32] [--kernels window,local]
                                        [--modes prefill,decode1,decode2] [--quick] [--quick-dtypes fp32]
                                        [--out JSON]

Each launch the runner and the DSR model make at the released shapes (48 heads x 64, the 20 x 20 frame geometry,
text capacity 74 -- 512 in the first-frame pass --, queries as views of the fused QKV projection, K/V as views of
the static cache) goes through the kernel's own wrapper and Triton's JIT binder, so the specialization (dtypes,
constexprs, 16-byte divisibility of pointers and strides) is the one a GPU run compiles; a stand-in driver reports
the target instead of a device, and ``warmup`` compiles without launching. Per compiled kernel: registers, stack
and static shared memory (``cuobjdump --dump-resource-usage``), spill stores / loads (``ptxas -v`` on the PTX),
the dynamic shared memory Triton asks for against the target's per-block limit, whether the PTX uses wgmma
(Hopper's tensor-core instructions), and how many asynchronous copies it issues (``cp.async``: loads the software
pipeline issues ahead of their use).

Prefill launches compile the tiled kernel; decode launches (1 or 2 queries per sequence) the split-KV kernel and its
combine kernel, one row each.

``--quick``: the stage-2 temporal channel (odd layers) in prefill and in a 2-query decode step, and the DSR layer,
bf16 unless ``--dtypes`` says otherwise; ``--quick-dtypes``: that quick set for these dtypes, beside the full set
for ``--dtypes``. The CI test (tests/kernels/test_gpu_compile.py) runs every launch in bf16 and fp16 and the quick
set in fp32, one process per target.
Rows go to ``--out`` (JSON) and a table to stdout. Needs Triton's NVIDIA backend (the triton wheel ships ptxas and
cuobjdump); must run without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cogvideo_engine.kernels.launch import SHARED_MEMORY_PER_BLOCK
from cogvideo_engine.models.config import stage1_config

_RELEASED = stage1_config()
HEADS, HEAD_DIM = _RELEASED.num_attention_heads, _RELEASED.head_dim  # 48 x 64 (the DSR model's heads are the same)


def install_target(arch: int):
    """Make Triton's active driver one that reports ``sm_<arch>`` and no device (compile only)."""
    import torch
    import triton.backends.nvidia.driver as nvidia
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class CompileOnlyDriver(nvidia.CudaDriver):
        def __init__(self):  # no CUDA library is loaded: nothing here may launch
            self.utils = self.launcher_cls = None

        @classmethod
        def is_active(cls):
            return True

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_current_device(self):
            return 0

        def set_current_device(self, device):
            pass

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("cpu")

    driver.set_active(CompileOnlyDriver())


@contextlib.contextmanager
def capture_launches(module, names: tuple[str, ...], check_names: tuple[str, ...] = ("check_launch",)):
    """Replace ``module.<name>[grid](...)`` of each kernel name by ``warmup`` (compile, no launch); yields the
    (name, compiled kernel) pairs in launch order."""
    real = {n: getattr(module, n) for n in names}
    compiled: list = []

    class Warm:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            def run(*args, **kwargs):
                compiled.append((self.name, real[self.name].warmup(*args, grid=grid, **kwargs)))
            return run

    saved = {n: getattr(module, n) for n in check_names}
    for n in names:
        setattr(module, n, Warm(n))
    for n in check_names:
        setattr(module, n, lambda *a, **k: None)  # the launch check wants a CUDA tensor
    try:
        yield compiled
    finally:
        for n, f in {**real, **saved}.items():
            setattr(module, n, f)


def window_launches(modes, dtypes, quick: bool):
    """(label, thunk) per window-attention launch of the runner at the released shapes."""
    import torch

    from cogvideo_engine.kernels import triton_attention as ta
    from cogvideo_engine.kernels.layout import SPATIAL, TEMPORAL, AttentionRule
    from cogvideo_engine.kernels.rules import FrameGeometry, Pass, StreamLayout

    geo = FrameGeometry()
    passes = [Pass.STAGE2] if quick else [Pass.FIRST_FRAME, Pass.STAGE1, Pass.STAGE2]
    for dtype in dtypes:
        for pass_ in passes:
            capacity = 512 if pass_ is Pass.FIRST_FRAME else geo.max_text_len
            channels = [SPATIAL, TEMPORAL] if pass_.mixes_temporal else [SPATIAL]
            for channel in ([TEMPORAL] if quick else channels):
                for parity in ([1] if quick else [0, 1]):
                    rule = AttentionRule(pass_, channel, parity, geo, capacity)
                    lay = StreamLayout(pass_, 20, pass_.max_targets, geo)
                    for mode in (["prefill", "decode2"] if quick else modes):
                        n = lay.context_len if mode.startswith("prefill") else int(mode[-1])
                        if n == 0:
                            continue
                        label = f"window {pass_.value} {channel} parity{parity} {mode} {dtype}"
                        yield label, _window_thunk(ta, rule, lay, n, mode, getattr(torch, _DTYPES[dtype]),
                                                   len(channels))


_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def _window_thunk(ta, rule, lay, n, mode, dtype, channels):
    import torch

    def run():
        qkv = torch.empty(1, n, 3 * HEADS * HEAD_DIM * channels, dtype=dtype)  # q: a view of the fused projection
        q = qkv[..., :HEADS * HEAD_DIM].view(1, n, HEADS, HEAD_DIM).transpose(1, 2)
        cache = torch.empty(1, rule.cache_len + 1, HEADS, HEAD_DIM, dtype=dtype)  # [B, rows + scratch, H, d]
        k = cache.transpose(1, 2)[:, :, :-1]
        start = 0 if mode.startswith("prefill") else lay.context_len
        q_index = torch.arange(start, start + n)[None]
        walk = {"prefill-ranged": "ranged"}.get(mode)
        ta.window_attention_triton(q, k, k, q_index, torch.tensor([20]), torch.tensor([0.0]), rule, walk=walk)
    return run


def local_launches(dtypes, quick: bool):
    import torch

    from cogvideo_engine.kernels import triton_local_attention as tla
    from cogvideo_engine.kernels.local_rules import DSR_GEOMETRY

    g = DSR_GEOMETRY
    for name in dtypes:
        def run(dtype=_DTYPES[name]):
            dtype = getattr(torch, dtype)
            qkv = torch.empty(1, g.num_queries, 3 * HEADS * HEAD_DIM, dtype=dtype)
            q = qkv[..., :HEADS * HEAD_DIM].view(1, g.num_queries, HEADS, HEAD_DIM).transpose(1, 2)
            low = torch.empty(1, g.num_low, 2 * HEADS * HEAD_DIM, dtype=dtype)
            k_low = low[..., :HEADS * HEAD_DIM].view(1, g.num_low, HEADS, HEAD_DIM).transpose(1, 2)
            tla.local_attention_triton(q, q, q, k_low, k_low, g)
        yield f"local dsr {name}", run


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def resources(kernel, arch: int) -> dict:
    """What the compilers report for one compiled kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin, ptx = Path(tmp) / "k.cubin", Path(tmp) / "k.ptx"
        cubin.write_bytes(kernel.asm["cubin"])
        ptx.write_text(kernel.asm["ptx"])
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout
        from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

        # Triton's own ptxas and flags (CUDABackend.make_cubin), so the report is of the cubin it made
        cmd = [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(arch)}", str(ptx), "-o", str(Path(tmp) / "v.cubin")]
        verbose = subprocess.run(cmd, check=False, capture_output=True, text=True).stderr
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", verbose)
    used = re.search(r"Used (\d+) registers", verbose)
    meta = kernel.metadata
    return {"registers": int(fields.get("REG", -1)), "stack_bytes": int(fields.get("STACK", -1)),
            "static_shared_bytes": int(fields.get("SHARED", -1)),
            "spill_store_bytes": int(spill.group(1)) if spill else None,
            "spill_load_bytes": int(spill.group(2)) if spill else None,
            "dynamic_shared_bytes": int(meta.shared), "shared_limit_bytes": SHARED_MEMORY_PER_BLOCK[arch],
            "num_warps": meta.num_warps, "num_stages": meta.num_stages,
            "ptxas_registers": int(used.group(1)) if used else None,
            "wgmma": "wgmma" in kernel.asm["ptx"], "mma": "mma.sync" in kernel.asm["ptx"],
            "async_copies": kernel.asm["ptx"].count("cp.async")}  # loads issued ahead (pipelined): cp.async[.bulk]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--targets", default="90,80")
    p.add_argument("--dtypes", help="default: bf16,fp16,fp32 (bf16 with --quick)")
    p.add_argument("--kernels", default="window,local")
    p.add_argument("--modes", default="prefill,decode1,decode2",
                   help="window launches: prefill, prefill-ranged (the ranged frame-key walk), decode1, decode2")
    p.add_argument("--quick", action="store_true", help="one launch per kernel, bf16")
    p.add_argument("--quick-dtypes", default="", help="dtypes compiled with the quick set beside the full --dtypes")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("compile_gpu_kernels.py compiles for GPUs: run it without TRITON_INTERPRET=1")
    if "triton" in sys.modules:
        raise SystemExit("compile_gpu_kernels.main must run before triton is imported (it sets Triton's cache)")
    with tempfile.TemporaryDirectory(prefix="triton-cache-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # a cold cache: compile_s is a compile, never a cache hit
        return _report(args)


def _report(args) -> int:
    import triton

    from cogvideo_engine.kernels import triton_attention as ta
    from cogvideo_engine.kernels import triton_local_attention as tla

    dtypes = (args.dtypes or ("bf16" if args.quick else "bf16,fp16,fp32")).split(",")
    quick_dtypes = [d for d in args.quick_dtypes.split(",") if d and d not in dtypes]
    modes = args.modes.split(",")
    rows = []
    for arch in map(int, args.targets.split(",")):
        install_target(arch)
        window_kernels = ("_window_attention_kernel", "_window_decode_kernel", "_decode_combine_kernel")
        for kernel in [getattr(ta, n) for n in window_kernels] + [tla._local_attention_kernel]:
            kernel.device_caches.clear()  # compiled per (device, specialization): device 0 was the last target
        launches = []
        for chosen, quick in ((dtypes, args.quick), (quick_dtypes, True)):
            if "window" in args.kernels:
                launches += [(ta, window_kernels, label, run)
                             for label, run in window_launches(modes, chosen, quick)]
            if "local" in args.kernels:
                launches += [(tla, ("_local_attention_kernel",), label, run)
                             for label, run in local_launches(chosen, quick)]
        for module, names, label, run in launches:
            t0 = time.perf_counter()
            try:
                with capture_launches(module, names) as compiled:
                    run()
                compile_s = time.perf_counter() - t0  # Triton's compile alone (the resource report follows)
                found = [({"kernel": label + _SUFFIX.get(name, ""), "target": f"sm_{arch}"},
                          resources(kernel, arch)) for name, kernel in compiled]
                launch_rows = [{**row, **found_row, "compiled": True} for row, found_row in found]
            except Exception as error:  # noqa: BLE001  (a kernel that does not compile is a row saying so)
                launch_rows = [{"kernel": label, "target": f"sm_{arch}", "compiled": False,
                                "error": f"{type(error).__name__}: {str(error)[:400]}"}]
                compile_s = time.perf_counter() - t0
            for row in launch_rows:  # a launch's kernels (a decode step's two) share its compile time
                row["compile_s"] = round(compile_s / len(launch_rows), 2)
                rows.append(row)
                print(_line(row), flush=True)
    meta = {"date": datetime.date.today().isoformat(), "triton": triton.__version__, "commit": _commit(),
            "device": "none (compile only)"}
    if args.out:
        args.out.write_text(json.dumps([{**meta, **r} for r in rows], indent=1) + "\n")
    return 0 if all(r["compiled"] for r in rows) else 1


_SUFFIX = {"_decode_combine_kernel": " combine"}
"""Label suffix of a launch's secondary kernel (a decode launch's combine step)."""


def _line(r: dict) -> str:
    if not r["compiled"]:
        return f"{r['target']}  {r['kernel']:<56} FAILED {r['error']}"
    smem = f"{r['dynamic_shared_bytes'] / 1024:6.1f}/{r['shared_limit_bytes'] / 1024:.0f} KB"
    return (f"{r['target']}  {r['kernel']:<56} regs {r['registers']:3d}  spill st/ld {r['spill_store_bytes']}/"
            f"{r['spill_load_bytes']}  smem {smem}  warps {r['num_warps']}  wgmma {r['wgmma']}  ({r['compile_s']} s)")


def _commit() -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
