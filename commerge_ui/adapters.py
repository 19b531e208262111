"""LoRA adapters as experts: an expert published as `adapter_config.json` + `adapter_model.safetensors` (PEFT's
layout) is the base plus scale · B A on its target layers, and plus its `modules_to_save` (a classifier head).

The engine reads an adapter expert through `AdapterWeights`, which has the same interface as a folder's
safetensors: each tensor is put together when it is asked for (the base's tensor plus that layer's two factors),
so a merge holds one block of it at a time, never the whole model. Scoring an expert on its own needs a model
that transformers can load: `AdapterWeights.folder` writes one (the base's config and tokenizer, the tensors
put together shard by shard) into a cache the first time it is asked for, keyed by the adapter's and the
base's files.

Supported: standard LoRA and rsLoRA scaling (α/√r), `fan_in_fan_out` layers (GPT-2's Conv1D), and
`modules_to_save`. Refused by name: DoRA, per-module rank or α patterns, LoRA biases, and pickle adapters.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import InputError
from .sources import SafetensorsWeights, read_config_file

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
SHARD_BYTES = 1 << 30


def is_adapter(folder: Path) -> bool:
    """A PEFT adapter's folder: its config, and no model config of its own."""
    return (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file()


@dataclass(frozen=True)
class AdapterSpec:
    folder: Path
    base: str  # base_model_name_or_path, as the adapter recorded it
    rank: int
    alpha: float
    rslora: bool
    fan_in_fan_out: bool
    targets: tuple[str, ...]
    modules_to_save: tuple[str, ...]

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank)

    def summary(self) -> str:
        kind = "rsLoRA" if self.rslora else "LoRA"
        saved = f" + {', '.join(self.modules_to_save)}" if self.modules_to_save else ""
        return f"{kind} r={self.rank} on {'/'.join(self.targets)}{saved} of {self.base}"


def read_adapter(folder: Path, who: str) -> AdapterSpec:
    """The adapter's settings, or an InputError naming what is not supported."""
    config = read_config_file(folder / ADAPTER_CONFIG, who)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        pickled = [p.name for p in folder.glob("adapter_model.*") if p.suffix in (".bin", ".pt", ".pth")]
        raise InputError(f"{who}: {'only a pickle adapter (' + pickled[0] + ')' if pickled else 'no ' + ADAPTER_WEIGHTS}"
                         "; an adapter is read from safetensors only (pickle files can run code when loaded)")
    stored = [k[len(PREFIX):] for k in SafetensorsWeights(folder).names() if k.startswith(PREFIX) and ".lora_" not in k]
    return spec_of(config, folder, who, stored)


def spec_of(config: dict, folder: Path, who: str, stored: list[str] | None = None) -> AdapterSpec:
    """An adapter_config.json's settings; `stored`, the names of the full tensors its file holds, keeps only the
    modules it really saves (None: as the config lists them)."""
    if config.get("peft_type", "LORA") != "LORA":
        raise InputError(f"{who}: a {config.get('peft_type')} adapter; only LoRA adapters can be merged here")
    if config.get("use_dora"):
        raise InputError(f"{who}: a DoRA adapter (use_dora); DoRA's magnitude vectors are not supported, only LoRA")
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise InputError(f"{who}: per-module ranks or scales ({key}) are not supported")
    if config.get("bias", "none") != "none" or config.get("lora_bias"):
        raise InputError(f"{who}: an adapter that trains biases (bias: {config.get('bias')}) is not supported")
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    saved = tuple(m for m in dict.fromkeys(config.get("modules_to_save") or [])
                  if stored is None or any(k.startswith(f"{m}.") or f".{m}." in k for k in stored))
    return AdapterSpec(folder, str(config.get("base_model_name_or_path") or ""), int(config["r"]),
                       float(config.get("lora_alpha", config["r"])), bool(config.get("use_rslora")),
                       bool(config.get("fan_in_fan_out")), tuple(sorted(set(targets))), saved)


def same_base(recorded: str, base: str) -> bool:
    """Whether the base the adapter recorded is the chosen one: the same reference, or the same final name (a
    local copy of a Hub model keeps it)."""
    def last(ref: str) -> str:
        return ref.rstrip("/").rsplit("/", 1)[-1].lower()

    return bool(recorded) and (recorded.rstrip("/") == base.rstrip("/") or last(recorded) == last(base))


class AdapterWeights:
    """An adapter expert's tensors under the base's names, each put together on demand (SafetensorsWeights'
    interface): base + scaling · B A for a LoRA layer, the adapter's own tensor for a module it saves."""

    def __init__(self, base: SafetensorsWeights, spec: AdapterSpec, who: str) -> None:
        self.base, self.spec, self.who = base, spec, who
        self.factors = SafetensorsWeights(spec.folder)
        stored = [n for n in self.factors.names() if n.startswith(PREFIX)]
        pairs = {n[len(PREFIX):-len(".lora_A.weight")] for n in stored if n.endswith(".lora_A.weight")}
        self.lora: dict[str, tuple[str, str]] = {}
        for module in pairs:
            name = self._base_name(f"{module}.weight")
            if name is None:
                raise InputError(f"{who}: its layer '{module}' has no weight in the base; is it an adapter of this base?")
            a, b = f"{PREFIX}{module}.lora_A.weight", f"{PREFIX}{module}.lora_B.weight"
            out_dim, in_dim = self.base.shape(name)[::-1] if spec.fan_in_fan_out else self.base.shape(name)
            if self.factors.shape(a)[1] != in_dim or self.factors.shape(b)[0] != out_dim:
                raise InputError(f"{who}: the factors of '{module}' do not fit the base's {list(self.base.shape(name))} "
                                 "weight; is it an adapter of this base?")
            self.lora[name] = (a, b)
        self.saved = {self._base_name(n[len(PREFIX):]) or n[len(PREFIX):]: n for n in stored
                      if ".lora_" not in n}

    def _base_name(self, name: str) -> str | None:
        """The base's tensor for a name in the adapter's (the full model's) naming: equal, or one is the other
        under a wrapper ('bert.encoder…' for 'encoder…')."""
        names = self.base.file_of
        if name in names:
            return name
        return next((n for n in names if name.endswith(f".{n}") or n.endswith(f".{name}")), None)

    @cached_property
    def file_of(self) -> dict[str, Path]:
        return {**self.base.file_of, **{name: self.spec.folder / ADAPTER_WEIGHTS for name in self.saved}}

    def names(self) -> list[str]:
        return list(self.file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.factors.shape(self.saved[name]) if name in self.saved else self.base.shape(name)

    def dtype(self, name: str) -> str:
        return self.factors.dtype(self.saved[name]) if name in self.saved else self.base.dtype(name)

    def get(self, name: str) -> torch.Tensor:
        if name in self.saved:
            return self.factors.get(self.saved[name])
        tensor = self.base.get(name)
        if name not in self.lora:
            return tensor
        a, b = (self.factors.get(key).float() for key in self.lora[name])
        delta = (b @ a) * self.spec.scaling
        return (tensor.float() + (delta.T if self.spec.fan_in_fan_out else delta)).to(tensor.dtype)

    @cached_property
    def folder(self) -> Path:
        """A loadable model of this expert (for scoring it and for its head), written once into the cache."""
        return materialize(self)


def cache_root() -> Path:
    return Path(os.environ.get("COMMERGE_CACHE", Path.home() / ".cache" / "commerge_ui")) / "adapters"


def _fingerprint(folder: Path) -> str:
    """score_cache's folder fingerprint (files' names, sizes, modification times), as a short hash."""
    from .score_cache import folder_fingerprint

    return hashlib.sha256(repr(folder_fingerprint(folder)).encode()).hexdigest()[:16]


def materialize(weights: AdapterWeights) -> Path:
    """The expert as a model folder (the base's config and tokenizer files, the tensors put together, sharded):
    once per adapter and base, written whole or not at all."""
    base_folder = weights.base.folder
    target = cache_root() / f"{_fingerprint(weights.spec.folder)}-{_fingerprint(base_folder)}"
    if (target / "model.safetensors.index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        for path in base_folder.iterdir():
            if path.is_file() and path.suffix in (".json", ".txt", ".model") and path.name != "model.safetensors.index.json":
                shutil.copy(path, partial / path.name)
        config = json.loads((partial / "config.json").read_text())
        head = next((n for n in weights.saved if n.endswith(("classifier.weight", "score.weight"))), None)
        if head is not None:  # a classification adapter's head: its label count
            labels = weights.shape(head)[0]
            config.update(num_labels=labels, id2label={str(i): f"LABEL_{i}" for i in range(labels)},
                          label2id={f"LABEL_{i}": i for i in range(labels)})
        (partial / "config.json").write_text(json.dumps(config, indent=2))
        weight_map, shard, size, count = {}, {}, 0, 0
        names = weights.names()
        for index, name in enumerate(names):
            tensor = weights.get(name).contiguous()
            shard[name], size = tensor, size + tensor.numel() * tensor.element_size()
            if size >= SHARD_BYTES or index == len(names) - 1:
                count += 1
                file = f"model-{count:05d}.safetensors"
                save_file(shard, str(partial / file), metadata={"format": "pt"})
                weight_map.update({n: file for n in shard})
                shard, size = {}, 0
        (partial / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target
