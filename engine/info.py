"""``python -m cogvideo_engine.info``: versions, devices, and which attention backends can run (and why not)."""

from __future__ import annotations

import platform
import sys

import torch


def report() -> str:
    from cogvideo_engine import __version__
    from cogvideo_engine.kernels.registry import backend_status, default_backend, local_backend_status

    lines = [f"cogvideo_engine {__version__}", f"python {platform.python_version()}, torch {torch.__version__}"]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if torch.cuda.is_available():
        lines.append(f"cuda device: {torch.cuda.get_device_name()}")
    else:
        lines.append("cuda device: none visible")
    for device in devices:
        lines.append(f"attention backends on {device}:")
        for s in backend_status(device):
            lines.append(f"  {'yes' if s.available else 'no ':3s}  {s.name:9s}  {s.reason}")
        lines.append(f"  default on {device}: {default_backend(device)}")
        window = {s.name: s.available for s in backend_status(device)}
        local = [s.name for s in local_backend_status(device) if s.available]
        missing = [f"{s.name} ({s.reason})" for s in local_backend_status(device) if window[s.name] and not s.available]
        lines.append(f"  super-resolution local attention on {device}: {', '.join(local)}"
                     + (f"; missing: {'; '.join(missing)}" if missing else ""))
    return "\n".join(lines)


def main() -> int:
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
