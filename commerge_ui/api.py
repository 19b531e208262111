"""One entry point for the CLI and the app: run_merge(config) -> Report."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from .adapters import AdapterWeights, is_adapter, read_adapter, same_base
from .vocab import BaseVocabulary, added_tokens, grown_tables
from .compat import check_expert, find_source, is_unchanged
from .config import MergeConfig, MergeOptions
from .engine import EngineTask, ProgressEvent, merge
from .errors import Cancelled, InputError, MergeError, NonFiniteError
from .export import model_card, model_licence
from .families import Family, detect_family
from .families.base import EncodedSamples
from .heldout import heldout_shift as measure_heldout
from .mergekit import to_recipe
from .hosting import Confinement
from .methods import METHODS, Method
from .offload import Placement, check_mode, pick_placement
from .report import MethodReport, Report, mean, normalized
from .resources import PeakMemory, pick_device, pick_dtype
from .samples import Sample, label_names, read_samples
from .score_cache import cached_score, folder_fingerprint, samples_digest
from .sources import ModelSource, SafetensorsWeights, read_config_file, resolve_model


@dataclass
class Expert:
    name: str
    folder: Path
    source: ModelSource
    calibration: list[Sample]
    evaluation: list[Sample] | None
    weight: float
    labels: list[str] | None  # class names, where the family builds its heads from them


OUT_OF_GPU_MEMORY = ("out of GPU memory: use fewer calibration samples, a smaller max_length, "
                     "--dtype bfloat16 or --device cpu")


def run_merge(config: MergeConfig, out_dir: Path | None = None, save: list[str] | None = None,
              device: str = "auto", dtype: str = "float32", token: str | None = None,
              progress: Callable[[ProgressEvent], None] | None = None,
              cancel: Callable[[], bool] | None = None,
              log: Callable[[str], None] | None = None, offload: str = "auto",
              confinement: Confinement | None = None, keep_finished: bool = False) -> Report:
    """Merge the config's experts with each of its methods, score every result and measure the shift.

    With `out_dir`, writes report.json there and a loadable model folder for each method in `save`.
    `offload` ("auto", "on", "off") keeps the model's blocks and the streams in host memory with one block at
    a time on the GPU (offload.py); "auto" does so when the model would fill more than half of the GPU.
    `progress` is called after every layer group; `cancel` is polled there and raises Cancelled, unless
    `keep_finished` and a method has finished: then the report holds the finished methods (`partial` true) and
    the method cut short leaves nothing behind.
    The token only reaches the Hub download; it is never stored or logged (False: anonymous Hub calls).
    `confinement` (hosting.py) says where models and sample files may come from; the app's hosted mode sets it.
    Running out of GPU memory anywhere (loading, scoring, merging) raises MergeError with what to change.
    """
    try:
        return _run_merge(config, out_dir, save, device, dtype, token, progress, cancel, log, offload,
                          confinement or Confinement(), keep_finished)
    except torch.cuda.OutOfMemoryError:
        raise MergeError(OUT_OF_GPU_MEMORY) from None
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # what a failed or finished run cached is given back to the next one


@dataclass
class Loaded:
    """The base model, loaded once per run: its family, processor, backbone (merged into in place) and files."""

    folder: Path
    family: Family
    processor: object
    backbone: torch.nn.Module
    source: ModelSource
    names: list[str]  # the backbone's parameter names, in order
    expected: dict[str, tuple[int, ...]]  # name -> shape, what every expert must match
    placement: Placement


def _run_merge(config: MergeConfig, out_dir: Path | None, save: list[str] | None, device: str, dtype: str,
               token: str | bool | None, progress: Callable[[ProgressEvent], None] | None,
               cancel: Callable[[], bool] | None, log: Callable[[str], None] | None, offload: str,
               confinement: Confinement, keep_finished: bool = False) -> Report:
    say = log or (lambda message: None)
    save = _check_request(config, save)
    torch_device, torch_dtype = pick_device(device), pick_dtype(dtype)
    check_mode(offload)  # refused before anything loads
    torch.manual_seed(config.options.seed)

    _check_samples_allowed(config, confinement)
    say(f"resolving base {config.base}")
    loaded = _load_base(config, torch_device, torch_dtype, token, offload, confinement)
    if loaded.placement.offload:
        say("keeping the blocks and the streams in host memory; one block at a time on the GPU")
    config = with_family_defaults(config, loaded.family)
    options = config.options
    if needs_calibration(config):  # max_length is the calibration samples' length
        check_max_length(loaded.backbone.config, options.max_length, loaded.family.name)
    experts, warnings = _load_experts(config, loaded, token, say, confinement)
    scorer = _Scorer(loaded, options, torch_device, torch_dtype)

    say("scoring the experts and the base")
    notify = _Notifier(progress, cancel)
    expert_scores, base_scores = scorer.references(experts, notify)
    warnings.extend(loaded.family.notes)

    calibration, tasks = _encode(loaded.family, loaded.processor, experts, options.max_length,
                                 lambda e: e.calibration)
    calibration = calibration.to(torch_device) if calibration is not None else None
    heldout = _heldout_samples(loaded.family, loaded.processor, experts, options, torch_device)
    layers: list[str] = []
    reports: dict[str, MethodReport] = {}
    partial = False
    for name in config.methods:
        try:
            say(f"merging with {METHODS[name].title}")
            result, merged_layers = _merge_and_score(METHODS[name], loaded, scorer, experts, expert_scores, tasks,
                                                     calibration, heldout, config, torch_device, notify)
            if out_dir is not None and name in save:
                say(f"saving {METHODS[name].title}")
                notify(ProgressEvent(name, 0, 1, name, "save"))
                _save_model(loaded.family, loaded.backbone, loaded.processor, config, experts, name, result,
                            out_dir / name, loaded.folder)
                notify(ProgressEvent(name, 1, 1, name, "save"))
        except Cancelled:
            if not (keep_finished and reports):
                raise
            partial = True  # the methods finished so far stand; the one cut short leaves nothing
            say(f"cancelled: {len(reports)} of {len(config.methods)} methods finished")
            break
        reports[name] = result
        layers = merged_layers or layers  # a data-free merge without its shift has no layers

    report = Report(
        family=loaded.family.name, metric=loaded.family.metric, higher_is_better=loaded.family.higher_is_better,
        base={"model": config.base, "scores": base_scores},
        experts={e.name: {"model": spec.model, "score": expert_scores[e.name]}
                 for e, spec in zip(experts, config.experts)},
        layers=layers, methods=reports, options=options.model_dump(by_alias=True),
        device=str(torch_device), dtype=dtype, warnings=warnings, offload=loaded.placement.offload,
        partial=partial,
    )
    if out_dir is not None:
        report.write(out_dir / "report.json")
    return report


def non_finite_hint(dtype: torch.dtype) -> str:
    """What to try when the statistics are not finite, for the dtype the run really used."""
    if dtype in (torch.float16, torch.bfloat16):
        return f"the run used {str(dtype).removeprefix('torch.')}: activations may overflow there; try float32"
    return (f"the run already used {str(dtype).removeprefix('torch.')}, so the activations are not overflowing "
            "a short float: a model's weights or the samples lead to NaN/Inf (check the base and the experts)")


def with_family_defaults(config: MergeConfig, family: Family) -> MergeConfig:
    """Options left unset that depend on the family, filled in (so the report and the exported config say them)."""
    if config.options.sink_tokens is not None:
        return config
    options = config.options.model_copy(update={"sink_tokens": family.sink_tokens})
    return config.model_copy(update={"options": options})


def needs_calibration(config: MergeConfig) -> bool:
    """Whether the run forwards calibration samples: any activation-based method, or any shift measured."""
    return any(METHODS[m].regression for m in config.methods) or config.options.data_free_shift


def _check_request(config: MergeConfig, save: list[str] | None) -> list[str]:
    """What can be refused before anything is loaded: methods to save that do not run, missing calibration."""
    save = list(save or [])
    unknown = [m for m in save if m not in config.methods]
    if unknown:
        raise InputError(f"--save names {', '.join(unknown)}, which the config's methods do not include")
    missing = [e.name for e in config.experts if not e.calibration]
    if missing and needs_calibration(config):
        raise InputError(f"expert '{missing[0]}': 'calibration' samples are required (they measure the shift "
                         "and drive RegMean/CoM; only data-free methods with data_free_shift: false run without)")
    return save


def _check_samples_allowed(config: MergeConfig, confinement: Confinement) -> None:
    for spec in config.experts:
        for kind in ("calibration", "evaluation"):
            if getattr(spec, kind):
                confinement.check_sample(getattr(spec, kind), f"expert '{spec.name}': {kind} samples")


POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")


def check_max_length(model_config, max_length: int, family: str) -> None:
    """Refuse a max_length above the positions the model has (a text model's tokens; CLIP's image side has
    none), before any sample is encoded."""
    if family == "image-classification":
        return
    limit = next((getattr(model_config, k) for k in POSITION_KEYS if isinstance(getattr(model_config, k, None), int)),
                 None)
    if limit is not None and max_length > limit:
        raise InputError(f"max_length {max_length} is above the base model's {limit} positions; use at most {limit}")


def check_float(who: str, source: ModelSource, names: list[str]) -> None:
    """Refuse integer or quantized tensors (int8, uint8, float8...): a merge needs the float weights."""
    for name in names:
        if source.has(name):
            stored = source.weights.dtype(source.key(name))
            if stored not in FLOAT_DTYPES:
                raise InputError(f"{who}: tensor '{name}' is stored as {stored}, an integer or quantized type; "
                                 "merging needs a float checkpoint (float32, float16 or bfloat16)")


FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def _load_base(config: MergeConfig, device: torch.device, dtype: torch.dtype, token: str | bool | None,
               offload: str, confinement: Confinement) -> Loaded:
    folder = resolve_model(config.base, token=token, confinement=confinement, who=f"base {config.base}")
    family = detect_family(folder, config.family, config.options.prompt_templates)
    processor = family.load_processor(folder)
    weights = SafetensorsWeights(folder)
    check_float(f"base {config.base}", ModelSource(weights),
                [n for n in weights.names() if n.endswith((".weight", ".bias"))])  # before the load casts them
    placement = pick_placement(device, offload, model_bytes(weights, dtype) if device.type == "cuda" else 0)
    backbone = family.load_backbone(folder, dtype, device, placement.offload)
    expected = {n: tuple(p.shape) for n, p in backbone.named_parameters()}
    names = list(expected)
    source = find_source(weights, names, f"{backbone.base_model_prefix}.", f"base {config.base}")
    block_path, _ = family.blocks(backbone)
    missing = [n for n in names if n.startswith(f"{block_path}.") and not source.has(n)]
    if missing:
        raise InputError(f"base {config.base}: its weights lack '{missing[0]}'"
                         f"{f' and {len(missing) - 1} more block tensors' if len(missing) > 1 else ''}; loading would "
                         "fill them with random values, so it is refused (is the checkpoint complete?)")
    return Loaded(folder, family, processor, backbone, source, names, expected, placement)


def model_bytes(weights: SafetensorsWeights, dtype: torch.dtype) -> int:
    """What the folder's tensors take once loaded in `dtype`, from the safetensors headers (nothing is read)."""
    element = torch.tensor([], dtype=dtype).element_size()
    return sum(math.prod(weights.shape(name)) for name in weights.names()) * element


def _load_experts(config: MergeConfig, loaded: Loaded, token: str | bool | None, say: Callable[[str], None],
                  confinement: Confinement) -> tuple[list[Expert], list[str]]:
    """Each expert resolved, checked against the base (names, shapes, dtypes, family) and its samples read."""
    options, family = config.options, loaded.family
    block_path, _ = family.blocks(loaded.backbone)
    probe = [n for n in loaded.names if n.startswith(f"{block_path}.0.")]
    experts, warnings = [], []
    for spec in config.experts:
        who = f"expert '{spec.name}' ({spec.model})"
        say(f"resolving {who}")
        folder = resolve_model(spec.model, spec.revision, token, confinement, who=who)
        weights = _expert_weights(folder, spec, config.base, loaded, who, warnings)
        source = find_source(weights, loaded.names, f"{loaded.backbone.base_model_prefix}.", who)
        source.fallback = loaded.source
        check_expert(who, loaded.folder if is_adapter(folder) else folder, source, loaded.expected, loaded.folder,
                     family)
        check_float(who, source, loaded.names)
        if is_unchanged(source, loaded.source, probe):
            warnings.append(f"{who}: its first block equals the base's (zero task vector?)")
        calibration = (read_samples(spec.calibration, options.calibration_samples, options.seed,
                                    name=_sample_name(spec.name, "calibration", spec.calibration),
                                    max_bytes=confinement.sample_bytes) if spec.calibration else [])
        _check_kind(family, calibration, spec.name, "calibration")
        if spec.calibration and len(calibration) < options.calibration_samples:
            warnings.append(f"{who}: {len(calibration)} calibration samples, fewer than the "
                            f"{options.calibration_samples} asked; all of them are used")
        evaluation = (read_samples(spec.evaluation, options.evaluation_samples, options.seed,
                                   need_labels=family.needs_labels,
                                   name=_sample_name(spec.name, "evaluation", spec.evaluation),
                                   max_bytes=confinement.sample_bytes)
                      if spec.evaluation else None)
        if evaluation is not None:
            _check_kind(family, evaluation, spec.name, "evaluation")
        experts.append(Expert(spec.name, folder, source, calibration, evaluation, spec.weight,
                              spec.labels or label_names(evaluation)))
    return experts, warnings


def _expert_weights(folder: Path, spec, base_ref: str, loaded: Loaded, who: str, warnings: list[str]):
    """An expert's tensors: its folder's safetensors (with a grown vocabulary cut to the base's, vocab.py), or for
    a LoRA adapter the base's with the adapter's factors applied on demand (adapters.py), once its recorded base
    is the chosen one (or the config allows another)."""
    if not is_adapter(folder):
        return _base_vocabulary(SafetensorsWeights(folder), folder, loaded, who, warnings)
    adapter = read_adapter(folder, who)
    if not same_base(adapter.base, base_ref) and not spec.allow_other_base:
        raise InputError(f"{who}: a LoRA adapter of '{adapter.base}', and the base is '{base_ref}'; if it fits "
                         "this base anyway, say so with `allow_other_base: true` on this expert")
    return AdapterWeights(loaded.source.weights, adapter, who)


def _base_vocabulary(weights: SafetensorsWeights, folder: Path, loaded: Loaded, who: str, warnings: list[str]):
    """An expert whose vocabulary the base's is the start of, read with the base's rows only (tokenizer_source:
    base); the tokens it added are named in a warning. Any other expert as it is."""
    base_size = getattr(loaded.backbone.config, "vocab_size", None)
    expert_size = read_config_file(folder / "config.json", who).get("vocab_size")
    if not (isinstance(base_size, int) and isinstance(expert_size, int) and expert_size > base_size):
        return weights
    vocab = loaded.processor.get_vocab() if hasattr(loaded.processor, "get_vocab") else None
    if vocab is None:
        return weights
    added = added_tokens(folder, vocab, base_size, who)
    shown = ", ".join(repr(t) for t in added[:8]) + (f" and {len(added) - 8} more" if len(added) > 8 else "")
    shown = shown or "no token names"
    warnings.append(f"{who}: its vocabulary has {expert_size - base_size} rows beyond the base's ({shown}); "
                    "tokenizer_source is base, so they are dropped and the base's tokenizer is kept")
    return BaseVocabulary(weights, grown_tables(weights, expert_size), base_size)


def _sample_name(expert: str, kind: str, path: str) -> str:
    """How messages name a sample file: the expert, the kind and the file's own name (never its folder)."""
    return f"expert '{expert}', {kind} samples {Path(path).name}"


def _check_kind(family: Family, samples: list[Sample], expert: str, kind: str) -> None:
    """Images given to a text model are refused by name, not read as empty texts (the image family refuses
    text itself)."""
    images = sum(s.is_image for s in samples)
    if family.name != "image-classification" and images:
        raise InputError(f"expert '{expert}': {images} of its {kind} samples are images; the base is a "
                         f"{family.name} model (give text: .txt lines, or .jsonl/.csv with a 'text' column)")


class _Notifier:
    """Passes progress events on, and stops the run at the next one once cancel() is true."""

    def __init__(self, progress: Callable[[ProgressEvent], None] | None, cancel: Callable[[], bool] | None) -> None:
        self.progress, self.cancel = progress, cancel

    def __call__(self, event: ProgressEvent) -> None:
        if self.progress:
            self.progress(event)
        if self.cancel and self.cancel() and event.step < event.total:
            raise Cancelled(f"cancelled while {event.phase} {event.method or ''}".rstrip())


class _Scorer:
    """Scores a task's evaluation samples: under the merged backbone, or the expert's / the base's own."""

    def __init__(self, loaded: Loaded, options: MergeOptions, device: torch.device, dtype: torch.dtype) -> None:
        self.loaded, self.options, self.device, self.dtype = loaded, options, device, dtype

    def score(self, task: Expert, with_backbone: bool) -> float | None:
        if task.evaluation is None:
            return None
        family = self.loaded.family
        return family.score(self.loaded.backbone if with_backbone else None, task.source, self.loaded.processor,
                            task.evaluation, self.options.batch_size, task.labels)

    def references(self, experts: list[Expert], notify: _Notifier) -> tuple[dict, dict]:
        """Each expert's own score and the base's under its head (progress: one step per model scored)."""
        jobs = [(role, e) for role in ("expert", "base") for e in experts]
        total = sum(e.evaluation is not None for _, e in jobs)
        scores: dict[str, dict[str, float | None]] = {"expert": {}, "base": {}}
        done = 0
        for role, e in jobs:
            if e.evaluation is not None:
                notify(ProgressEvent("", done, total, f"{role} {e.name}", "references"))
                done += 1
            scores[role][e.name] = self.reference(e, role)
        notify(ProgressEvent("", total, total, "", "references"))
        return scores["expert"], scores["base"]

    def reference(self, task: Expert, role: str) -> float | None:
        """The expert's own score, or the base's under the expert's head: cached per process (score_cache)."""
        if task.evaluation is None:
            return None
        family, options = self.loaded.family, self.options
        key = (family.name, role, folder_fingerprint(task.folder), folder_fingerprint(self.loaded.folder),
               samples_digest(task.evaluation), tuple(task.labels or ()), tuple(options.prompt_templates),
               options.batch_size, str(self.dtype), self.device.type, self.loaded.placement.offload)

        def compute() -> tuple[float | None, tuple[str, ...]]:
            seen = len(family.notes)
            value = self.score(task, with_backbone=role == "base")
            return value, tuple(family.notes[seen:])

        value, notes = cached_score(key, compute)  # the notes come back with the score: same report either way
        family.notes.extend(n for n in notes if n not in family.notes)
        return value


def _merge_and_score(method: Method, loaded: Loaded, scorer: _Scorer, experts: list[Expert],
                     expert_scores: dict[str, float | None], tasks: list[EngineTask], calibration: EncodedSamples,
                     heldout: tuple[EncodedSamples, list[EngineTask]] | None, config: MergeConfig,
                     device: torch.device, notify: _Notifier) -> tuple[MethodReport, list[str]]:
    """One method: merge into the backbone (in place), time it, score every task and measure the shift on the
    evaluation samples (`heldout`, where asked); returns its report and the layer groups' labels."""
    family = loaded.family
    memory = PeakMemory(device)
    notify(ProgressEvent(method.name, 0, 0, "", "merge"))  # started; the engine knows the total after block 0
    began = time.perf_counter()
    try:
        trace = merge(method, family, loaded.backbone, loaded.source, tasks, calibration, config.options,
                      notify.progress, notify.cancel, memory, loaded.placement)
    except NonFiniteError as err:
        raise MergeError(f"{err}; {non_finite_hint(next(loaded.backbone.parameters()).dtype)}") from None
    seconds = time.perf_counter() - began
    scored = [e for e in experts if e.evaluation is not None]
    scores: dict[str, float | None] = {e.name: None for e in experts}
    for done, e in enumerate(scored):
        notify(ProgressEvent(method.name, done, len(scored), e.name, "score", seconds=seconds if done == 0 else None))
        scores[e.name] = scorer.score(e, with_backbone=True)
    notify(ProgressEvent(method.name, len(scored), len(scored), "", "score", seconds=None if scored else seconds))
    score_seconds = time.perf_counter() - began - seconds
    heldout_shift: dict[str, list[float]] = {}
    if heldout is not None and (method.regression or config.options.data_free_shift):
        # (a data-free merge run without forwards has no shift, on either set of samples)
        blocks = len(family.blocks(loaded.backbone)[1])
        notify(ProgressEvent(method.name, 0, blocks, "", "shift"))

        def on_block(done: int, total: int) -> None:
            notify(ProgressEvent(method.name, done, total, f"block {done - 1}", "shift"))

        encoded, eval_tasks = heldout
        heldout_shift = measure_heldout(family, loaded.backbone, eval_tasks, encoded, config.options.sink_tokens or 0,
                                        loaded.placement, on_block)
    norm = {t: normalized(s, expert_scores[t], family.higher_is_better) for t, s in scores.items()}
    report = MethodReport(scores, norm, mean(list(scores.values())), mean(list(norm.values())), trace.shift,
                          trace.block_shift, round(seconds, 3), memory.result(), trace.warnings, trace.merge_batch,
                          round(score_seconds, 3), heldout_shift,
                          round(time.perf_counter() - began - seconds - score_seconds, 3) if heldout_shift else None)
    return report, trace.layers


def _encode(family: Family, processor, experts: list[Expert], max_length: int,
            samples_of: Callable[[Expert], list[Sample]]) -> tuple[EncodedSamples | None, list[EngineTask]]:
    """Every expert's samples (`samples_of`) in one padded batch; each task gets its own row range. None when
    no expert has any (a data-free run without forwards)."""
    samples, tasks, start = [], [], 0
    for e in experts:
        mine = samples_of(e)
        tasks.append(EngineTask(e.name, e.source, slice(start, start + len(mine)), e.weight))
        samples.extend(mine)
        start += len(mine)
    return (family.encode(processor, samples, max_length) if samples else None), tasks


def _heldout_samples(family: Family, processor, experts: list[Expert], options: MergeOptions,
                     device: torch.device) -> tuple[EncodedSamples, list[EngineTask]] | None:
    """The evaluation samples of the tasks that have them, at most `heldout_samples` per task (a seeded subset),
    encoded as the calibration samples are (at max_length), for the held-out shift; None where it is not asked
    or no task has them."""
    evaluated = [e for e in experts if e.evaluation is not None]
    if not options.heldout_shift or not evaluated:
        return None

    def subset(e: Expert) -> list[Sample]:
        assert e.evaluation is not None
        cap = options.heldout_samples or len(e.evaluation)
        if len(e.evaluation) <= cap:
            return e.evaluation
        return [e.evaluation[i] for i in sorted(random.Random(options.seed).sample(range(len(e.evaluation)), cap))]

    encoded, tasks = _encode(family, processor, evaluated, options.max_length, subset)
    return encoded.to(device), tasks


def _save_model(family: Family, backbone: torch.nn.Module, processor, config: MergeConfig,
                experts: list[Expert], method: str, result: MethodReport, folder: Path, base_folder: Path) -> None:
    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # its per-shard bar would interrupt the run's own progress
    try:
        backbone.save_pretrained(folder, max_shard_size="2GB", safe_serialization=True)
    finally:
        if shown:
            transformers_logging.enable_progress_bar()
    processor.save_pretrained(folder)
    for e in experts:
        family.save_task_head(e.source, folder / "heads" / e.name, e.labels)
    licences = {config.base: model_licence(base_folder),
                **{spec.model: model_licence(e.folder) for spec, e in zip(config.experts, experts)}}
    card = model_card(config.base, {e.name: e.model for e in config.experts},
                      method, METHODS[method].title, config.options.model_dump(by_alias=True),
                      result.scores, result.normalized, family.metric, METHODS[method].paper, licences)
    (folder / "README.md").write_text(card, encoding="utf-8")
    recipe = to_recipe(method, config.base, [e.model for e in config.experts], config.options.model_dump(by_alias=True))
    if recipe is not None:  # the same merge as mergekit runs it
        (folder / "mergekit.yml").write_text(recipe, encoding="utf-8")
