"""The app's form as plain functions: checking models and sample files, and turning the form into a config.

Every function returns what the page shows (a message, preview rows) or raises InputError; none needs Gradio.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from ..config import MergeConfig, load_config, parse_config
from ..demo import demo_of
from ..errors import InputError
from ..model_info import ModelInfo, fit_problems, inspect_model
from ..images import open_rgb
from ..samples import Sample, read_samples
from ..sources import is_repo_id
from .marks import OK, PENDING, PROBLEM

PREVIEW_ROWS = 5
_SAFE_NAME = re.compile(r"[^\w.\-]+")


@lru_cache(maxsize=64)
def _inspect_hub(ref: str) -> ModelInfo:
    return inspect_model(ref)


def _inspect(ref: str) -> ModelInfo:
    """Hub models are read once per process (each expert's check compares against the same base);
    local folders are read again each time, since they may change (the demo is built at first start)."""
    ref = ref.strip()
    if is_repo_id(ref) and not Path(ref).expanduser().exists():
        return _inspect_hub(ref)
    return inspect_model(ref)


def model_message(ref: str | None, base_ref: str | None = None) -> str:
    """One line about a model as soon as it is entered: what it is, and whether it fits the base."""
    if not ref or not ref.strip():
        return ""
    demo = demo_of(ref)
    if demo is not None and not demo.is_built():
        return f"{PENDING} the demo's models are built on first use ({demo.build_note}); Run builds them and waits"
    try:
        info = _inspect(ref)
    except InputError as err:
        return f"{PROBLEM} {err}"
    if not base_ref or not base_ref.strip() or base_ref.strip() == ref.strip():
        return f"{OK} {info.summary()}"
    try:
        base = _inspect(base_ref)
    except InputError:
        return f"{OK} {info.summary()} · (the base could not be read, so it is not compared yet)"
    return _fit_message(info, base)


def marked_problems(base_ref: str, experts: list["ExpertForm"]) -> list[str]:
    """What the form already marks ✘ on its models (the base, then each expert that has a model): Run refuses
    to start on them, in the same words, before any weight is loaded. A Hub model the check could not reach is
    not counted (the run may still find it in the local cache)."""
    def refused(ref: str, note: str) -> bool:
        local = not is_repo_id(ref.strip()) or Path(ref.strip()).expanduser().exists()
        return note.startswith(PROBLEM) and (local or "does not match the base" in note)

    problems = []
    base_note = model_message(base_ref)
    if refused(base_ref, base_note):
        problems.append(f"base: {base_note[2:]}")
    for index, expert in enumerate(experts, 1):
        note = model_message(expert.model, base_ref) if expert.model and expert.model.strip() else ""
        if refused(expert.model or "", note):
            problems.append(f"expert {index} ({expert.name or expert.model}): {note[2:]}")
    return problems


def _fit_message(info: ModelInfo, base: ModelInfo) -> str:
    problems = fit_problems(base, info)
    if problems:
        return f"{PROBLEM} {info.summary()} · does not match the base: {'; '.join(problems)}"
    return f"{OK} {info.summary()} · matches the base"


def evaluation_needs_labels(base_ref: str | None) -> bool:
    """Evaluation samples need labels unless the base is a causal LM (scored by perplexity); when the base
    cannot be read yet, labels are asked for."""
    demo = demo_of(base_ref)
    if demo is not None and not demo.is_built():  # its config says its family
        return load_config(demo.config).family != "causal-lm"
    if not base_ref or not base_ref.strip():
        return True
    try:
        return _inspect(base_ref).family != "causal-lm"
    except InputError:
        return True


def sample_preview(path: str | None, need_labels: bool) -> tuple[list[list], str]:
    """The first rows of a sample file and a count, or the reason it cannot be used."""
    if not path:
        return [], ""
    name = Path(path).name
    try:
        samples = read_samples(path, need_labels=need_labels)
    except InputError as err:
        return [], f"{PROBLEM} {str(err).replace(str(path), name)}"
    rows = [[_describe(s), "" if s.label is None else str(s.label)] for s in samples[:PREVIEW_ROWS]]
    labels = {s.label for s in samples if s.label is not None}
    detail = f", {len(labels)} labels" if labels else ", unlabelled"
    return rows, f"{OK} {name}: {len(samples)} samples{detail}"


def sample_thumbnails(path: str | None, count: int = PREVIEW_ROWS) -> list[tuple[Image.Image, str]]:
    """A few images of a sample file or archive (a seeded random pick) with their labels; none for text
    samples or unreadable files."""
    if not path:
        return []
    try:
        samples = read_samples(path, limit=count)
    except InputError:
        return []
    return [(open_rgb(s.image), "" if s.label is None else str(s.label)) for s in samples if s.image]


def _describe(sample: Sample) -> str:
    if sample.image is None:
        return sample.text
    with Image.open(io.BytesIO(sample.image)) as image:
        return f"[{image.format} image, {image.width}×{image.height}]"


@dataclass
class ExpertForm:
    name: str
    model: str
    calibration: str | None
    evaluation: str | None
    labels: str = ""  # class names, comma-separated (CLIP's zero-shot heads); optional


def form_config(base: str, experts: list[ExpertForm], methods: list[str], options: dict) -> MergeConfig:
    """The merge config the form describes; rows without a model are skipped."""
    if not base or not base.strip():
        raise InputError("choose a base model")
    filled = [e for e in experts if e.model and e.model.strip()]
    if not filled:
        raise InputError("add at least one expert model")
    specs = []
    for index, expert in enumerate(filled, 1):
        name = _SAFE_NAME.sub("_", (expert.name or "").strip()).strip("._") or f"expert{index}"
        if not expert.calibration:
            raise InputError(f"expert '{name}': upload calibration samples")
        spec = {"name": name, "model": expert.model.strip(), "calibration": expert.calibration}
        if expert.evaluation:
            spec["evaluation"] = expert.evaluation
        labels = [label.strip() for label in (expert.labels or "").split(",") if label.strip()]
        if labels:
            spec["labels"] = labels
        specs.append(spec)
    return parse_config({"base": base.strip(), "experts": specs, "methods": methods, "options": options})
