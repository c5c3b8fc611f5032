"""Tokenizers: the trained BPE, pretrained ones (folder, GGUF, hub id) and tokenizers without a pad token."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lastpool import Classifier
from lastpool.errors import ConfigError, ModelLoadError
from lastpool.text.tokenizers import EOS, PAD, TextEncoder, load_pretrained_tokenizer, train_bpe
from tests.conftest import TINY_KW, demo_sample

GGUF = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return demo_sample()[0]


@pytest.fixture(scope="module")
def bpe(texts: list[str]) -> PreTrainedTokenizerFast:
    return train_bpe(texts, 400)


def test_train_bpe_is_deterministic(texts: list[str], bpe: PreTrainedTokenizerFast) -> None:
    again = train_bpe(texts, 400)
    assert again.get_vocab() == bpe.get_vocab()
    assert len(bpe) > 256  # the byte alphabet plus merges
    assert bpe.pad_token == PAD and bpe.eos_token == EOS
    other = train_bpe(texts[::-1][:30], 400)
    assert other.get_vocab() != bpe.get_vocab()  # the vocabulary does depend on the texts


def test_bpe_appends_eos_and_is_lossless(bpe: PreTrainedTokenizerFast) -> None:
    encoder = TextEncoder(bpe, max_length=64)
    texts = ["Profit rose 20 % .", "Grüße aus Köln — 5 €", "x"]
    for text, ids in zip(texts, encoder.encode(texts), strict=True):
        assert ids[-1] == bpe.eos_token_id
        assert bpe.eos_token_id not in ids[:-1]
        assert str(bpe.decode(ids, skip_special_tokens=True)).strip() == text  # byte-level: nothing unknown
    assert encoder.pad_token_id == bpe.pad_token_id != bpe.eos_token_id
    assert encoder.encode([]) == []


def test_truncation_keeps_eos_within_max_length(bpe: PreTrainedTokenizerFast) -> None:
    encoder = TextEncoder(bpe, max_length=8)
    long_text = "The company said operating profit rose sharply in the third quarter of the year ."
    (ids,) = encoder.encode([long_text])
    assert len(ids) == 8
    assert ids[-1] == bpe.eos_token_id
    full = TextEncoder(bpe, max_length=512).encode([long_text])[0]
    assert len(full) > 8 and ids[:-1] == full[:7]  # the start of the text is kept


def test_save_load_roundtrip(bpe: PreTrainedTokenizerFast, texts: list[str], tmp_path: Path) -> None:
    encoder = TextEncoder(bpe, max_length=16)
    encoder.save(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = TextEncoder.load(tmp_path, 16)
    assert loaded.encode(texts) == encoder.encode(texts)
    assert loaded.pad_token_id == encoder.pad_token_id and loaded.vocab_size == encoder.vocab_size
    with pytest.raises(ModelLoadError, match="tokenizer files are missing"):
        TextEncoder.load(tmp_path / "nothing", 16)


def test_bad_sizes() -> None:
    with pytest.raises(ConfigError, match="at least 300"):
        train_bpe(["a b c"], 100)
    with pytest.raises(ConfigError, match="max_length"):
        TextEncoder(train_bpe(["a b c", "d e f"], 300), 1)


@pytest.mark.slow
def test_gguf_tokenizer() -> None:
    if not GGUF.is_file():
        pytest.skip(f"{GGUF} is not available")
    tokenizer = load_pretrained_tokenizer(str(GGUF))
    encoder = TextEncoder(tokenizer, max_length=16)
    assert encoder.vocab_size == 49152
    assert encoder.pad_token_id == 2  # <|im_end|>, the pad and EOS token of SmolLM2
    short, long = encoder.encode(["Operating profit rose .", "profit " * 40])
    assert 2 <= len(short) < 16 and all(0 <= i < 49152 for i in short)
    assert len(long) == 16
    assert str(tokenizer.decode(short)).strip() == "Operating profit rose ."


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pretrained_tokenizer(str(tmp_path / "model.gguf"))


def test_hub_id_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_pretrained_tokenizer("some-org/some-model")
    message = str(info.value)
    assert "some-org/some-model" in message and "unreachable" in message and "\n" not in message


def test_nonexistent_local_path(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a folder, a .gguf file or a hub id"):
        load_pretrained_tokenizer(str(tmp_path / "no" / "such" / "tokenizer"))
    with pytest.raises(ModelLoadError):
        load_pretrained_tokenizer("./no-such-tokenizer")


def test_folder_that_is_not_a_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(ModelLoadError, match="could not load tokenizer"):
        load_pretrained_tokenizer(str(tmp_path))


# --- a tokenizer with no pad (and no EOS) token -----------------------------------------------------------


def no_pad_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.BPE(unk_token=None))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    raw.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw)


def test_tokenizer_without_pad_token(texts: list[str], tmp_path: Path) -> None:
    tokenizer = no_pad_tokenizer(texts)
    assert tokenizer.pad_token_id is None and tokenizer.eos_token_id is None
    encoder = TextEncoder(tokenizer, max_length=32)
    assert encoder.pad_token_id == 0  # a filler only; masked out and never pooled
    assert all(len(ids) >= 1 for ids in encoder.encode(texts))

    folder = tmp_path / "tok"
    tokenizer.save_pretrained(str(folder))
    _, labels = demo_sample()
    for side in ("right", "left"):
        config = {**TINY_KW, "tokenizer": str(folder), "padding_side": side, "max_length": 128}
        clf = Classifier(**config).fit(texts, labels)
        assert clf.encoder is not None and clf.encoder.tokenizer.pad_token_id is None
        sample = [*texts[:12], "Profit rose .", "Sales fell", "Shares in the company jumped 8 % today ."]
        lengths = {len(ids) for ids in clf.encoder.encode(sample)}
        assert len(lengths) > 1  # the batch really is padded
        batched = clf.logits(sample)
        alone = np.concatenate([clf.logits([t]) for t in sample])
        np.testing.assert_allclose(batched, alone, atol=1e-5)
        # ... and the saved model, pad-less tokenizer included, loads and predicts the same.
        saved = clf.save(tmp_path / f"model-{side}")
        assert np.array_equal(Classifier.load(saved).logits(sample), batched)


@pytest.mark.slow
def test_gguf_tokenizer_is_parsed_once_then_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not GGUF.is_file():
        pytest.skip(f"{GGUF} is not available")
    monkeypatch.setenv("LASTPOOL_CACHE", str(tmp_path))
    first = load_pretrained_tokenizer(str(GGUF))
    entries = list((tmp_path / "gguf").glob("*.tokenizer"))
    assert len(entries) == 1 and (entries[0] / "tokenizer.json").is_file()

    import transformers

    real = transformers.AutoTokenizer.from_pretrained

    def no_gguf(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        assert "gguf_file" not in kwargs, "the GGUF file was parsed again"
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_gguf)
    second = load_pretrained_tokenizer(str(GGUF))
    texts = ["Operating profit rose to EUR 13.1 mn .", "Ääni – ü 1,5 %", "<|im_end|> ends here"]
    assert first(texts)["input_ids"] == second(texts)["input_ids"]
    assert (second.pad_token_id, second.eos_token_id) == (first.pad_token_id, first.eos_token_id)
