"""`commerge convert FOLDER_OR_ID --out DIR`: a pickle-only checkpoint (`pytorch_model*.bin`, `adapter_model.bin`)
rewritten as safetensors, explicitly and locally (never by the app, never hosted, never automatically).

Each pickle file is read with `torch.load(weights_only=True)`, which unpickles tensors and plain containers only
and refuses anything else, so no code in the file runs; a file that needs more is refused, naming it. The
other files (config, tokenizer) are copied; the output folder is written whole or not at all.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import InputError
from .export import atomic_folder
from .sources import hub_errors, hub_token, is_repo_id

PICKLES = re.compile(r"^(pytorch_model(-\d+-of-\d+)?|adapter_model)\.bin$")
COPIED = (".json", ".txt", ".model", ".tiktoken", ".md")


@dataclass
class Converted:
    files: list[str]
    tensors: int
    bytes: int


def source_folder(ref: str, revision: str | None = None, token: str | bool | None = None) -> Path:
    """The checkpoint's folder: a local one, or a Hub repository's pickle files and configs downloaded."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path
    if not is_repo_id(ref):
        raise InputError(f"{ref}: no such folder, and not a Hub model id")
    from huggingface_hub import snapshot_download

    with hub_errors(ref, revision):
        return Path(snapshot_download(ref, revision=revision, token=hub_token(token),
                                      allow_patterns=["*.bin", "*.json", "*.txt", "*.model", "*.tiktoken"]))


def convert(ref: str, out: Path, force: bool = False, revision: str | None = None,
            token: str | bool | None = None) -> Converted:
    """Rewrite the pickle weights of `ref` as safetensors into `out`, with its other files beside them."""
    folder = source_folder(ref, revision, token)
    pickles = sorted(p for p in folder.iterdir() if PICKLES.match(p.name))
    if not pickles:
        found = ", ".join(sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))[:3])
        raise InputError(f"{ref}: no pytorch_model*.bin or adapter_model.bin to convert"
                         + (f" (found {found}: only the Hugging Face layout is converted)" if found else ""))
    if any(folder.glob("*.safetensors")):
        raise InputError(f"{ref}: it already has safetensors weights; use them as they are")
    tensors, size, weight_map = 0, 0, {}
    with atomic_folder(out, force=force) as partial:
        for path in folder.iterdir():
            if path.is_file() and path.suffix in COPIED and not path.name.endswith(".bin.index.json"):
                shutil.copy(path, partial / path.name)
        for path in pickles:
            state = _load(path)
            target = path.name.replace("pytorch_model", "model").replace("adapter_model", "adapter_model")
            target = target.removesuffix(".bin") + ".safetensors"
            save_file(state, str(partial / target), metadata={"format": "pt"})
            weight_map.update({name: target for name in state})
            tensors += len(state)
            size += sum(t.numel() * t.element_size() for t in state.values())
        if len(pickles) > 1:
            (partial / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map}, indent=2))
    return Converted([p.name for p in pickles], tensors, size)


def _load(path: Path) -> dict[str, torch.Tensor]:
    """One pickle file's tensors, unpickled with weights_only (no code runs); shared storage is split, as
    safetensors needs."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else err.__class__.__name__
        raise InputError(f"{path.name}: refused: it needs more than tensors to load (weights_only: {first}); "
                         "nothing in it was run") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise InputError(f"{path.name}: not a mapping of tensor names to tensors")
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():  # tied weights share storage; safetensors stores each once
        key = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone().contiguous() if key in seen else tensor.contiguous()
        seen.add(key)
    return out
