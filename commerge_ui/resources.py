"""Devices, dtypes and peak-memory measurement."""

from __future__ import annotations

import os

import torch

from .errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(name: str) -> torch.device:
    """'auto' takes the GPU when one is present; 'cuda' without one is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device 'cuda' asked for, but no CUDA GPU is available (use --device cpu or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise InputError(f"unknown device '{name}' (expected auto, cpu or cuda)")
    return torch.device(name)


def pick_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise InputError(f"unknown dtype '{name}' (expected {', '.join(DTYPES)})")
    return DTYPES[name]


def rss_bytes() -> int:
    """Anonymous resident memory: what the process holds itself. Memory-mapped safetensors pages, which the
    kernel can drop and re-read at will, would otherwise count every expert tensor ever read."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


class PeakMemory:
    """Peak memory of a run: allocated GPU memory on CUDA, else the process's anonymous resident memory, sampled."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self) -> None:
        if self.device.type != "cuda":
            self.peak = max(self.peak, rss_bytes())

    def result(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        self.sample()
        return self.peak
