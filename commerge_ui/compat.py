"""Checks that every expert can be merged with the base, before any heavy work."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import InputError
from .sources import SafetensorsWeights, read_config_file


def model_type(folder: Path) -> str:
    return read_config_file(folder / "config.json").get("model_type", "?")


def find_prefix(weights: SafetensorsWeights, names: list[str], candidates: list[str], who: str) -> str:
    """The prefix under which a folder stores the backbone tensors, or a clear refusal."""
    for prefix in candidates:
        if prefix + names[0] in weights.file_of:
            return prefix
    raise InputError(f"{who}: has no tensor '{names[0]}' (tried prefixes {', '.join(repr(p) for p in candidates)}); "
                     "is it the same architecture as the base?")


def check_expert(who: str, folder: Path, weights: SafetensorsWeights, prefix: str,
                 expected: dict[str, tuple[int, ...]], base_folder: Path) -> None:
    """Refuse an expert whose architecture or tensor shapes differ from the base's; name the first mismatches."""
    if model_type(folder) != model_type(base_folder):
        raise InputError(f"{who}: architecture '{model_type(folder)}' differs from the base's '{model_type(base_folder)}'")
    problems = []
    for name, shape in expected.items():
        full = prefix + name
        if full not in weights.file_of:
            problems.append(f"'{name}' is missing")
        elif weights.shape(full) != shape:
            problems.append(f"'{name}' has shape {list(weights.shape(full))}, base has {list(shape)}")
        if len(problems) == 3:
            break
    if problems:
        raise InputError(f"{who}: does not match the base: {'; '.join(problems)}")


def is_unchanged(weights: SafetensorsWeights, prefix: str, base: SafetensorsWeights, base_prefix: str,
                 names: list[str]) -> bool:
    """True when the expert's tensors equal the base's (a zero task vector), judged on `names`."""
    return all(torch.equal(weights.get(prefix + n), base.get(base_prefix + n)) for n in names)
