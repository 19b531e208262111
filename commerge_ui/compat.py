"""Checks that every expert can be merged with the base, before any heavy work."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import InputError
from .families.base import Family, same_architecture
from .sources import ModelSource, SafetensorsWeights, read_config_file


def model_type(folder: Path) -> str:
    return read_config_file(folder / "config.json").get("model_type", "?")


def find_source(weights: SafetensorsWeights, names: list[str], wrapper: str, who: str) -> ModelSource:
    """How a folder stores the backbone's tensors: as named, under the model's wrapper ('bert.'), or without
    the backbone's own outer name (GPT-2 files that say 'h.0' for 'transformer.h.0'); else a clear refusal."""
    candidates = [ModelSource(weights), ModelSource(weights, prefix=wrapper)]
    if "." in names[0]:
        candidates.append(ModelSource(weights, strip=names[0].split(".", 1)[0] + "."))
    for source in candidates:
        if source.has(names[0]):
            return source
    raise InputError(f"{who}: has no tensor '{names[0]}' (nor under '{wrapper}'); "
                     "is it the same architecture as the base?")


def check_expert(who: str, folder: Path, source: ModelSource, expected: dict[str, tuple[int, ...]],
                 base_folder: Path, family: Family) -> None:
    """Refuse an expert whose architecture or tensor shapes differ from the base's; name the first mismatches."""
    if not same_architecture(model_type(folder), model_type(base_folder)):
        raise InputError(f"{who}: architecture '{model_type(folder)}' differs from the base's '{model_type(base_folder)}'")
    problems = []
    for name, shape in expected.items():
        if not source.has(name):
            if not family.may_omit(name):
                problems.append(f"'{name}' is missing")
        elif source.weights.shape(source.key(name)) != shape:
            problems.append(f"'{name}' has shape {list(source.weights.shape(source.key(name)))}, base has {list(shape)}")
        if len(problems) == 3:
            break
    if problems:
        from .model_info import fit_problems, inspect_model  # the page's check, for the same words

        described = fit_problems(inspect_model(str(base_folder)), inspect_model(str(folder)))
        raise InputError(f"{who}: does not match the base: {'; '.join(described or problems)}")


def is_unchanged(expert: ModelSource, base: ModelSource, names: list[str]) -> bool:
    """True when the expert's tensors equal the base's (a zero task vector), judged on `names`."""
    return all(torch.equal(expert.get(n), base.get(n)) for n in names)
