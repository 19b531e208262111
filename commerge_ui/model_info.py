"""What a model is, read without loading its weights: architecture, family, size, and whether it fits a base.

Local folders are read from config.json and the safetensors headers; Hub models from config.json and the
safetensors headers fetched by range requests, so a check costs kilobytes, not gigabytes.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .families import guess_family, same_architecture
from .families.base import FULL_CLIP_NEEDED
from .hub import hub_reachable
from .sources import SafetensorsWeights, check_model_folder, hub_errors, hub_token, is_repo_id, read_config_file

if TYPE_CHECKING:
    from .hosting import Confinement

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
    config: dict = field(default_factory=dict)  # config.json

    @property
    def parameters(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def summary(self) -> str:
        arch = ", ".join(self.architectures) or self.model_type
        return f"{arch} · {_count(self.parameters)} parameters · family {self.family}"


def inspect_model(ref: str, revision: str | None = None, token: str | bool | None = None,
                  confinement: Confinement | None = None) -> ModelInfo:
    """Read a model's description from a local folder or from the Hub (headers only). `token` and
    `confinement` as for sources.resolve_model."""
    ref = ref.strip()
    if not ref:
        raise InputError("no model given")
    if confinement is not None:
        confinement.check_model(ref, ref)
    path = Path(ref).expanduser()
    if (confinement is None or confinement.local_model(ref)) and path.exists():
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
                     guess_family(config), shapes, config)


# The config values that fix a model's tensor shapes, under the names the architectures use, in words.
STRUCTURE = [(("hidden_size", "n_embd", "d_model", "dim"), "hidden size"),
             (("num_hidden_layers", "n_layer", "num_layers"), "layers"),
             (("num_attention_heads", "n_head"), "attention heads"),
             (("num_key_value_heads",), "key-value heads"),
             (("intermediate_size", "n_inner", "ffn_dim"), "MLP width"),
             (("vocab_size",), "vocabulary")]


def config_differences(base: dict, expert: dict) -> list[str]:
    """The structural config values that differ, in words ("hidden size 48, the base has 32"); a CLIP expert
    saved as a vision tower is compared with the base's vision_config."""
    if "vision_config" in base and "vision_config" not in expert and expert.get("model_type") == "clip_vision_model":
        return [f"vision tower's {d}" for d in config_differences(base["vision_config"], expert)]
    out = []
    for section in ("text_config", "vision_config"):
        if isinstance(base.get(section), dict) and isinstance(expert.get(section), dict):
            out += [f"{section.split('_')[0]} tower's {d}" for d in config_differences(base[section], expert[section])]
    for keys, words in STRUCTURE:
        key = next((k for k in keys if k in base or k in expert), None)
        if key == "vocab_size" and grown_vocabulary(base, expert):
            continue  # tokens added to the base's vocabulary: merged with the base's (vocab.py)
        if key is not None and base.get(key) != expert.get(key):
            out.append(f"{words} {_value(expert.get(key))}, the base has {_value(base.get(key))}")
    return out


def fit_problems(base: ModelInfo, expert: ModelInfo, limit: int = 3) -> list[str]:
    """Why `expert` cannot be merged into `base`, the cause first: a differing architecture, else the differing
    config values (hidden size, layers, heads, vocabulary), then the first tensors that differ."""
    tensors = compare_to_base(base, expert, limit)
    if not tensors or tensors[0].startswith("architecture") or tensors[0] == FULL_CLIP_NEEDED:
        return tensors
    return config_differences(base.config, expert.config) + tensors


def grown_vocabulary(base: dict, expert: dict) -> tuple[int, int] | None:
    """(base, expert) vocabulary sizes when the expert's is larger (tokens added), else None."""
    b, e = base.get("vocab_size"), expert.get("vocab_size")
    return (b, e) if isinstance(b, int) and isinstance(e, int) and e > b else None


def _value(value: object) -> str:
    return "unset" if value is None else str(value)


def compare_to_base(base: ModelInfo, expert: ModelInfo, limit: int = 3) -> list[str]:
    """Why `expert` cannot be merged into `base` (empty when it can): architecture, then the first tensors."""
    if not same_architecture(expert.model_type, base.model_type):
        return [f"architecture '{expert.model_type}' differs from the base's '{base.model_type}'"]
    if base.family == "image-classification" and base.model_type != "clip":
        return [FULL_CLIP_NEEDED]
    base_names, expert_names = _align(base.shapes, expert.shapes)
    skipped = HEAD_NAMES + UNMERGED_PARTS.get(base.family, ())
    grown = grown_vocabulary(base.config, expert.config)
    problems = []
    for name, full in base_names.items():
        if full.split(".", 1)[0] in skipped or name.split(".", 1)[0] in skipped or name.endswith(BUFFER_SUFFIXES):
            continue
        if name not in expert_names:
            problems.append(f"'{name}' is missing")
        elif grown and expert.shapes[expert_names[name]] == (grown[1], *base.shapes[full][1:]) \
                and base.shapes[full][:1] == (grown[0],):
            continue  # a vocabulary table with the expert's added rows
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
        config_file = hf_hub_download(repo_id, "config.json", revision=revision, token=hub_token(token))
        metadata = HfApi().get_safetensors_metadata(repo_id, revision=revision, token=hub_token(token))
    shapes = {name: tuple(info.shape) for file in metadata.files_metadata.values()
              for name, info in file.tensors.items()}
    return read_config_file(Path(config_file), repo_id), shapes


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
