"""Where a run keeps its model and streams (#15): everything on the device, or, offloaded, the merged model's
blocks and the engine's streams on the host, with only the block at work (and its micro-batch) on the device.

Offloaded, the backbone's blocks stay in host memory; what sits outside them (embeddings, final norm, LM head)
is on the device. The engine brings one block to the device while it merges it (`on_device`), and streams
micro-batches of the host-held hidden states through it; scoring brings each block for its own forward
(`blocks_streamed`), as accelerate's CPU offload does, so no whole model is ever on the device twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from .errors import InputError

HOST = torch.device("cpu")
OffloadMode = Literal["auto", "on", "off"]
AUTO_SHARE = 0.5  # auto: offload when the model's weights take more than this share of the GPU's memory


@dataclass(frozen=True)
class Placement:
    """The device the forwards and solves run on, and whether blocks and streams live on the host."""

    device: torch.device
    offload: bool = False

    @property
    def store(self) -> torch.device:
        """Where the blocks and the streams are kept between uses."""
        return HOST if self.offload else self.device


def check_mode(mode: str) -> None:
    if mode not in get_args(OffloadMode):
        raise InputError(f"unknown offload '{mode}' (expected {', '.join(get_args(OffloadMode))})")


def pick_placement(device: torch.device, mode: str, model_bytes: int) -> Placement:
    """'on' and 'off' as asked; 'auto' offloads on a GPU whose memory the model's weights would more than
    half fill (the merge's statistics, the experts' blocks and the scoring need the rest). On a CPU the
    host is the device, so there is nothing to offload."""
    check_mode(mode)
    if device.type != "cuda":
        return Placement(device, False)
    if mode == "auto":
        total = torch.cuda.get_device_properties(device).total_memory
        return Placement(device, model_bytes > AUTO_SHARE * total)
    return Placement(device, mode == "on")


def place_backbone(backbone: nn.Module, blocks: nn.ModuleList, placement: Placement) -> None:
    """Move the backbone where the placement keeps it: wholly on the device, or its blocks on the host and
    the rest on the device."""
    if not placement.offload:
        backbone.to(placement.device)
        return
    blocks.to(HOST)
    inside = {id(t) for t in [*blocks.parameters(), *blocks.buffers()]}
    with torch.no_grad():
        for tensor in [*backbone.parameters(), *backbone.buffers()]:
            if id(tensor) not in inside:  # never the whole model on the device, not even for a moment
                tensor.data = tensor.data.to(placement.device)


@contextmanager
def on_device(block: nn.Module, placement: Placement) -> Iterator[nn.Module]:
    """The block on the device for the duration (the engine merges it there), back on the host after.
    Parameters keep their identity: `.to()` moves their data in place."""
    if placement.offload:
        block.to(placement.device)
    try:
        yield block
    finally:
        if placement.offload:
            block.to(HOST)


@contextmanager
def blocks_streamed(blocks: nn.ModuleList, placement: Placement) -> Iterator[None]:
    """Forwards of the whole model bring each block to the device just before it runs and send it back
    just after: device memory holds one block, not the model. Nothing changes when not offloaded."""
    if not placement.offload:
        yield
        return

    def bring(module: nn.Module, args: tuple) -> None:
        module.to(placement.device)

    def send_back(module: nn.Module, args: tuple, output: object) -> None:
        module.to(HOST)

    handles = [h for block in blocks
               for h in (block.register_forward_pre_hook(bring), block.register_forward_hook(send_back))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
