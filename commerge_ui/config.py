"""The merge config (docs/cli.md): a typed model, validated before any tensor is touched."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import InputError

FamilyName = Literal["auto", "text-classification", "image-classification", "causal-lm"]


def safe_name(text: str, fallback: str) -> str:
    """`text` as an expert name the config accepts (letters, digits, '_', '-', '.'; other runs become '_'), or
    `fallback` when nothing is left."""
    return re.sub(r"[^\w.\-]+", "_", text.strip()).strip("._") or fallback


class ExpertSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    model: str = Field(min_length=1, description="Hub id or local folder")
    calibration: str | None = None
    evaluation: str | None = None
    labels: list[str] | None = None
    weight: float = Field(1.0, gt=0, description="task importance λ_i in the regression")
    revision: str | None = None
    allow_other_base: bool = Field(False, description="a LoRA adapter trained on another base than this config's "
                                   "may be applied to it (its layer shapes must still fit)")

    @field_validator("name")
    @classmethod
    def _folder_safe(cls, name: str) -> str:
        # The name becomes a folder (heads/<name>) and a report key: no separators, no leading dot.
        if not re.fullmatch(r"\w[\w.\-]*", name):
            raise ValueError(f"'{name}' must be letters, digits, '_', '-' or '.', starting with a letter or digit")
        return name


TARGET_GONE = ("'target' is no longer an option: CoM's two readings are two methods. 'com' regresses the merged "
               "inputs onto the experts' outputs (target: expert_outputs); 'com_chain' onto the experts' weights "
               "(target: expert_weights). Remove 'target' and list the one you want, or both, in 'methods'")


class MergeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    calibration_samples: int = Field(256, ge=1)
    evaluation_samples: int | None = Field(None, ge=1, description="cap per task; all when unset")
    alpha: float = Field(0.9, ge=0.0, le=1.0, description="RegMean off-diagonal shrink")
    task_lambda: float = Field(0.3, alias="lambda", description="task-arithmetic / TIES scale")
    ties_density: float = Field(0.2, gt=0.0, le=1.0, description="TIES: fraction of each task vector kept")
    ties_mean: bool = Field(False, description="TIES: the agreeing entries' mean (the paper's disjoint mean, "
                            "mergekit's normalize) instead of their sum")
    dare_drop: float = Field(0.5, ge=0.0, lt=1.0, description="DARE: fraction of each task vector dropped")
    svd_scale: float = Field(1.0, gt=0.0, description="TSV-M, Iso-C, Iso-CTS: scale α of the merged task vector")
    iso_common_fraction: float = Field(0.8, ge=0.0, le=1.0, description="Iso-CTS: share of the common subspace")
    svd_rank_tol: float = Field(1e-5, ge=0.0, lt=1.0, description="TSV-M, Iso-C, Iso-CTS: singular values below "
                                "this share of the largest are zero (the numerical rank); 0: every one, as the "
                                "reference code")
    max_length: int = Field(128, ge=2)
    seed: int = 0
    batch_size: int = Field(32, ge=1, description="samples per forward when evaluating")
    com_regularization: Literal["shrink", "ridge"] = "shrink"
    ridge: float = Field(0.05, ge=0.0, description="ridge toward the averaged weights, × mean diag")
    ridge_floor: float = Field(1e-4, ge=0.0, description="every activation merge's least ridge toward the "
                               "averaged weights, × mean diag: an input direction with less calibration energy "
                               "than this share of an average channel's is not determined by the samples and "
                               "stays at the average (0: RegMean exactly as published)")
    normalize: Literal["tokens", "trace", "none"] = "tokens"
    bias: Literal["regress", "average"] = "regress"
    gram_dtype: Literal["float32", "float64"] = "float32"
    tokenizer_source: str = Field("base", description="base: the base's vocabulary; rows an expert added are dropped "
                                  "(with a warning naming its tokens)")
    sink_tokens: int | None = Field(None, ge=0, description="each sample's first tokens left out of the statistics "
                                    "and the shift (a causal LM's attention sink carries activations ~500× the "
                                    "others); unset: the family's default (causal LMs 1, encoders 0)")
    merge_batch: int = Field(0, ge=0, description="calibration samples per forward while merging; 0: all at "
                             "once when their captured layer inputs fit merge_memory_gb, else as many as fit")
    merge_memory_gb: float = Field(2.0, gt=0.0, description="budget for the layer inputs captured per block")
    data_free_shift: bool = Field(True, description="measure the data-free methods' shift too (it costs their "
                                  "calibration forwards); off: they merge tensor by tensor, with no shift curve")
    heldout_shift: bool = Field(True, description="measure every block's output shift on the evaluation samples "
                                "too (one more expert and merged forward over them per method): a low shift on "
                                "the calibration samples can be in-sample fit")
    heldout_samples: int = Field(128, ge=0, description="evaluation samples per task the held-out shift is "
                                 "measured on (a seeded subset of those scored; 0: all of them)")
    prompt_templates: list[str] = Field(default_factory=lambda: ["a photo of a {}."], min_length=1,
                                        description="CLIP zero-shot prompts; '{}' is the class name")

    @field_validator("tokenizer_source")
    @classmethod
    def _base_vocabulary(cls, value: str) -> str:
        if value != "base":
            raise ValueError(f"tokenizer_source '{value}' is not supported: 'base' keeps the base's vocabulary and "
                             "drops the tokens experts added (a union of the experts' tokens is not built)")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_target(cls, data: object) -> object:
        if isinstance(data, dict) and "target" in data:
            raise ValueError(TARGET_GONE)
        return data

    @field_validator("prompt_templates")
    @classmethod
    def _has_slot(cls, templates: list[str]) -> list[str]:
        missing = [t for t in templates if "{}" not in t]
        if missing:
            raise ValueError(f"each template needs '{{}}' for the class name: {missing[0]!r}")
        return templates


class MergeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field(min_length=1)
    family: FamilyName = "auto"
    experts: list[ExpertSpec] = Field(min_length=1)
    methods: list[str] = Field(default_factory=lambda: ["com", "regmean", "task_arithmetic", "average"])
    options: MergeOptions = Field(default_factory=MergeOptions)

    @field_validator("experts")
    @classmethod
    def _unique_names(cls, experts: list[ExpertSpec]) -> list[ExpertSpec]:
        names = [e.name for e in experts]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"expert names must be unique; repeated: {', '.join(duplicated)}")
        return experts

    @field_validator("methods")
    @classmethod
    def _some_methods(cls, methods: list[str]) -> list[str]:
        from .methods import METHODS  # the registry is the one list of names

        if not methods:
            raise ValueError("name at least one method")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method '{unknown[0]}'; known: {', '.join(METHODS)}")
        return list(dict.fromkeys(methods))


def parse_config(data: object, root: Path | None = None) -> MergeConfig:
    """Validate a config mapping; relative paths that exist under `root` are made absolute."""
    try:
        config = MergeConfig.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise InputError(f"config field '{where}': {first['msg']}") from None
    if root is not None:
        config = _resolve_paths(config, root)
    return config


def load_config(path: str | Path) -> MergeConfig:
    """Read and validate a YAML config file (ours, or a mergekit recipe: mergekit.py)."""
    return load_config_with_notes(path)[0]


def load_config_with_notes(path: str | Path) -> tuple[MergeConfig, list[str]]:
    """load_config, and the notes a mergekit recipe's import leaves (what is not identical to mergekit's run)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid YAML ({err.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with base, experts, methods and options")
    from .mergekit import from_recipe, is_recipe

    notes: list[str] = []
    if is_recipe(data):
        data, notes = from_recipe(data)
    return parse_config(data, root=path.parent), notes


def _resolve(ref: str | None, root: Path) -> str | None:
    """Relative paths become absolute: always when written './x' or '../x' (never a Hub id), otherwise only
    when they exist under `root` ('org/name' may be either)."""
    if ref is None or Path(ref).is_absolute():
        return ref
    candidate = root / ref
    explicit = ref.startswith(("./", "../"))
    return str(candidate.resolve()) if explicit or candidate.exists() else ref


def _resolve_paths(config: MergeConfig, root: Path) -> MergeConfig:
    experts = [
        e.model_copy(update={
            "model": _resolve(e.model, root),
            "calibration": _resolve(e.calibration, root),
            "evaluation": _resolve(e.evaluation, root),
        })
        for e in config.experts
    ]
    return config.model_copy(update={"base": _resolve(config.base, root), "experts": experts})


def config_to_yaml(config: MergeConfig) -> str:
    """The YAML that reproduces a run; the CLI accepts it unchanged."""
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False)
