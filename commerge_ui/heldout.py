"""Shift off the calibration set: does the correction carry over to samples the merge never saw?

The engine measures the shift on the calibration tokens the merge was fitted on, which is where CoM's
correction is made: a low curve there can be in-sample fit (docs/method.md §8). This measures
the same block-output shift on each task's evaluation samples (the ones the run scores): the merged model's
output of every block against the expert's own, ‖H_merged − H_expert‖_F / ‖H_expert‖_F, over the tokens the
statistics would use (padding and the `sink_tokens` left out). It runs as the engine does, block by block: an
expert stream per task (its blocks read from its files one at a time) and the merged stream, so it costs one
expert forward and one merged forward over the evaluation samples and holds one block at a time, whatever
the model's size; like the engine's passes, its forwards take samples of similar length cut to their longest,
so that padding is not run. Any family the engine merges.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .engine import (EngineTask, ShiftSum, Stream, by_length, capture_block_inputs, load_block, plan_buckets,
                     run_block, statistics_mask)
from .families.base import EncodedSamples, Family
from .offload import Placement, on_device

CHUNK_ROWS = 32  # samples per forward (of similar length, cut to their longest); the streams are held whole


def heldout_shift(family: Family, backbone: nn.Module, tasks: list[EngineTask], encoded: EncodedSamples,
                  sink_tokens: int, placement: Placement,
                  on_block: Callable[[int, int], None] | None = None) -> dict[str, list[float]]:
    """task -> the shift of every block's output on its rows of `encoded` (its evaluation samples), for the merged
    model in `backbone` against each task's expert (`task.source`). `backbone` is left as it was.
    `on_block(done, total)` is called after each block (progress; it may raise to cancel)."""
    block_path, blocks = family.blocks(backbone)
    store = placement.store
    encoded = by_length(encoded, tasks)  # neighbours of similar length: each forward is cut to its longest
    with torch.no_grad():
        expert_streams = _expert_streams(family, backbone, tasks, encoded, store)
        merged = capture_block_inputs(family, backbone, blocks[0], encoded.inputs).to(store)
        buckets = [plan_buckets(family, backbone, blocks[0], encoded, t, CHUNK_ROWS, store) for t in tasks]
        masks = [statistics_mask(encoded.token_mask[t.rows], sink_tokens) for t in tasks]
        result: dict[str, list[float]] = {t.name: [] for t in tasks}
        for index, block in enumerate(blocks):
            with on_device(block, placement):
                dtype = next(block.parameters()).dtype
                for task, stream, mask, planned in zip(tasks, expert_streams, masks, buckets):
                    expert_block = load_block(block, task.source, f"{block_path}.{index}", dtype)
                    shift = ShiftSum()
                    for bucket in planned:
                        real = mask[bucket.rows, :bucket.width]
                        exact = run_block(expert_block, bucket.of(stream).to(placement.device))
                        approx = run_block(block, bucket.of(merged, task.rows.start).to(placement.device))
                        shift.add(approx[real].double(), exact[real].double())
                        bucket.write(stream, exact)
                        bucket.write(merged, approx, task.rows.start)
                    result[task.name].append(shift.value())
            if on_block:
                on_block(index + 1, len(blocks))
    return result


def _expert_streams(family: Family, backbone: nn.Module, tasks: list[EngineTask], encoded: EncodedSamples,
                    store: torch.device) -> list[Stream]:
    """Each task's block-0 inputs under its expert's own embeddings: the backbone's parameters outside the blocks
    take the expert's values for the capture and get the merged ones back after."""
    block_path, blocks = family.blocks(backbone)
    params = {n: p for n, p in backbone.named_parameters() if not n.startswith(block_path + ".")}
    kept = {n: p.detach().to(store, copy=True) for n, p in params.items()}
    streams = []
    try:
        for task in tasks:
            for name, param in params.items():
                param.copy_(task.source.get(name))
            rows = {k: v[task.rows] for k, v in encoded.inputs.items()}
            streams.append(capture_block_inputs(family, backbone, blocks[0], rows).to(store))
    finally:
        for name, param in params.items():
            param.copy_(kept[name])
    return streams
