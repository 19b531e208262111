"""What a model family tells the engine: which blocks are merged, how inputs are made, how a task is scored."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn
from transformers.utils import logging as transformers_logging

from ..samples import Sample
from ..sources import ModelSource


CLIP_TYPES = ("clip", "clip_vision_model")
FULL_CLIP_NEEDED = "the base must be a full CLIP model (model_type 'clip'): its text tower builds the zero-shot heads"


def same_architecture(expert_type: str, base_type: str) -> bool:
    """Whether an expert's model_type can be merged into the base's (a CLIP vision tower into a full CLIP)."""
    return expert_type == base_type or {expert_type, base_type} <= set(CLIP_TYPES)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence transformers while it loads part of a checkpoint (its report lists every tensor left out)."""
    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)


@dataclass
class EncodedSamples:
    """Model inputs for a list of samples, padded to one length; `token_mask` marks real tokens."""

    inputs: dict[str, torch.Tensor]
    token_mask: torch.Tensor  # [rows, tokens] bool

    def to(self, device: torch.device) -> "EncodedSamples":
        return EncodedSamples({k: v.to(device) for k, v in self.inputs.items()}, self.token_mask.to(device))


class Family(Protocol):
    name: str
    metric: str
    higher_is_better: bool
    part: str  # what is merged, in words ("encoder", "vision tower", "decoder")
    needs_labels: bool  # evaluation samples must carry labels
    sink_tokens: int  # default for options.sink_tokens: each sample's first tokens left out of the statistics
    notes: list[str]  # how scoring read ambiguous labels; run_merge adds them to the report's warnings

    def may_omit(self, name: str) -> bool:
        """Backbone tensors an expert may leave out of its files; the base's are used instead."""

    def load_backbone(self, folder: Path, dtype: torch.dtype, device: torch.device, offload: bool = False) -> nn.Module:
        """The part of the base model that is merged (blocks plus embeddings), ready for inference; offloaded,
        its blocks stay on the host (offload.place_backbone) and scoring streams them through the device."""

    def load_processor(self, folder: Path):
        """The tokenizer or image processor that turns samples into model inputs."""

    def encode(self, processor, samples: list[Sample], max_length: int) -> EncodedSamples:
        """Batch samples into padded model inputs."""

    def blocks(self, backbone: nn.Module) -> tuple[str, nn.ModuleList]:
        """The repeated blocks merged in network order, and their path inside the backbone."""

    def run_backbone(self, backbone: nn.Module, inputs: dict[str, torch.Tensor]) -> object:
        """One forward of the backbone; the engine stops it at block 0 to capture block inputs."""

    def is_task_specific(self, name: str) -> bool:
        """Backbone tensors kept per task with the head (never merged), e.g. BERT's pooler."""

    def score(self, backbone: nn.Module | None, expert: ModelSource, processor, samples: list[Sample],
              batch_size: int, class_names: list[str] | None = None) -> float:
        """Task score on evaluation samples with the expert's head on `backbone` (the expert itself when None)."""

    def save_task_head(self, expert: ModelSource, out_dir: Path, class_names: list[str] | None = None) -> None:
        """Write what a merged backbone needs to serve this expert's task (head weights, config)."""
