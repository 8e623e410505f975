"""icetk's text side, without icetk: sentencepiece on the user's ``ice_text.model``, ids offset by 20000.

* ``encode(text)``: ``sp.EncodeAsIds(text)`` + 20000 -- one call per segment, as the pipeline does;
* the pipeline's special tokens are appended after the model's pieces: ``<start_of_image>`` = 20000 + the
  piece count (150000 for the released 130000-piece model), then ``<start_of_english>``,
  ``<start_of_chinese>``;
* ``<n>`` is a piece of the model (its id is looked up, never assumed);
* ``decode`` maps ids back, ``<n>`` to a newline.

Exact ids of the released model need its ``ice_text.model``; the tests train a tiny model instead.
"""

from __future__ import annotations

import os
from pathlib import Path

TEXT_ID_OFFSET = 20000
SPECIAL_TOKENS = ("<start_of_image>", "<start_of_english>", "<start_of_chinese>")


class TextTokenizer:
    """Text <-> CogVideo token ids. ``boi_id`` is ``<start_of_image>``; ``newline_id`` is ``<n>``."""

    def __init__(self, model_path: str | os.PathLike):
        import sentencepiece as spm

        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"text tokenizer model {path} not found (icetk's ice_text.model)")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path} is not a sentencepiece model: {e}") from None
        self.num_pieces = self.sp.GetPieceSize()
        newline = self.sp.PieceToId("<n>")
        if newline == self.sp.unk_id() and self.sp.IdToPiece(newline) != "<n>":
            raise ValueError(f"{path} has no '<n>' piece; CogVideo's texts need it")
        self.newline_id = TEXT_ID_OFFSET + newline
        self.special = {name: TEXT_ID_OFFSET + self.num_pieces + i for i, name in enumerate(SPECIAL_TOKENS)}

    @property
    def boi_id(self) -> int:
        return self.special["<start_of_image>"]

    @property
    def vocab_size(self) -> int:
        return TEXT_ID_OFFSET + self.num_pieces + len(SPECIAL_TOKENS)

    def encode(self, text: str) -> list[int]:
        """One segment, encoded on its own (its own sentencepiece dummy prefix)."""
        return [TEXT_ID_OFFSET + i for i in self.sp.EncodeAsIds(text)]

    def decode(self, ids: list[int]) -> str:
        pieces = [i - TEXT_ID_OFFSET for i in ids if TEXT_ID_OFFSET <= i < TEXT_ID_OFFSET + self.num_pieces]
        return self.sp.DecodeIds(pieces).replace("<n>", "\n")
