"""The text tokenizer on a tiny sentencepiece model trained on the fly (the real ice_text.model is not here)."""

import io

import pytest

from cogvideo_engine.generation.pipeline import video_text
from cogvideo_engine.io.tokenizer import TextTokenizer

CORPUS = ["a cat plays the piano", "a dog runs on the beach", "视频 高清摄影 一只猫", "4.0秒 2.0秒 1.0秒 0.5秒",
          "the sun sets over the sea", "people dance in the rain"] * 20


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    import sentencepiece as spm

    path = tmp_path_factory.mktemp("spm") / "ice_text.model"
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=48,
                                   user_defined_symbols=["<n>"], character_coverage=1.0)
    path.write_bytes(buf.getvalue())
    return path


def test_ids_offsets_and_special_tokens(model_file):
    tok = TextTokenizer(model_file)
    assert tok.num_pieces == 48
    assert tok.boi_id == 20000 + 48 and tok.special["<start_of_chinese>"] == 20000 + 50
    ids = tok.encode("a cat plays the piano")
    assert all(20000 <= i < 20048 for i in ids)
    assert tok.decode(ids) == "a cat plays the piano"
    assert 20000 <= tok.newline_id < 20048 and tok.decode([tok.newline_id]) == "\n"


def test_segments_are_encoded_separately(model_file):
    tok = TextTokenizer(model_file)
    ids = video_text(tok, 4, "a cat 视频")
    assert ids == tok.encode("4.0秒") + [tok.newline_id] + tok.encode("a cat 视频")


def test_bad_model_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ice_text\.model"):
        TextTokenizer(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        TextTokenizer(tmp_path / "junk.model")
