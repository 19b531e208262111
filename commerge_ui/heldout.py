"""Shift off the calibration set: does the correction generalise to text the merge never saw?

The engine measures the shift on the calibration tokens the merge was fitted on. This measures it on each
task's evaluation samples (the ones the run scores: `evaluation_samples` drawn with `seed`): the last block's
output of the merged model against the expert's own, ‖H_merged − H_expert‖_F / ‖H_expert‖_F, over the tokens
the statistics would use (padding and the `sink_tokens` left out, as in the engine). Any family whose saved
merge loads with its `load_backbone` (text classifiers' encoders, causal LMs); one saved folder per method.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .api import with_family_defaults
from .config import MergeConfig
from .engine import statistics_mask
from .families import detect_family
from .families.base import EncodedSamples, Family, quiet_loading
from .samples import read_samples
from .sources import resolve_model


def last_block_output(family: Family, model: nn.Module, encoded: EncodedSamples, batch_size: int = 32) -> torch.Tensor:
    """[rows, tokens, hidden]: the output of the model's last block for every encoded sample."""
    last = family.blocks(model)[1][-1]
    captured: list[torch.Tensor] = []

    def keep(_module, _inputs, output) -> None:
        captured.append((output[0] if isinstance(output, tuple) else output).detach())

    handle = last.register_forward_hook(keep)
    try:
        with torch.no_grad():
            rows = encoded.token_mask.shape[0]
            for start in range(0, rows, batch_size):
                family.run_backbone(model, {k: v[start:start + batch_size] for k, v in encoded.inputs.items()})
    finally:
        handle.remove()
    return torch.cat(captured)


def heldout_shift(config: MergeConfig, merged: dict[str, Path]) -> dict[str, dict[str, float]]:
    """method -> task -> the last block's output shift on the task's evaluation samples."""
    base = resolve_model(config.base)  # a Hub id or a local folder, as the merge reads it
    family = detect_family(base, config.family)
    processor = family.load_processor(base)
    options = with_family_defaults(config, family).options

    def load(folder: Path) -> nn.Module:
        with quiet_loading():  # a classifier expert's head is not loaded, on purpose
            return family.load_backbone(folder, torch.float32, torch.device("cpu"))

    models = {m: load(folder) for m, folder in merged.items()}
    result: dict[str, dict[str, float]] = {m: {} for m in merged}
    for expert in config.experts:
        if not expert.evaluation:
            continue
        samples = read_samples(expert.evaluation, options.evaluation_samples, options.seed)
        encoded = family.encode(processor, samples, options.max_length)
        mask = statistics_mask(encoded.token_mask, options.sink_tokens)
        exact = last_block_output(family, load(resolve_model(expert.model, expert.revision)), encoded)[mask]
        for method, model in models.items():
            approx = last_block_output(family, model, encoded)[mask]
            result[method][expert.name] = float(torch.linalg.vector_norm(approx - exact)
                                                / torch.linalg.vector_norm(exact))
    return result
