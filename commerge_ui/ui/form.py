"""The app's form as plain functions: checking models and sample files, and turning the form into a config.

Every function returns what the page shows (a message, preview rows) or raises InputError; none needs Gradio.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from ..config import MergeConfig, load_config, parse_config, safe_name
from ..demo import demo_of
from ..errors import InputError
from ..hosting import Policy
from ..model_info import ModelInfo, fit_problems, grown_vocabulary, inspect_model
from ..images import open_rgb
from ..samples import Sample, preview_samples, read_samples
from ..sources import is_repo_id
from .marks import OK, PENDING, PROBLEM

PREVIEW_ROWS = 5
FULL_CHECK_BYTES = 4 * 2**20  # a sample file up to this size is parsed whole by the preview


LOCAL = Policy.local()


@lru_cache(maxsize=64)
def _inspect_hub(ref: str, token: str | bool | None) -> ModelInfo:
    return inspect_model(ref, token=token)


def _inspect(ref: str, policy: Policy = LOCAL) -> ModelInfo:
    """Hub models are read once per process (each expert's check compares against the same base);
    local folders are read again each time, since they may change (the demo is built at first start).
    Hosted, only Hub ids and the demos' folders are read, anonymously."""
    ref = ref.strip()
    confinement = policy.confinement()
    confinement.check_model(ref, ref if is_repo_id(ref) else "this model")
    if is_repo_id(ref) and not (confinement.local_model(ref) and Path(ref).expanduser().exists()):
        return _inspect_hub(ref, policy.hub_token())
    return inspect_model(ref, confinement=None if confinement.open else confinement)


def model_message(ref: str | None, base_ref: str | None = None, policy: Policy = LOCAL) -> str:
    """One line about a model as soon as it is entered: what it is, and whether it fits the base."""
    if not ref or not ref.strip():
        return ""
    demo = demo_of(ref)
    if demo is not None and not demo.is_built():
        return f"{PENDING} the demo's models are {_demo_wait(demo, policy)}"
    adapter = _adapter(ref, policy)
    if adapter is not None:
        return policy.public(_adapter_message(adapter, base_ref))
    try:
        info = _inspect(ref, policy)
        too_big = _too_big(info, policy)
    except InputError as err:
        return f"{PROBLEM} {policy.public(str(err))}"
    if too_big:
        return f"{PROBLEM} {policy.public(too_big)}"
    if not base_ref or not base_ref.strip() or base_ref.strip() == ref.strip():
        return f"{OK} {info.summary()}"
    try:
        base = _inspect(base_ref, policy)
    except InputError:
        return f"{OK} {info.summary()} · (the base could not be read, so it is not compared yet)"
    return policy.public(_fit_message(info, base))


def _adapter(ref: str, policy: Policy):
    """A local LoRA adapter's settings (adapters.py), an InputError's message if it is one that is refused, or
    None when `ref` is not an adapter folder."""
    from ..adapters import is_adapter, read_adapter

    ref = ref.strip()
    path = Path(ref).expanduser()
    confinement = policy.confinement()
    try:
        if confinement.local_model(ref) and path.is_dir():
            return read_adapter(path, ref) if is_adapter(path) else None
        if is_repo_id(ref) and not confinement.local_model(ref) or is_repo_id(ref) and not path.exists():
            return _hub_adapter(ref, policy.hub_token())
    except InputError as err:
        return str(err)
    return None


@lru_cache(maxsize=64)
def _hub_adapter(repo_id: str, token: str | bool | None):
    """A Hub repository's adapter settings (its adapter_config.json, kilobytes), or None if it has a model
    config instead (or cannot be asked)."""
    from huggingface_hub import constants, hf_hub_download

    from ..adapters import spec_of
    from ..hub import hub_reachable
    from ..sources import hub_errors, hub_token, read_config_file

    if not constants.HF_HUB_OFFLINE and not hub_reachable(constants.ENDPOINT):
        return None
    try:
        with hub_errors(repo_id):
            path = hf_hub_download(repo_id, "adapter_config.json", token=hub_token(token))
    except InputError:
        return None  # no adapter config: a full model (the model check says the rest)
    return spec_of(read_config_file(Path(path), repo_id), Path(path).parent, repo_id)


def _adapter_message(adapter, base_ref: str | None) -> str:
    from ..adapters import same_base

    if isinstance(adapter, str):
        return f"{PROBLEM} {adapter}"
    if not base_ref or not base_ref.strip():
        return f"{OK} {adapter.summary()}"
    if same_base(adapter.base, base_ref.strip()):
        return f"{OK} {adapter.summary()} · matches the base"
    return (f"{PROBLEM} {adapter.summary()} · does not match the base: trained on '{adapter.base}' "
            "(a config may still apply it with allow_other_base: true)")


def _demo_wait(demo, policy: Policy) -> str:
    if policy.hosted:
        return f"being prepared by the server since it started ({demo.build_note}); try again in a few minutes"
    return f"built on first use ({demo.build_note}); Run builds them and waits"


def _too_big(info: ModelInfo, policy: Policy) -> str | None:
    bound = policy.limits.model_parameters
    if bound is not None and info.parameters > bound:
        return (f"{info.ref}: {info.parameters / 1e6:.0f} M parameters, above the {policy.limits.profile} limit of "
                f"{bound / 1e6:.0f} M")
    return None


def model_problems(refs: list[tuple[str, str]], policy: Policy) -> list[str]:
    """Hosted: each model (who, ref) that cannot be admitted (not a Hub id or demo model, too large, not
    readable); empty locally, where the run itself says what is wrong."""
    if not policy.hosted:
        return []
    problems = []
    for who, ref in refs:
        try:
            info = _inspect(ref, policy)
        except InputError as err:
            problems.append(f"{who}: {policy.public(str(err))}")
            continue
        too_big = _too_big(info, policy)
        if too_big:
            problems.append(f"{who}: {policy.public(too_big)}")
    return problems


def marked_problems(base_ref: str, experts: list["ExpertForm"], policy: Policy = LOCAL) -> list[str]:
    """What the form already marks ✘ on its models (the base, then each expert that has a model): Run refuses
    to start on them, in the same words, before any weight is loaded. A Hub model the check could not reach is
    not counted locally (the run may still find it in the local cache); hosted, every ✘ counts."""
    def refused(ref: str, note: str) -> bool:
        local = not is_repo_id(ref.strip()) or Path(ref.strip()).expanduser().exists()
        return note.startswith(PROBLEM) and (policy.hosted or local or "does not match the base" in note)

    problems = []
    base_note = model_message(base_ref, policy=policy)
    if refused(base_ref, base_note):
        problems.append(f"base: {base_note[2:]}")
    for index, expert in enumerate(experts, 1):
        note = model_message(expert.model, base_ref, policy) if expert.model and expert.model.strip() else ""
        if refused(expert.model or "", note):
            problems.append(f"expert {index} ({expert.name or expert.model}): {note[2:]}")
    return problems


def marked_sample_problems(base_ref: str, experts: list["ExpertForm"], policy: Policy = LOCAL) -> list[str]:
    """What the form marks ✘ beside the sample files, each named by its expert and its own file name."""
    problems = []
    labelled = evaluation_needs_labels(base_ref, policy)  # the base is read once, not once per expert
    for index, expert in enumerate(experts, 1):
        if not (expert.model and expert.model.strip()):
            continue
        for kind, path, labels in (("calibration", expert.calibration, False),
                                   ("evaluation", expert.evaluation, labelled)):
            _, note = sample_preview(path, labels, policy)
            if note.startswith(PROBLEM):
                problems.append(f"expert {index} ({expert.name or expert.model}), {kind} samples: {note[2:]}")
    return problems


def _fit_message(info: ModelInfo, base: ModelInfo) -> str:
    problems = fit_problems(base, info)
    if problems:
        return f"{PROBLEM} {info.summary()} · does not match the base: {'; '.join(problems)}"
    grown = grown_vocabulary(base.config, info.config)
    added = (f"; its {grown[1] - grown[0]} added tokens are dropped (the base's vocabulary is kept)"
             if grown else "")
    return f"{OK} {info.summary()} · matches the base{added}"


def evaluation_needs_labels(base_ref: str | None, policy: Policy = LOCAL) -> bool:
    """Evaluation samples need labels unless the base is a causal LM (scored by perplexity); when the base
    cannot be read yet, labels are asked for."""
    demo = demo_of(base_ref)
    if demo is not None and not demo.is_built():  # its config says its family
        return load_config(demo.config).family != "causal-lm"
    if not base_ref or not base_ref.strip():
        return True
    try:
        return _inspect(base_ref, policy).family != "causal-lm"
    except InputError:
        return True


def sample_preview(path: str | None, need_labels: bool, policy: Policy = LOCAL) -> tuple[list[list], str]:
    """The first rows of a sample file and a count (its other records are counted, not parsed), or the
    reason it cannot be used; messages name the file by its own name only."""
    if not path:
        return [], ""
    name = Path(path).name
    max_bytes = policy.limits.sample_file_mb * 2**20
    try:
        policy.confinement().check_sample(path, name)
        if Path(path).is_file() and Path(path).stat().st_size <= FULL_CHECK_BYTES:  # small: every record checked
            samples = read_samples(path, need_labels=need_labels, name=name, max_bytes=max_bytes)
            count, labels = len(samples), {s.label for s in samples if s.label is not None}
            detail = f", {len(labels)} labels" if labels else ", unlabelled"
        else:  # large: the first rows parsed, the rest only counted (the run reads the records it draws)
            samples, count = preview_samples(path, PREVIEW_ROWS, need_labels, name=name, max_bytes=max_bytes)
            detail = ", labelled" if any(s.label is not None for s in samples) else ", unlabelled"
    except InputError as err:
        return [], f"{PROBLEM} {policy.public(str(err))}"
    rows = [[_describe(s), "" if s.label is None else str(s.label)] for s in samples[:PREVIEW_ROWS]]
    return rows, f"{OK} {name}: {count} samples{detail}"


def sample_thumbnails(path: str | None, count: int = PREVIEW_ROWS,
                      policy: Policy = LOCAL) -> list[tuple[Image.Image, str]]:
    """A few images of a sample file or archive (a seeded random pick) with their labels; none for text
    samples or unreadable files."""
    if not path:
        return []
    try:
        policy.confinement().check_sample(path, "samples")
        if Path(path).suffix.lower() in (".txt", ".jsonl", ".csv"):
            return []  # text, or a list naming image files: only archives and folders get thumbnails
        samples = read_samples(path, limit=count, max_bytes=policy.limits.sample_file_mb * 2**20)
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
        name = safe_name(expert.name or "", f"expert{index}")
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
