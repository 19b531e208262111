"""Experts with a grown vocabulary: chat and instruction fine-tunes often add tokens (`<|im_start|>`, tool
tokens) and resize the embedding table and the LM head. The blocks are unaffected; only those tables' extra rows
and the tokenizer differ.

With `tokenizer_source: base` (the default, as mergekit's) the base's vocabulary is kept: such an expert is read
through `BaseVocabulary`, which shows the merge only its first V rows (V: the base's vocabulary size), once its
tokenizer is checked to give the base's V tokens the base's ids; the tokens it added are dropped, and the run
warns, naming them.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import InputError


def added_tokens(expert_folder: Path, base_vocab: dict[str, int], base_size: int, who: str) -> list[str]:
    """The tokens `expert_folder`'s tokenizer has beyond the base's, once every base token keeps its id there;
    an InputError naming the first token that moved."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(expert_folder, trust_remote_code=False)
    except Exception as err:  # a tokenizer that cannot be read cannot be compared
        raise InputError(f"{who}: its vocabulary is larger than the base's and its tokenizer cannot be read "
                         f"({err.__class__.__name__})") from None
    vocab = tokenizer.get_vocab()
    moved = next((t for t, i in base_vocab.items() if i < base_size and vocab.get(t) != i), None)
    if moved is not None:
        raise InputError(f"{who}: its tokenizer gives the base's token {moved!r} id {vocab.get(moved)}, not "
                         f"{base_vocab[moved]}: not the base's vocabulary with tokens added, so it cannot be merged")
    return [t for t, i in sorted(vocab.items(), key=lambda item: item[1]) if i >= base_size]


class BaseVocabulary:
    """An expert's tensors with its vocabulary tables cut to the base's first `rows` rows (SafetensorsWeights'
    interface): `grown` names the tensors whose first dimension is the expert's larger vocabulary."""

    def __init__(self, weights, grown: set[str], rows: int) -> None:
        self.weights, self.grown, self.rows = weights, grown, rows

    @property
    def folder(self) -> Path:
        return self.weights.folder

    @property
    def file_of(self) -> dict[str, Path]:
        return self.weights.file_of

    def names(self) -> list[str]:
        return self.weights.names()

    def shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self.weights.shape(name))
        return (self.rows, *shape[1:]) if name in self.grown else shape

    def dtype(self, name: str) -> str:
        return self.weights.dtype(name)

    def get(self, name: str) -> torch.Tensor:
        tensor = self.weights.get(name)
        return tensor[: self.rows].contiguous() if name in self.grown else tensor


def grown_tables(weights, expert_size: int) -> set[str]:
    """The expert's vocabulary tables: the tensors whose first dimension is its vocabulary size."""
    return {name for name in weights.names() if tuple(weights.shape(name))[:1] == (expert_size,)}
