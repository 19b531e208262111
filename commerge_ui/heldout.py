"""Shift off the calibration set: does the correction generalise to text the merge never saw?

The engine measures the shift on the calibration tokens the merge was fitted on. This measures it on each
task's evaluation texts: the last block's output of the merged encoder against the expert's own, padding left
out, ‖H_merged − H_expert‖_F / ‖H_expert‖_F. Text-classification configs (a saved merged encoder per method).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as transformers_logging

from .config import MergeConfig
from .samples import read_samples


def last_hidden(model: torch.nn.Module, texts: list[str], tokenizer, max_length: int,
                batch_size: int = 64) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                              max_length=max_length, return_tensors="pt")
            rows.append(model(**batch).last_hidden_state[batch["attention_mask"].bool()])
    return torch.cat(rows)


def heldout_shift(config: MergeConfig, merged: dict[str, Path]) -> dict[str, dict[str, float]]:
    """method -> task -> the last block's output shift on the task's evaluation texts."""
    transformers_logging.set_verbosity_error()  # the experts' heads are not loaded, on purpose
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    max_length = config.options.max_length
    models = {m: AutoModel.from_pretrained(folder).eval() for m, folder in merged.items()}
    result: dict[str, dict[str, float]] = {m: {} for m in merged}
    for expert in config.experts:
        if not expert.evaluation:
            continue
        texts = [s.text for s in read_samples(expert.evaluation)]
        exact = last_hidden(AutoModel.from_pretrained(expert.model).eval(), texts, tokenizer, max_length)
        for method, model in models.items():
            approx = last_hidden(model, texts, tokenizer, max_length)
            result[method][expert.name] = float(torch.linalg.vector_norm(approx - exact)
                                                / torch.linalg.vector_norm(exact))
    return result
