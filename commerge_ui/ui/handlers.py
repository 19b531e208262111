"""What each event of the page does, as plain functions of plain values (testable without a browser)."""

from __future__ import annotations

import json
import shutil
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from .. import precomputed
from ..archives import extract_zip
from ..config import MergeConfig, load_config
from ..demo import demo_of, unbuilt_demos
from ..hosting import FREE_SPACE, limit_problems
from ..errors import InputError
from ..hub import push_folder, search_models
from ..methods import METHODS
from ..report import verdict
from . import plots
from .form import ExpertForm, form_config, model_problems
from .marks import INFO, OK, PENDING, PROBLEM, WARNING
from .session import RunProgress, Session, run_in_background

MAX_EXPERTS = 8
# CoM's two readings side by side, RegMean, and the baselines that show what the others gain
DEFAULT_METHODS = ["com", "com_chain", "regmean", "task_arithmetic", "average"]


@dataclass
class FormDefaults:
    base: str
    experts: list[ExpertForm]
    options: dict


def defaults_from(config_path: Path) -> FormDefaults:
    """The form filled in from a config file (the app opens on the demo's)."""
    config = load_config(config_path)
    experts = [ExpertForm(e.name, e.model, e.calibration, e.evaluation, ", ".join(e.labels or []))
               for e in config.experts[:MAX_EXPERTS]]
    return FormDefaults(config.base, experts, config.options.model_dump(by_alias=True))


def default_run(config_path: Path) -> MergeConfig:
    """The run **Run** starts with the form as the page opens on `config_path`: its models and samples, the
    page's default methods and the config's options."""
    d = defaults_from(config_path)
    o = d.options
    return build_config(d.base, d.experts, DEFAULT_METHODS, o["alpha"], o["lambda"], o["calibration_samples"],
                        o["max_length"], evaluation_samples=o["evaluation_samples"])  # the page's seed is 0


def precomputed_report(config_path: Path) -> dict | None:
    """The cached report of the page's default run, if it was computed for exactly these models and options."""
    config = default_run(config_path)
    return precomputed.load(precomputed.folder_for(config), config, precomputed.stamp_of(config))


def precompute_default_run(config_path: Path, log=print) -> dict:
    """Compute (once) and cache the page's default run: results on arrival."""
    config = default_run(config_path)
    return precomputed.compute(precomputed.folder_for(config), config, precomputed.stamp_of(config), log=log)


def device_note() -> str:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        return f"GPU present: {name} ({memory:.0f} GiB); 'auto' uses it."
    return ("No GPU here: 'auto' runs on the CPU (the text demo takes about three minutes, most of it scoring; "
            "the SmolLM2 demo much longer).")


def hub_suggestions(query: str, base: str | None, policy=None) -> tuple[list[str], str]:
    """Model ids for a search box, and a note (empty, or that the Hub is offline); hosted, asked anonymously."""
    try:
        return search_models(query or "", base, token=None if policy is None else policy.hub_token()), ""
    except InputError as err:
        hosted = policy is not None and policy.hosted
        return [], f"{INFO} {str(err).replace('; local folders still work', '') if hosted else err}"


def run_merge_events(session: Session, config: MergeConfig, device: str, dtype: str,
                     bundle: Path | None = None) -> Iterator[RunProgress]:
    """The run as the page sees it: admitted by the session's policy first (bounds, where inputs come from,
    disk), then, locally, the demo's models built if the config uses them and they are not built yet (its
    log lines shown as they come; hosted, the server prepares them at start-up and a visitor never does), then
    the merge."""
    try:
        config = admit(session, config, bundle)
    except InputError as err:
        yield RunProgress(list(config.methods), error=f"{PROBLEM} {session.policy.public(str(err))}")
        return
    for demo in unbuilt_demos(config):
        if session.policy.hosted:
            yield RunProgress(list(config.methods), error=f"{PENDING} the demo's models are being prepared by the "
                              f"server since it started ({demo.build_note}); try again in a few minutes")
            return
        waiting = RunProgress(list(config.methods), stage=f"building the demo's models (first use; {demo.build_note})…",
                              building=True)
        yield from _while_building(demo.ensure, waiting)
        if waiting.error:
            return
    yield from run_in_background(config, session, save=list(config.methods), device=device, dtype=dtype,
                                 bundle=bundle)


def admit(session: Session, config: MergeConfig, bundle: Path | None = None) -> MergeConfig:
    """Refuse, before any weight is read, a run the session's policy does not allow (admission_problems), and
    hosted a run whose models would not fit the disk budget. Returns the config to run: hosted, "every
    evaluation sample" is cut to the limit (the report's options say so)."""
    problems = admission_problems(session.policy, config, bundle)
    if problems:
        raise InputError(" · ".join(problems) + _profile_note(session.policy, problems))
    if not session.policy.hosted:
        return config
    parameters = inspect_parameters(config.base, session.policy)
    session.check_room(parameters * 4 * len(config.methods))  # float32 safetensors, one model per method
    if config.options.evaluation_samples is None:
        options = config.options.model_copy(update={"evaluation_samples": session.policy.limits.evaluation_samples})
        config = config.model_copy(update={"options": options})
    return config


def _profile_note(policy, problems: list[str]) -> str:
    bounded = any("limit of" in p for p in problems)
    return f" (this instance's limits fit {FREE_SPACE})" if policy.hosted and bounded else ""


def admission_problems(policy, config: MergeConfig, bundle: Path | None = None, models: bool = True) -> list[str]:
    """Every reason the policy refuses a run, listed at once: a value above its bounds (both profiles); hosted
    also a sample file that is not the visitor's own upload (or the bundle's, or the demo's) or is too large,
    and (with `models`) a model that is not a Hub id or a demo model, or is too large."""
    problems = limit_problems(config, policy.limits)
    if not policy.hosted:
        return problems
    confinement = policy.confinement(bundle)
    for spec in config.experts:
        for kind in ("calibration", "evaluation"):
            path = getattr(spec, kind)
            if not path:
                continue
            who = f"expert '{spec.name}': {kind} samples"
            try:
                confinement.check_sample(path, who)
                if Path(path).is_file() and Path(path).stat().st_size > confinement.sample_bytes:
                    raise InputError(f"{who} {Path(path).name}: larger than the {policy.limits.sample_file_mb} MiB "
                                     "a hosted instance reads")
            except InputError as err:
                problems.append(str(err))
    if not models:
        return problems
    refs = [("base", config.base), *((f"expert '{e.name}'", e.model) for e in config.experts)]
    refused = []
    for who, ref in refs:
        try:
            confinement.check_model(ref, who)
        except InputError as err:
            refused.append(str(err))
    return problems + (refused or model_problems(refs, policy))


def inspect_parameters(ref: str, policy) -> int:
    from .form import _inspect

    demo = demo_of(ref)
    if demo is not None and not demo.is_built():
        return 0
    return _inspect(ref, policy).parameters


def _while_building(build, waiting: RunProgress, every: float = 1.0) -> Iterator[RunProgress]:
    """Runs build(log) in a thread, yielding `waiting` (its stage: the last log line) every `every` seconds."""
    failed: list[BaseException] = []

    def target() -> None:
        try:
            build(waiting.on_log)
        except BaseException as err:  # shown on the page; the thread must not die silently
            failed.append(err)

    worker = threading.Thread(target=target, daemon=True, name="demo-build")
    worker.start()
    yield waiting
    while worker.is_alive():
        worker.join(every)
        yield waiting
    if failed:
        waiting.error = f"{PROBLEM} building the demo failed: {failed[0]}"
        yield waiting


def build_config(base: str, experts: list[ExpertForm], methods: list[str], alpha: float, task_lambda: float,
                 samples: int, max_length: int, seed: int = 0, evaluation_samples: int | None = None) -> MergeConfig:
    options = {"alpha": alpha, "lambda": task_lambda, "calibration_samples": int(samples),
               "max_length": int(max_length), "seed": int(seed), "evaluation_samples": evaluation_samples}
    if not methods:
        raise InputError("tick at least one method")
    return form_config(base, experts, [m for m in METHODS if m in methods], options)


@dataclass
class ResultViews:
    shift: object
    heldout: object
    heatmap: object
    scores: pd.DataFrame
    bars: object
    costs: pd.DataFrame
    warnings: str


def result_views(report: dict, shown: list[str], heat_method: str | None, normalized: bool) -> ResultViews:
    """Every figure and table of the results section for the current toggles."""
    tasks = [t for t in shown if t != "mean"]
    heat_method = heat_method if heat_method in report["methods"] else next(iter(report["methods"]))
    header, rows = plots.score_table(report, normalized)
    cost_header, cost_rows = plots.cost_rows(report)
    warnings = [*report["warnings"], *(w for m in report["methods"].values() for w in m["warnings"])]
    return ResultViews(
        shift=plots.shift_figure(report, tasks, show_mean="mean" in shown),
        heldout=plots.heldout_figure(report),
        heatmap=plots.shift_heatmap(report, heat_method),
        scores=pd.DataFrame(rows, columns=header),
        bars=plots.score_bars(report, normalized),
        costs=pd.DataFrame(cost_rows, columns=cost_header),
        warnings="\n".join(f"{WARNING} {w}" for w in warnings),
    )


def config_from_upload(session: Session, path: str | None) -> tuple[MergeConfig, Path]:
    """A config.yaml, or a config bundle (.zip with config.yaml and its samples/), unpacked into the session's
    folder by the one reader for untrusted archives (archives.extract_zip, within the policy's bounds);
    relative sample paths are read from there. Returns the config and the folder its files may come from
    (the bundle's, or the lone config.yaml's own)."""
    if not path:
        raise InputError("give a config.yaml or a config bundle (.zip)")
    upload = Path(path)
    bundle = None
    if upload.suffix.lower() == ".zip":
        bundle = session.folder / "uploaded-config"
        shutil.rmtree(bundle, ignore_errors=True)
        extract_zip(upload, bundle, session.policy.limits.archive(), upload.name)
        upload = bundle / "config.yaml"
        if not upload.is_file():
            raise InputError("the zip has no config.yaml at its top level (expected the app's config bundle)")
    elif upload.suffix.lower() not in (".yaml", ".yml"):
        raise InputError(f"{upload.name}: expected a config.yaml or a config bundle (.zip)")
    elif upload.stat().st_size > 1 * 2**20:
        raise InputError(f"{upload.name}: a config file is at most 1 MiB")
    else:
        bundle = upload.parent  # a lone config's run reads only what lies beside it (and the demos)
    return load_config(upload), bundle


def run_config(session: Session, path: str | None, device: str, dtype: str) -> tuple[str, dict | None]:
    """The /run_config endpoint: a whole run from a config file or bundle; (status line, report or None)."""
    try:
        config, bundle = config_from_upload(session, path)
    except InputError as err:
        return f"{PROBLEM} {session.policy.public(str(err))}", None
    last = None
    for last in run_merge_events(session, config, device or "auto", dtype or "float32", bundle):
        pass
    if last is None or last.report is None:
        return (last.error if last is not None and last.error else f"{PROBLEM} the run stopped"), None
    report = report_dict(last)
    return verdict_line(report), report


def compare_views(session: Session, chosen: list[str]) -> tuple[object, pd.DataFrame, str | None]:
    """The chosen kept runs side by side: overlaid shift curves, a score table, and a zip of their reports."""
    runs = [r for r in session.runs if r.label in (chosen or [])]
    labelled = [(r.label, r.report) for r in runs]
    header, rows = plots.compare_rows(labelled)
    archive = None
    if runs:
        archive = str(_downloads(session) / "compared-runs.zip")
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            for run in runs:
                bundle.write(run.path, run.path.name)
    return plots.compare_figure(labelled), pd.DataFrame(rows, columns=header), archive


def arrival_line(report: dict) -> str:
    """The status above precomputed results: what they are, and that Run recomputes."""
    o = report["options"]
    return (f"{INFO} precomputed: the default demo run ({', '.join(plots.title_of(m) for m in report['methods'])}; "
            f"{o['calibration_samples']} calibration samples, α {o['alpha']}, λ {o['lambda']}), computed once for "
            "exactly these models and options; Run recomputes · " + verdict_line(report).removeprefix(f"{OK} done · "))


def verdict_line(report: dict) -> str:
    """The status after a run: done (or cancelled, with what was kept), and the verdict with the methods'
    titles."""
    line = verdict(report, {m: plots.title_of(m) for m in report["methods"]})
    kept = ", ".join(plots.title_of(m) for m in report["methods"])
    head = f"{WARNING} cancelled: a partial run; what finished is kept ({kept})" if report.get("partial") else f"{OK} done"
    return f"{head} · {line}" if line else head


def report_dict(progress: RunProgress) -> dict:
    assert progress.report is not None
    return json.loads(json.dumps(asdict(progress.report)))


def _merged_folder(session: Session, method: str | None) -> Path:
    """The session's merged model of `method`: a registered method's name, never a path of the caller's."""
    if method not in METHODS:
        raise InputError("run a merge first, then choose one of its methods")
    folder = session.run_folder / method
    if not (folder / "config.json").is_file():
        raise InputError("run a merge first, then choose one of its methods")
    return folder


def _downloads(session: Session) -> Path:
    downloads = session.folder / "downloads"
    downloads.mkdir(exist_ok=True)
    return downloads


def zip_model(session: Session, method: str | None) -> str:
    """A zip of the merged model folder the run saved for `method` (as the CLI writes it)."""
    folder = _merged_folder(session, method)
    return shutil.make_archive(str(_downloads(session) / f"merged-{method}"), "zip", root_dir=folder)


def zip_config_bundle(session: Session) -> str:
    """config.yaml and the sample files it names, zipped: `commerge merge config.yaml` reproduces the run."""
    run = session.run_folder
    if not (run / "config.yaml").is_file():
        raise InputError("run a merge first")
    archive = _downloads(session) / "config-bundle.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for path in [run / "config.yaml", *sorted(p for p in (run / "samples").rglob("*") if p.is_file())]:
            bundle.write(path, path.relative_to(run).as_posix())
    return str(archive)


def push(session: Session, method: str | None, repo_id: str, token: str, private: bool, api=None) -> str:
    """Push the chosen merged model to the Hub; the token is used for this call only."""
    url = push_folder(_merged_folder(session, method), repo_id, token, private, api=api)
    return f"{OK} pushed the {plots.title_of(method)} model to {url}"
