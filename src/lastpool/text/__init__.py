"""Tokenizers: a byte-level BPE trained on the training texts, or any Hugging Face tokenizer."""

from lastpool.text.tokenizers import TextEncoder, load_pretrained_tokenizer, train_bpe

__all__ = ["TextEncoder", "load_pretrained_tokenizer", "train_bpe"]
