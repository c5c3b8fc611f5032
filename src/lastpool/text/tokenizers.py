"""Turn texts into token ids, truncated to the max length, without padding (batching pads later).

Every tokenizer is held as a transformers fast tokenizer, so a BPE trained here and a pretrained one
(local folder, hub id or GGUF file) save, load and encode the same way. The pad id is only a filler:
lastpool never uses it to find the pooled token, so tokenizers without a pad token work unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lastpool.errors import ConfigError, DataError, ModelLoadError
from lastpool.hub import load_failure, looks_local, offline

PAD = "<pad>"
EOS = "<eos>"
UNK = "<unk>"


def train_bpe(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, lowercase: bool = False
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` (training texts only, never validation ones).

    Byte-level means no text is ever out of vocabulary. Each text ends with ``<eos>``: a token that is
    always last, so last-token pooling reads the same learned position-independent symbol at the end
    of every text. ``lowercase`` folds case before splitting: with a few thousand training texts,
    "Profit" and "profit" sharing one embedding generalises better; it is saved with the tokenizer.
    """
    if vocab_size < 300:
        raise ConfigError(f"vocab_size must be at least 300 for a byte-level BPE (got {vocab_size})")
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    eos_id = tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", special_tokens=[(EOS, eos_id)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, eos_token=EOS)


def load_pretrained_tokenizer(source: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load a Hugging Face tokenizer from a folder, a ``.gguf`` file or a hub id.

    Any failure (missing path, no network for a hub id, a file that is not GGUF) becomes one clear
    ModelLoadError instead of a library traceback.
    """
    path = Path(source).expanduser()
    try:
        if path.suffix.lower() == ".gguf":
            if not path.is_file():
                raise ModelLoadError(f"tokenizer file {source} does not exist")
            return _gguf_tokenizer(path)
        if path.is_dir():
            return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        if looks_local(source, path):
            raise ModelLoadError(f"tokenizer {source}: not a folder, a .gguf file or a hub id")
        # huggingface_hub reads HF_HUB_OFFLINE once, at import; read it now so that setting it later
        # still means "no network" (instead of connection retries before failing).
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code,
                                             local_files_only=offline())
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - transformers raises many types; the user needs one message
        raise load_failure("tokenizer", source, exc) from None




TEXT_SLOT = "{text}"
PAIR_SLOT = "{text_pair}"  # the second text of a pair (``--text-pair-col``)
_SLOTS = re.compile(r"\{text\}|\{text_pair\}")


def check_prompt(prompt: str) -> str:
    """A prompt template must hold the text slot exactly once (and the pair slot at most once)."""
    if prompt.count(TEXT_SLOT) != 1:
        raise ConfigError(f"prompt must contain {TEXT_SLOT} exactly once (got {prompt!r})")
    if prompt.count(PAIR_SLOT) > 1:
        raise ConfigError(f"prompt must contain {PAIR_SLOT} at most once (got {prompt!r})")
    return prompt


def fill(template: str, text: str, pair: str | None = None) -> str:
    """The template with its slots filled in one pass (a text that itself holds "{text}" stays as it is)."""
    return _SLOTS.sub(lambda m: text if m.group(0) == TEXT_SLOT else (pair or ""), template)


def _gguf_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """The tokenizer inside a GGUF file; parsed once (about 6 s), then read from the cache beside the
    dequantized weights (``$LASTPOOL_CACHE/gguf/<sha256>.tokenizer``) in well under a second."""
    from lastpool.fileio import default_cache_dir, sha256_file, staged_dir

    if not path.is_file():
        raise ModelLoadError(f"tokenizer file {path} does not exist")
    cached = default_cache_dir() / "gguf" / f"{sha256_file(path)}.tokenizer"
    if (cached / "tokenizer.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(str(cached))
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt from the GGUF file
            pass
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    try:
        with staged_dir(cached, replace=True) as tmp:
            tokenizer.save_pretrained(str(tmp))
    except OSError:
        pass  # an unwritable cache only costs time
    return tokenizer


class TextEncoder:
    """A tokenizer, the truncation length and a prompt template: texts in, lists of token ids out.

    The prompt wraps each text (``"{text}\nSentiment:"``), so that a pretrained decoder's last token is
    a question about the text rather than its final word; when a text is too long, the text is cut and
    the prompt kept whole, since the last token is the one that is pooled. A template that also holds
    ``{text_pair}`` reads text pairs; a pair too long is cut in its longer text, a token at a time.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, prompt: str = TEXT_SLOT) -> None:
        if max_length < 2:
            raise ConfigError(f"max_length must be at least 2 (got {max_length})")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.prompt = check_prompt(prompt)
        if prompt != TEXT_SLOT:
            empty = len(self._ids([self._wrap("", "")])[0])
            if empty >= max_length:
                raise ConfigError(f"the prompt alone is {empty} tokens, leaving no room for text within "
                                  f"max_length {max_length}: shorten the prompt or raise --max-length")

    @property
    def pairs(self) -> bool:
        """Whether this encoder reads text pairs (its template has the second text's slot)."""
        return PAIR_SLOT in self.prompt

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        """A filler id for padded positions (pad, else EOS, else 0); masked out, never pooled."""
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    def _wrap(self, text: str, pair: str | None = None) -> str:
        return fill(self.prompt, text, pair)

    def _ids(self, texts: list[str], truncate: bool = False) -> list[list[int]]:
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=truncate,
                                 max_length=self.max_length if truncate else None, padding=False,
                                 return_attention_mask=False)
        return [list(ids) for ids in encoded["input_ids"]]

    def _check_pairs(self, texts: Sequence[str], pairs: Sequence[str] | None) -> list[str | None]:
        if self.pairs and pairs is None:
            raise DataError("this model reads text pairs: give each text's second text (--text-pair-col)")
        if not self.pairs and pairs is not None:
            raise DataError("this model reads single texts, not pairs: leave out the second texts")
        if pairs is not None and len(pairs) != len(texts):
            raise DataError(f"{len(texts)} texts but {len(pairs)} second texts")
        return list(pairs) if pairs is not None else [None] * len(texts)

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[list[int]]:
        """Token ids per text (or pair), prompt and special tokens added, at most ``max_length``; no padding."""
        if not texts:
            return []
        if self.prompt == TEXT_SLOT and pairs is None:  # the tokenizer truncates in the same pass
            return self._ids(list(texts), truncate=True)
        return self.encode_counted(texts, pairs)[0]

    def encode_counted(self, texts: Sequence[str], pairs: Sequence[str] | None = None
                       ) -> tuple[list[list[int]], list[int]]:
        """``encode``'s ids and ``lengths``' counts from one tokenizer pass (texts longer than
        ``max_length`` are cut and tokenized again): what a server needs for each request."""
        seconds = self._check_pairs(texts, pairs)
        rows = self._ids([self._wrap(text, pair) for text, pair in zip(texts, seconds, strict=True)]) if texts else []
        lengths = [len(ids) for ids in rows]
        long = [i for i, n in enumerate(lengths) if n > self.max_length]
        if long and self.prompt == TEXT_SLOT:
            for i, ids in zip(long, self._ids([texts[i] for i in long], truncate=True), strict=True):
                rows[i] = ids
        else:
            for i in long:
                rows[i] = self._cut_to_fit(texts[i], seconds[i], lengths[i])
        return rows, lengths

    def lengths(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[int]:
        """Tokens per text (prompt and special tokens included) before truncation: what the report's
        length histogram and truncated share are about."""
        if not texts:
            return []
        seconds = self._check_pairs(texts, pairs)
        return [len(ids) for ids in self._ids([self._wrap(t, p) for t, p in zip(texts, seconds, strict=True)])]

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        return list(self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"])

    def _cut_to_fit(self, text: str, pair: str | None, length: int) -> list[int]:
        """Drop tokens from the end of the text (of a pair: of the longer of its two texts), never of the
        prompt, until the whole fits."""
        parts = [text] if pair is None else [text, pair]
        offsets = [self._offsets(part) for part in parts]
        keep = [len(o) for o in offsets]
        excess = length - self.max_length
        while True:
            for _ in range(max(excess, 1)):  # a token at a time from the longer text (longest first)
                k = max(range(len(keep)), key=lambda j: keep[j])
                if keep[k] <= 0:
                    break
                keep[k] -= 1
            cut = [part[: o[n - 1][1]] if n > 0 else "" for part, o, n in zip(parts, offsets, keep, strict=True)]
            ids = self._ids([self._wrap(cut[0], cut[1] if pair is not None else None)])[0]
            if len(ids) <= self.max_length or not any(keep):
                return ids[: self.max_length]
            excess = 1  # token merges at the cut: one more at a time, so no more is cut than needed

    def save(self, folder: Path) -> None:
        self.tokenizer.save_pretrained(str(folder))

    @classmethod
    def load(cls, folder: Path, max_length: int, prompt: str = TEXT_SLOT) -> TextEncoder:
        if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer_config.json").is_file():
            raise ModelLoadError(f"{folder}: tokenizer files are missing (expected tokenizer.json)")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"{folder}: could not load the saved tokenizer ({exc})") from None
        return cls(tokenizer, max_length, prompt)
