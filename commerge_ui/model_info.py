"""What a model is, read without loading its weights: architecture, family, size, and whether it fits a base.

Local folders are read from config.json and the safetensors headers; Hub models from config.json and the
safetensors headers fetched by range requests, so a check costs kilobytes, not gigabytes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError
from .families import guess_family, same_architecture
from .families.base import FULL_CLIP_NEEDED
from .hub import hub_reachable
from .sources import SafetensorsWeights, check_model_folder, hub_errors, is_repo_id, read_config_file

# Tensors that belong to a task head or a pooler: they may differ between experts and are not merged.
HEAD_NAMES = ("classifier", "pre_classifier", "score", "lm_head", "cls", "pooler", "qa_outputs",
              "logit_scale", "text_projection", "visual_projection")
# Buffers some checkpoints store and others rebuild at load time.
BUFFER_SUFFIXES = ("position_ids", "num_batches_tracked", "rotary_emb.inv_freq")
# Parts of the base that experts may lack because they are not merged (CLIP experts are vision towers).
UNMERGED_PARTS = {"image-classification": ("text_model",)}


@dataclass
class ModelInfo:
    ref: str
    model_type: str
    architectures: list[str]
    family: str
    shapes: dict[str, tuple[int, ...]]

    @property
    def parameters(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def summary(self) -> str:
        arch = ", ".join(self.architectures) or self.model_type
        return f"{arch} · {_count(self.parameters)} parameters · family {self.family}"


def inspect_model(ref: str, revision: str | None = None, token: str | None = None) -> ModelInfo:
    """Read a model's description from a local folder or from the Hub (headers only)."""
    ref = ref.strip()
    if not ref:
        raise InputError("no model given")
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{ref}: expected a model folder (config.json + *.safetensors), got a file")
        check_model_folder(path, ref)
        config = read_config_file(path / "config.json", ref)
        weights = SafetensorsWeights(path)
        shapes = {name: weights.shape(name) for name in weights.names()}
    elif is_repo_id(ref):
        config, shapes = _hub_headers(ref, revision, token)
    else:
        raise InputError(f"{ref}: no such folder, and not a Hub model id")
    return ModelInfo(ref, config.get("model_type", "?"), list(config.get("architectures") or []),
                     guess_family(config), shapes)


def compare_to_base(base: ModelInfo, expert: ModelInfo, limit: int = 3) -> list[str]:
    """Why `expert` cannot be merged into `base` (empty when it can): architecture, then the first tensors."""
    if not same_architecture(expert.model_type, base.model_type):
        return [f"architecture '{expert.model_type}' differs from the base's '{base.model_type}'"]
    if base.family == "image-classification" and base.model_type != "clip":
        return [FULL_CLIP_NEEDED]
    base_names, expert_names = _align(base.shapes, expert.shapes)
    skipped = HEAD_NAMES + UNMERGED_PARTS.get(base.family, ())
    problems = []
    for name, full in base_names.items():
        if full.split(".", 1)[0] in skipped or name.split(".", 1)[0] in skipped or name.endswith(BUFFER_SUFFIXES):
            continue
        if name not in expert_names:
            problems.append(f"'{name}' is missing")
        elif expert.shapes[expert_names[name]] != base.shapes[full]:
            problems.append(f"'{name}' has shape {list(expert.shapes[expert_names[name]])}, "
                            f"base has {list(base.shapes[full])}")
        if len(problems) == limit:
            break
    return problems


def _align(base: dict[str, tuple[int, ...]], expert: dict[str, tuple[int, ...]]):
    """Both models' tensor names without the wrapper prefix (e.g. 'bert.'), chosen to make the most names meet."""
    best: tuple[int, dict[str, str], dict[str, str]] = (-1, {}, {})
    for base_prefix in _prefixes(base):
        stripped_base = _strip(base, base_prefix)
        for expert_prefix in _prefixes(expert):
            stripped_expert = _strip(expert, expert_prefix)
            common = len(stripped_base.keys() & stripped_expert.keys())
            if common > best[0]:
                best = (common, stripped_base, stripped_expert)
    return best[1], best[2]


def _prefixes(shapes: dict[str, tuple[int, ...]]) -> list[str]:
    firsts = Counter(name.split(".", 1)[0] for name in shapes if "." in name)
    return [""] + [f"{first}." for first, count in firsts.items() if count >= len(shapes) / 2]


def _strip(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, str]:
    return {name[len(prefix):]: name for name in shapes if name.startswith(prefix)}


def _hub_headers(repo_id: str, revision: str | None, token: str | None):
    from huggingface_hub import HfApi, constants, hf_hub_download

    if not constants.HF_HUB_OFFLINE and not hub_reachable(constants.ENDPOINT):
        raise InputError(f"{repo_id}: the Hub cannot be reached (offline?); local folders still work")
    with hub_errors(repo_id, revision):
        config_file = hf_hub_download(repo_id, "config.json", revision=revision, token=token or None)
        metadata = HfApi().get_safetensors_metadata(repo_id, revision=revision, token=token or None)
    shapes = {name: tuple(info.shape) for file in metadata.files_metadata.values()
              for name, info in file.tensors.items()}
    return read_config_file(Path(config_file), repo_id), shapes


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
