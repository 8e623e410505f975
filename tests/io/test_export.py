"""Video export: uint8 frames, GIF, a frames folder, token files; nothing half-written is left behind."""

import os

import torch

from cogvideo_engine.io.export import read_tokens, to_uint8, write_frames, write_gif, write_tokens


def test_export_formats(tmp_path):
    from PIL import Image

    frames = to_uint8(torch.randn(3, 3, 16, 16))
    assert frames.shape == (3, 16, 16, 3) and frames.dtype == torch.uint8
    assert frames[0].max() == 255 and frames[0].min() == 0  # per-frame min-max, as the original saves
    gif = write_gif(tmp_path / "v.gif", frames, fps=8)
    assert Image.open(gif).n_frames == 3
    umask = os.umask(0)
    os.umask(umask)
    assert gif.stat().st_mode & 0o777 == 0o666 & ~umask  # the permissions of any file the user writes
    folder = write_frames(tmp_path / "frames", frames)
    assert sorted(p.name for p in folder.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    assert not list(tmp_path.glob("*.part"))  # no temporary leftovers
    tokens = torch.randint(0, 20000, (5, 400))
    assert torch.equal(read_tokens(write_tokens(tmp_path / "t.npy", tokens)), tokens)
