"""Model families and how the right one is picked for a base model."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..sources import read_config_file
from .base import CLIP_TYPES, EncodedSamples, Family, same_architecture
from .causal_lm import CausalLM
from .image_classification import ImageClassification
from .text_classification import TextClassification

ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "distilbert", "deberta", "deberta-v2", "electra", "mpnet",
                 "camembert", "ernie", "modernbert"}


def detect_family(folder: Path, requested: str = "auto", templates: list[str] | None = None) -> Family:
    """The family named in the config, or the one the model's config.json implies.

    `templates` are CLIP's prompt templates for zero-shot heads ("a photo of a {}.").
    """
    name = guess_family(read_config_file(folder / "config.json")) if requested == "auto" else requested
    if name == "text-classification":
        return TextClassification()
    if name == "causal-lm":
        return CausalLM()
    if name == "image-classification":
        return ImageClassification(folder, templates)
    raise InputError(f"{folder}: cannot tell the model family; set 'family' in the config")


def guess_family(config: dict) -> str:
    """The family a model's config.json implies, or 'unknown'."""
    model_type = config.get("model_type", "")
    architectures = " ".join(config.get("architectures") or [])
    if model_type in CLIP_TYPES:
        return "image-classification"
    if "CausalLM" in architectures or "LMHead" in architectures:
        return "causal-lm"
    if model_type in ENCODER_TYPES:
        return "text-classification"
    return "unknown"


__all__ = ["EncodedSamples", "Family", "detect_family", "guess_family", "same_architecture"]
