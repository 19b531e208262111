"""The language-model demo: SmolLM2-135M-Instruct and five experts fine-tuned from it on real text domains.

    python -m commerge_ui.demo lm [--steps 50] [--seed 0] [--device auto] [--blocks N] [--out DIR]

Built on request, never at start (the app's demo chooser, or the command above): SmolLM2 is converted once
(smollm2.py), then each expert is a full fine-tune of every decoder weight (the tied embedding / LM-head table
stays frozen) on one domain's training texts, seeded per domain; the five experts and the base land in
assets/demo/lm-models/ (ignored by git). The domains are the text demo's own splits (tasks.py), so the
calibration texts and the held-out evaluation texts are the committed files in assets/demo/data/: the experts
never saw the evaluation texts. examples/smollm2-domains.yaml merges them, scored by perplexity per domain.

| expert    | text                                             |
|-----------|--------------------------------------------------|
| tweets    | tweets (VADER)                                   |
| movies    | movie-review snippets (VADER)                    |
| nyt       | New York Times editorial snippets (VADER)        |
| dialogue  | English chatbot dialogue lines (ChatterBot)      |
| language  | chatbot dialogue lines in six other languages    |

Cost: 5 × 50 steps of 4 texts × 48 tokens, 1–2 min per expert on 2 quiet CPU cores (3–6 shared), seconds on a GPU.
`blocks` keeps only the first N decoder blocks (a smaller, worse LM: the tests' smoke version).
"""

from __future__ import annotations

import argparse
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import InputError
from .build import DEMO_DIR, ROOT
from .smollm2 import STAMP as SMOLLM2, ensure_smollm2
from .tasks import TASKS, load_split

LM_CONFIG = ROOT / "examples" / "smollm2-domains.yaml"
LM_MODELS = DEMO_DIR / "lm-models"
DOMAINS = ["tweets", "movies", "nyt", "dialogue", "language"]
RECIPE = {"seed": 0, "steps": 50, "batch_size": 4, "lr": 1e-4, "max_length": 48, "frozen": "embeddings"}
_BUILD_LOCK = threading.Lock()


def _stamp(recipe: dict, blocks: int | None) -> dict:
    return {"version": 1, "base": SMOLLM2, "recipe": recipe, "blocks": blocks, "domains": DOMAINS}


def is_lm_built(root: Path = LM_MODELS, recipe: dict = RECIPE, blocks: int | None = None) -> bool:
    stamp = root / "stamp.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == _stamp(recipe, blocks)


def ensure_lm_demo(root: Path = LM_MODELS, recipe: dict = RECIPE, blocks: int | None = None,
                   device: str = "auto", log: Callable[[str], None] = print) -> Path:
    """The built LM demo's folder (base/ and one folder per domain), fine-tuning what is missing (one build at
    a time). Each expert is written whole or not at all, so an interrupted build resumes at the next one."""
    with _BUILD_LOCK:
        if not is_lm_built(root, recipe, blocks):
            build_lm_demo(root, recipe, blocks, device, log)
    return root


def build_lm_demo(root: Path = LM_MODELS, recipe: dict = RECIPE, blocks: int | None = None,
                  device: str = "auto", log: Callable[[str], None] = print) -> None:
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    stamp = _stamp(recipe, blocks)
    prepare_folder(root, stamp)
    base = _base_folder(root, blocks, log)
    tokenizer = AutoTokenizer.from_pretrained(base)
    began = time.perf_counter()
    for k, name in enumerate(DOMAINS):
        target = root / name
        if (target / "config.json").is_file():
            log(f"LM demo: expert '{name}' already built")
            continue
        texts = [s.text for s in load_split(TASKS[name], log).train]
        # Seeds that no other build seed shares (seed 0 gives 0..4, seed 1 gives 5..9, ...)
        model = fine_tune_lm(base, texts, recipe["seed"] * len(DOMAINS) + k, recipe, device,
                             lambda step, loss: log(f"LM demo: fine-tuning expert {k + 1}/{len(DOMAINS)} '{name}' "
                                                    f"on {device}: step {step}/{recipe['steps']}, loss {loss:.2f}, "
                                                    f"{time.perf_counter() - began:.0f}s"))
        partial = root / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)
    (root / "stamp.json").write_text(json.dumps(stamp))
    log(f"LM demo: {len(DOMAINS)} experts ready in {time.perf_counter() - began:.0f}s ({root})")


def prepare_folder(root: Path, stamp: dict) -> None:
    """Keep what an earlier build with the same recipe left (it resumes), clear one with another recipe, refuse
    a folder that is not a build; then record the recipe before any expert is written."""
    if root.is_dir() and any(root.iterdir()):
        recorded = next((json.loads(f.read_text()) for f in (root / "recipe.json", root / "stamp.json") if f.is_file()),
                        None)
        if recorded is None:
            raise InputError(f"{root}: not empty and not an LM demo build; choose another folder")
        if recorded != stamp:
            shutil.rmtree(root)  # built, or begun, with another recipe: nothing of it is reused
    root.mkdir(parents=True, exist_ok=True)
    (root / "recipe.json").write_text(json.dumps(stamp))


def _base_folder(root: Path, blocks: int | None, log: Callable[[str], None]) -> Path:
    """root/base: the converted SmolLM2 (a link to the cached folder), or its first `blocks` decoder blocks."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, base = ensure_smollm2(log=log), root / "base"
    if (base / "config.json").is_file():
        return base
    if base.is_symlink():  # a link into a cache that was cleared since
        base.unlink()
    if blocks is None:
        try:
            base.symlink_to(source, target_is_directory=True)
        except OSError:  # no links here: a copy (513 MiB)
            shutil.copytree(source, base)
        return base
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if not 1 <= blocks <= len(model.model.layers):
        raise InputError(f"blocks must be between 1 and {len(model.model.layers)}")
    model.model.layers = model.model.layers[:blocks]
    model.config.num_hidden_layers = blocks
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:blocks]
    partial = root / ".base.partial"
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    AutoTokenizer.from_pretrained(source).save_pretrained(partial)
    partial.rename(base)
    return base


def fine_tune_lm(base: Path, texts: list[str], seed: int, recipe: dict = RECIPE, device: str = "cpu",
                 on_step: Callable[[int, float], None] | None = None):
    """Next-token fine-tuning of every decoder weight on `texts` (embeddings frozen); the model, on CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not texts:
        raise InputError("no training texts")
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    model.get_input_embeddings().weight.requires_grad_(False)  # tied to the LM head: both stay the base's
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=recipe["lr"],
                                  weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(1, recipe["steps"] + 1):
        rows = torch.randint(len(texts), (recipe["batch_size"],), generator=generator).tolist()
        batch = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=recipe["max_length"],
                          return_tensors="pt").to(device)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels, use_cache=False).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if on_step is not None and (step % 10 == 0 or step == recipe["steps"]):
            on_step(step, loss.item())
    return model.to("cpu").eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m commerge_ui.demo lm", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=RECIPE["steps"])
    parser.add_argument("--seed", type=int, default=RECIPE["seed"],
                        help="the experts' training seed (batch draws and order); a study's experts per seed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--blocks", type=int, default=None, help="keep only the first N decoder blocks")
    parser.add_argument("--out", type=Path, default=LM_MODELS)
    args = parser.parse_args(argv)
    recipe = {**RECIPE, "steps": args.steps, "seed": args.seed}
    changed = [f"--{k} {v}" for k, v in (("seed", args.seed), ("steps", args.steps)) if v != RECIPE[k]]
    changed += [f"--blocks {args.blocks}"] if args.blocks is not None else []
    into_example = args.out.resolve() == LM_MODELS.resolve()
    if changed and into_example:
        # A build with another recipe replaces the folder's experts: keep the example config's own
        parser.error(f"{' '.join(changed)} needs --out DIR: {LM_MODELS} holds the example config's experts "
                     f"(seed {RECIPE['seed']}, {RECIPE['steps']} steps, every block)")
    ensure_lm_demo(args.out, recipe, args.blocks, args.device)
    if into_example:  # only the example's own recipe gets this far
        print(f"merge them: commerge merge {LM_CONFIG}")
