"""Where models come from: a local folder or a Hub id, read lazily from safetensors only."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open

from .errors import InputError

if TYPE_CHECKING:
    from .hosting import Confinement

# Weights, configs and tokenizer files; pickle weights (.bin, .pt, .pth) are never fetched.
HUB_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.json", "*.txt", "*.model", "*.tiktoken", "merges.txt",
                "README.md"]  # the card: its licence goes into the merged model's card
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def resolve_model(ref: str, revision: str | None = None, token: str | bool | None = None,
                  confinement: Confinement | None = None, who: str | None = None) -> Path:
    """A folder holding the model's config and safetensors weights, downloaded from the Hub if needed.

    `token`: a Hub token, False for anonymous calls, None for the process's own (HF_TOKEN or login).
    `confinement`: where a local folder may be (hosted: the demos' models); a Hub id is then never read as a
    local path. `who` names the model in messages (default: `ref`).
    """
    who = who or ref
    if confinement is not None:
        confinement.check_model(ref, who)
    local = confinement is None or confinement.local_model(ref)
    path = Path(ref).expanduser()
    if local and path.exists():
        if not path.is_dir():
            raise InputError(f"{who}: expected a model folder (config.json + *.safetensors), got a file")
        folder = path
    elif not is_repo_id(ref):
        raise InputError(f"{who}: no such folder, and not a Hub model id")
    else:
        folder = _download(ref, revision, token)
    check_model_folder(folder, who)
    return folder


def is_repo_id(ref: str) -> bool:
    """True for what can only be a Hub id ('org/name'), not a path to a folder."""
    return not ref.startswith((".", "/", "~")) and bool(_REPO_ID.match(ref))


def hub_token(token: str | bool | None) -> str | bool | None:
    """What huggingface_hub is given: a token, False (anonymous: never the process's HF_TOKEN) or None."""
    return None if token is None or token == "" else token


def _download(repo_id: str, revision: str | None, token: str | bool | None) -> Path:
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id, revision):
        return Path(snapshot_download(repo_id, revision=revision, token=hub_token(token), allow_patterns=HUB_PATTERNS))


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn the Hub client's exceptions into one clear InputError each (the token never appears in them)."""
    from huggingface_hub.errors import (
        EntryNotFoundError, GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, NotASafetensorsRepoError,
        OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError, SafetensorsParsingError,
    )

    known = [  # most specific first: GatedRepoError is a RepositoryNotFoundError, and so on
        (GatedRepoError, "gated repository; accept its terms on the Hub and give a token"),
        (RepositoryNotFoundError, "no such model on the Hub (or it is private and no valid token was given)"),
        (RevisionNotFoundError, f"revision '{revision}' not found"),
        (LocalEntryNotFoundError, "not in the local cache and the Hub cannot be reached (offline?)"),
        (EntryNotFoundError, "config.json or safetensors weights are missing on the Hub"),
        (OfflineModeIsEnabled, "the Hub is switched off here (HF_HUB_OFFLINE) and the model is not cached"),
        (NotASafetensorsRepoError, "has no safetensors weights (pickle-only repositories are refused: convert one "
                                   "on your machine with `commerge convert`, or use its safetensors conversion's "
                                   "revision, refs/pr/N, where it has one)"),
        (SafetensorsParsingError, "its safetensors header cannot be parsed (corrupt upload?)"),
    ]
    try:
        yield
    except Exception as err:
        message = next((m for kind, m in known if isinstance(err, kind)), None)
        if message is None and isinstance(err, (HfHubHTTPError, OSError)):
            message = f"download failed ({err.__class__.__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})"
        if message is None:
            raise
        raise InputError(f"{repo_id}: {message}") from None


def read_config_file(path: Path, ref: str | None = None) -> dict:
    """A model's config.json as a dict, or an InputError naming the model."""
    name = ref or str(path.parent)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise InputError(f"{name}: config.json is missing or not valid JSON") from None
    if not isinstance(config, dict):
        raise InputError(f"{name}: config.json is not a JSON object")
    return config


PARTIAL_MARKER = ".commerge-partial"  # inside an output folder while it is being written (export.atomic_folder)
_PARTIAL_NAME = re.compile(r"^\..*\.(partial|old)-[0-9a-f]{8}$")


def is_partial(folder: Path) -> bool:
    """An output a merge had not finished writing (it was stopped, or killed while saving)."""
    return (folder / PARTIAL_MARKER).exists() or bool(_PARTIAL_NAME.match(folder.name))


def check_model_folder(folder: Path, ref: str | None = None) -> None:
    """Refuse folders without a config or without safetensors weights (pickle is never loaded), and the
    half-written output of a merge that was stopped."""
    name = ref or str(folder)
    if is_partial(folder):
        raise InputError(f"{name}: an unfinished merge output (the merge was stopped while writing it); not a model")
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        from .adapters import read_adapter

        read_adapter(folder, name)  # a LoRA adapter: the base supplies the rest (adapters.py)
        return
    if not (folder / "config.json").is_file():
        raise InputError(f"{name}: config.json is missing")
    if not any(folder.glob("*.safetensors")):
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise InputError(
                f"{name}: only pickle weights ({', '.join(sorted(pickles)[:3])}), which can run code when loaded, so "
                f"they are refused. Convert them on your machine: `commerge convert {name} --out <new folder>` "
                "(reads them with weights_only, so nothing in them runs); for a Hub repository, its safetensors "
                "conversion may exist as a pull-request revision (refs/pr/N on its Community tab): give it as the "
                "expert's `revision`"
            )
        raise InputError(f"{name}: no *.safetensors weight file")


class SafetensorsWeights:
    """The tensors of one model folder, read by name on demand (memory-mapped, never all at once)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._handles: dict[Path, object] = {}

    @cached_property
    def file_of(self) -> dict[str, Path]:
        index = self.folder / "model.safetensors.index.json"
        try:
            if index.is_file():
                weight_map = json.loads(index.read_text())["weight_map"]
                return {name: self._shard(file) for name, file in weight_map.items()}
            mapping: dict[str, Path] = {}
            for file in sorted(self.folder.glob("*.safetensors")):
                mapping.update({name: file for name in self._open(file).keys()})
            return mapping
        except (SafetensorError, OSError, KeyError, ValueError) as err:
            raise InputError(f"{self.folder}: unreadable safetensors weights ({err})") from None

    def _shard(self, file: object) -> Path:
        """A shard the index names: a file of this folder, never a path that leaves it."""
        if not isinstance(file, str) or not file or "/" in file or "\\" in file or file in (".", ".."):
            raise InputError(f"{self.folder.name}: its model.safetensors.index.json names a shard outside the "
                             "model folder; refused")
        return self.folder / file  # (a Hub snapshot's files are links into its cache: the folder's own doing)

    def _open(self, file: Path):
        if file not in self._handles:
            try:
                self._handles[file] = safe_open(str(file), framework="pt")
            except (SafetensorError, OSError) as err:
                raise InputError(f"{file}: corrupt or truncated safetensors file ({err})") from None
        return self._handles[file]

    def names(self) -> list[str]:
        return list(self.file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self.file_of[name]).get_slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """The stored dtype as safetensors writes it ('F32', 'BF16', 'I8', ...), read from the header."""
        return str(self._open(self.file_of[name]).get_slice(name).get_dtype())

    def get(self, name: str) -> torch.Tensor:
        if name not in self.file_of:
            raise InputError(f"{self.folder}: tensor '{name}' is missing")
        try:
            return self._open(self.file_of[name]).get_tensor(name)
        except (SafetensorError, OSError) as err:
            raise InputError(f"{self.file_of[name]}: cannot read tensor '{name}' ({err})") from None


@dataclass
class ModelSource:
    """A model's backbone tensors on disk, under the names the backbone gives them.

    Files may wrap the backbone ('bert.encoder...': `prefix`) or leave out its outer name ('h.0...' for
    GPT-2's 'transformer.h.0...': `strip`). Tensors a model may omit (a CLIP vision-only expert has no
    projection) come from `fallback`, the base.
    """

    weights: SafetensorsWeights
    prefix: str = ""
    strip: str = ""
    fallback: ModelSource | None = None

    def key(self, name: str) -> str:
        return self.prefix + name.removeprefix(self.strip)

    def has(self, name: str) -> bool:
        return self.key(name) in self.weights.file_of

    def get(self, name: str) -> torch.Tensor:
        if self.fallback is not None and not self.has(name):
            return self.fallback.get(name)
        return self.weights.get(self.key(name))
