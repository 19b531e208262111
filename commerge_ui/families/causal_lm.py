"""Causal language models (GPT-2, Llama, Qwen, Mistral): the whole decoder is merged; scored by perplexity."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

from ..errors import InputError
from ..offload import Placement, blocks_streamed, place_backbone
from ..samples import Sample
from ..sources import ModelSource
from .base import EncodedSamples

MAX_EVAL_LENGTH = 512
MAX_EVAL_BATCH = 8  # logits are batch × tokens × vocabulary: 8 × 512 × 128k floats is already 2 GiB
transformers_logging.disable_progress_bar()


class CausalLM:
    name = "causal-lm"
    metric = "perplexity"
    higher_is_better = False
    part = "decoder"
    needs_labels = False
    sink_tokens = 1  # a causal LM's first token is its attention sink (docs/method.md §8b)

    def __init__(self) -> None:
        self._placement = (torch.float32, Placement(torch.device("cpu")))  # the run's; experts are scored so too
        self.notes: list[str] = []

    def load_backbone(self, folder: Path, dtype: torch.dtype, device: torch.device, offload: bool = False) -> nn.Module:
        self._placement = (dtype, Placement(device, offload))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True,
                                                     trust_remote_code=False)
        model.config.use_cache = False
        place_backbone(model, self.blocks(model)[1], self._placement[1])
        return model.eval()

    def load_processor(self, folder: Path):
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        if tokenizer.pad_token is None:  # GPT-2 and Llama ship without one; padded tokens are masked anyway
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        if tokenizer.pad_token is None:
            raise InputError(f"{folder}: the tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.padding_side = "right"  # positions of real tokens stay 0..n-1
        return tokenizer

    def encode(self, processor, samples: list[Sample], max_length: int) -> EncodedSamples:
        texts = [s.text for s in samples]
        if any(not t for t in texts):
            raise InputError("causal-LM samples must be text (a 'text' field or .txt lines)")
        batch = processor(texts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt")
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        return EncodedSamples(inputs, inputs["attention_mask"].bool())

    def blocks(self, backbone: nn.Module) -> tuple[str, nn.ModuleList]:
        return decoder_blocks(backbone)

    def run_backbone(self, backbone: nn.Module, inputs: dict[str, torch.Tensor]) -> object:
        return backbone(**inputs, use_cache=False)

    def is_task_specific(self, name: str) -> bool:
        return False  # the LM head is shared: merged with the embeddings (or tied to them)

    def may_omit(self, name: str) -> bool:
        return False

    def score(self, backbone: nn.Module | None, expert: ModelSource, processor, samples: list[Sample],
              batch_size: int, class_names: list[str] | None = None) -> float:
        # The expert is loaded whole, once, next to the merged model: two models at most, never all experts.
        # Offloaded, both keep their blocks on the host and each block visits the device for its forward.
        dtype, placement = self._placement
        model = backbone if backbone is not None else self.load_backbone(expert.weights.folder, dtype,
                                                                         placement.device, placement.offload)
        with blocks_streamed(self.blocks(model)[1], placement):
            return perplexity(model, self.encode(processor, samples, MAX_EVAL_LENGTH),
                              min(batch_size, MAX_EVAL_BATCH))

    def save_task_head(self, expert: ModelSource, out_dir: Path, class_names: list[str] | None = None) -> None:
        return None  # one LM head serves every task


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The decoder's repeated blocks: the longest ModuleList of identical modules ('model.layers', 'transformer.h')."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise InputError(f"{type(model).__name__}: no repeated decoder blocks found")
    return best


def perplexity(model: nn.Module, encoded: EncodedSamples, batch_size: int) -> float:
    """exp(mean next-token NLL) over every real token after the first of each text; padding never counts."""
    param = next(model.parameters())
    total_nll, total_tokens = 0.0, 0
    ids, mask = encoded.inputs["input_ids"], encoded.inputs["attention_mask"]
    with torch.no_grad():
        for start in range(0, ids.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            width = int(mask[rows].sum(dim=1).max())  # trim the batch's shared padding
            chunk_ids, chunk_mask = ids[rows, :width].to(param.device), mask[rows, :width].to(param.device)
            logits = model(input_ids=chunk_ids, attention_mask=chunk_mask, use_cache=False).logits.float()
            nll = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), chunk_ids[:, 1:], reduction="none")
            counted = chunk_mask[:, 1:].bool()
            total_nll += float(nll[counted].sum())
            total_tokens += int(counted.sum())
    if total_tokens == 0:
        raise InputError("evaluation texts are too short: each needs at least two tokens")
    return math.exp(total_nll / total_tokens)
