"""Video export: uint8 frames, GIF (Pillow), MP4 (optional, imageio-ffmpeg), a frames folder, token files.

Every writer writes to a temporary name and renames at the end, so an interrupted or cancelled run leaves
no half-written file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F


def to_uint8(frames: torch.Tensor, normalize: str = "minmax") -> torch.Tensor:
    """``[F, 3, H, W]`` decoder output -> ``uint8 [F, H, W, 3]``.

    ``minmax``: per-frame min-max normalisation, as the original's ``save_image(normalize=True)``;
    ``clamp``: clamp to [0, 1].
    """
    x = frames.float()
    if normalize == "minmax":
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp(min=1e-5)
    elif normalize == "clamp":
        x = x.clamp(0, 1)
    else:
        raise ValueError(f"normalize must be 'minmax' or 'clamp', got {normalize!r}")
    return (x * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def upscale_nearest(frames: torch.Tensor, size: int = 480) -> torch.Tensor:
    """``uint8 [F, H, W, 3]`` -> ``[F, size, size, 3]`` by nearest neighbour (until super-resolution)."""
    x = frames.permute(0, 3, 1, 2).float()
    return F.interpolate(x, size=(size, size), mode="nearest").to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _atomic(path: Path):
    """A temporary file beside ``path`` with the permissions a plain ``open(path, "w")`` would give."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".part", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def write_gif(path: str | os.PathLike, frames: torch.Tensor, fps: float) -> Path:
    """GIF of ``uint8 [F, H, W, 3]`` at ``fps`` (the original: 4 fps stage 1, 8 fps stage 2)."""
    from PIL import Image

    path = Path(path)
    tmp = _atomic(path)
    try:
        images = [Image.fromarray(f.numpy()) for f in frames]
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps),
                       loop=0)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_mp4(path: str | os.PathLike, frames: torch.Tensor, fps: float) -> Path:
    """MP4 through imageio-ffmpeg's bundled FFmpeg (``pip install imageio-ffmpeg``)."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise RuntimeError("MP4 export needs the optional package imageio-ffmpeg (pip install imageio-ffmpeg); "
                           "GIF and frames export need nothing extra") from None
    path = Path(path)
    tmp = _atomic(path)
    try:
        h, w = frames.shape[1:3]
        writer = imageio_ffmpeg.write_frames(str(tmp), (w, h), fps=fps, codec="libx264", output_params=["-f", "mp4"])
        writer.send(None)
        for f in frames:
            writer.send(f.numpy().tobytes())
        writer.close()
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_image(path: str | os.PathLike, frame: torch.Tensor) -> Path:
    """One ``uint8 [H, W, 3]`` frame as an image (the format from the suffix: ``.png``, ``.jpg``, ...)."""
    from PIL import Image

    path = Path(path)
    tmp = _atomic(path)
    try:
        Image.fromarray(frame.numpy()).save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_frames(directory: str | os.PathLike, frames: torch.Tensor) -> Path:
    """``0000.png``, ``0001.png``, ... in ``directory`` (written to a temporary folder, then renamed)."""
    from PIL import Image

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=directory.name + ".", suffix=".part", dir=directory.parent))
    try:
        for i, f in enumerate(frames):
            Image.fromarray(f.numpy()).save(tmp / f"{i:04d}.png")
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def write_tokens(path: str | os.PathLike, tokens: torch.Tensor) -> Path:
    """Frame tokens ``LongTensor[F, 400]`` as ``.pt`` (or ``.npy``): what stage 2 can resume from."""
    path = Path(path)
    tmp = _atomic(path)
    try:
        if path.suffix == ".npy":
            import numpy as np

            with open(tmp, "wb") as fh:
                np.save(fh, tokens.cpu().numpy())
        else:
            torch.save(tokens.cpu().clone(), tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_tokens(path: str | os.PathLike) -> torch.Tensor:
    path = Path(path)
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path, allow_pickle=False)).long()
    return torch.load(path, weights_only=True).long()
