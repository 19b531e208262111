"""The page: models → samples → run → results → export (docs/app.md). Layout and wiring only; every
handler calls a plain function from handlers.py, form.py or session.py."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from ..demo import DEMO_CONFIG, DEMOS, demo_of
from ..errors import InputError
from ..hosting import HOSTED_LIMITS, Limits, Policy, hosted_from
from ..methods import METHODS
from . import handlers
from .form import (ExpertForm, evaluation_needs_labels, marked_problems, marked_sample_problems, model_message,
                   sample_preview, sample_thumbnails)
from .handlers import DEFAULT_METHODS, MAX_EXPERTS
from .marks import PROBLEM, STOPPING
from .session import Sessions

UPLOAD_TYPES = [".jsonl", ".csv", ".txt", ".zip"]
MAX_UPLOAD = "200mb"  # the sample readers' own cap
CSS = """
.cm-progress-row {display: grid; grid-template-columns: 10em 14em 1fr; gap: .8em; align-items: center; margin: .2em 0}
.cm-progress-row progress {width: 100%}
.cm-stage {margin: .2em 0; opacity: .8}
.cm-note {overflow-wrap: break-word}
"""
INTRO = """# Chain of Merges: merge fine-tuned experts and see why it works
Pick a base model and experts fine-tuned from it, give each expert a few calibration samples, and compare
**Chain of Merges (CoM)** with independent layer-wise merging (**RegMean**) and the usual baselines. RegMean solves
every layer on statistics of the unmerged experts; CoM solves the layers in network order on the inputs of the
partially merged model, so the drift that early merges cause is corrected downstream. The page opens on an
offline demo (all-MiniLM-L6-v2 and six experts fine-tuned on real text: tweets, movie, Amazon and NYT
sentiment, chatbot dialogue topics, language ID): press **Run** below to see it. A second demo merges a real
language model (SmolLM2-135M and five experts, each fine-tuned on one kind of text): choose it, or your own
models and samples, under **Models and samples**. Text classifiers (BERT-like), CLIP image classifiers
(zero-shot heads from class names) and causal language models (GPT-2, Llama, Qwen, Mistral; scored by
perplexity) are merged the same way; the family is read from the base model."""
HOSTED_NOTE = """

*This is a hosted instance: models come from the Hub (public ones; no token of this server's is used) or
the demos, samples from files you upload, and each run is bounded to fit a small CPU machine. Your files
are removed when you leave or after an hour. Run it on your own machine (`python app.py`) for local folders,
GPUs and larger runs.*"""
SHOW_VERDICT = ("() => { const el = document.querySelector('#run-status');"
                " if (el) el.scrollIntoView({behavior: 'smooth', block: 'start'}); }")  # a run's end: the verdict in view
INPUTS = "Models and samples: the demo's base and experts are loaded (open to choose another demo or your own)"


IDLE_CANCEL = gr.update(interactive=False, variant="secondary")


def _gpu(fn):
    """On Hugging Face ZeroGPU Spaces a GPU is attached only inside functions marked with spaces.GPU."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(duration=900)(fn)


def page_policy(hosted: bool) -> Policy:
    """The policy of a page: hosted, the visitor's uploads (Gradio's upload folder) and the demos only."""
    from gradio.utils import get_upload_folder

    if not hosted:
        return Policy.local()
    ttl = os.environ.get("COMMERGE_SESSION_TTL_S")  # an owner may shorten (or lengthen) how long files stay
    limits = HOSTED_LIMITS.model_copy(update={"session_ttl_s": float(ttl)}) if ttl else HOSTED_LIMITS
    return Policy.hosted_with([Path(get_upload_folder())], limits)


def build_app(config_path: Path = DEMO_CONFIG, sessions: Sessions | None = None,
              hosted: bool | None = None) -> gr.Blocks:
    """The page, section by section (each `_…_section` lays one out), then its events (each `_wire_…`).

    Hosted or local: the given sessions' policy, else `hosted`, else what the environment says
    (hosting.hosted_from: SPACE_ID, COMMERGE_HOSTED, GRADIO_SERVER_NAME). `launch` refuses to serve a local page
    to the network."""
    if sessions is None:
        if hosted is None:
            hosted = hosted_from(os.environ.get("GRADIO_SERVER_NAME"))
        sessions = Sessions(policy=page_policy(hosted))
    policy = sessions.policy
    sessions.start_sweeper(every=min(60.0, sessions.ttl / 2))
    defaults = handlers.defaults_from(config_path)
    with gr.Blocks(title="Chain of Merges", delete_cache=(3600, 3600)) as app:
        gr.Markdown(INTRO + (HOSTED_NOTE if policy.hosted else ""))
        with gr.Accordion(INPUTS, open=False, elem_id="inputs"):  # Run stays on the first screen
            models = _models_section(defaults, config_path, policy)
            samples = _samples_section(defaults, policy)
        run = _run_section(defaults.options, policy.limits)
        results = _results_section()
        compare = _compare_section()
        export = _export_section()

        _wire_models(models, samples, run, policy)
        _wire_samples(models, samples, policy)
        _wire_run(sessions, models, samples, run, results, compare, export)
        _wire_compare(sessions, compare)
        _wire_export(sessions, results, export)
        _api_run_config(sessions)
        app.load(lambda *refs: _model_notes(policy, *refs), [models.base, *models.models],
                 [models.base_status, *models.notes], api_visibility="private")

        def on_close(request: gr.Request) -> None:
            sessions.close(request.session_hash)

        _wire_arrival(app, config_path, results)
        app.unload(on_close)
    app.commerge_policy = policy  # launch() checks it against the address it listens on
    return app


def _api_run_config(sessions: Sessions) -> None:
    """/run_config for API users: a config.yaml or config bundle (.zip), device and dtype in; the status line
    and report.json out (the /run endpoint takes the page's 49 form values instead). No visible part."""
    with gr.Group(visible=False):
        file = gr.File()  # the handler checks the type, naming what it expects
        device, dtype = gr.Textbox("auto"), gr.Textbox("float32")
        status, report = gr.Textbox(), gr.JSON()
        button = gr.Button()

    @_gpu
    def on_run_config(path, device_name, dtype_name, request: gr.Request):
        return handlers.run_config(sessions.get(request.session_hash), path, device_name, dtype_name)

    button.click(on_run_config, [file, device, dtype], [status, report], concurrency_limit=1,
                 concurrency_id="merge", api_name="run_config")


@dataclass
class _Models:
    demo: gr.Radio
    base: gr.Dropdown
    base_status: gr.Markdown
    hub_note: gr.Markdown
    count: gr.Slider
    cards: list[gr.Group]
    names: list[gr.Textbox]
    models: list[gr.Dropdown]
    notes: list[gr.Markdown]


def _models_section(defaults: handlers.FormDefaults, config_path: Path, policy: Policy) -> _Models:
    gr.Markdown("### Models")
    current = next((d.key for d in DEMOS.values() if d.config == Path(config_path).resolve()), None)
    titles = {d.key: f"{d.name} (prepared when the server starts)" if policy.hosted else d.title for d in DEMOS.values()}
    where = "Hub id" if policy.hosted else "Hub id or local folder"
    demo = gr.Radio([(titles[d.key], d.key) for d in DEMOS.values()], label="Offline demos (fill the form)",
                    value=current, elem_id="demo-choice")
    base = gr.Dropdown(label=f"Base model ({where})", choices=[_choice(defaults.base, policy)],
                       value=defaults.base, allow_custom_value=True, filterable=True)
    base_status = gr.Markdown(model_message(defaults.base, policy=policy), elem_id="base-status")  # full width
    hub_note = gr.Markdown("", elem_id="hub-note")
    count = gr.Slider(1, MAX_EXPERTS, value=len(defaults.experts), step=1, label="Number of experts")
    cards, names, models, notes = [], [], [], []
    for k, row in enumerate(_padded(defaults.experts)):
        with gr.Group(visible=k < len(defaults.experts)) as card:
            with gr.Row():
                names.append(gr.Textbox(row.name, label=f"Expert {k + 1}: task name", scale=1))
                models.append(gr.Dropdown(label=f"model ({where})",
                                          choices=[_choice(row.model, policy)] if row.model else [],
                                          value=row.model or None, allow_custom_value=True, filterable=True, scale=3,
                                          elem_id=f"expert-{k}-model"))
            # under the row, full width: a mismatch names tensors, which a side column would break mid-word
            notes.append(gr.Markdown(model_message(row.model, defaults.base, policy) if row.model else "",
                                     elem_id=f"expert-{k}-status", elem_classes="cm-note"))
        cards.append(card)
    return _Models(demo, base, base_status, hub_note, count, cards, names, models, notes)


@dataclass
class _Samples:
    cards: list[gr.Group]
    calibrations: list[gr.File]
    evaluations: list[gr.File]
    class_names: list[gr.Textbox]
    notes: list[gr.Markdown]
    previews: list[gr.Dataframe]
    galleries: list[gr.Gallery]


def _samples_section(defaults: handlers.FormDefaults, policy: Policy) -> _Samples:
    gr.Markdown("### Samples\nPer expert: calibration samples (text: `.txt` one per line, `.jsonl`/`.csv` with "
                "a `text` column; images: a `.zip` with one folder per class; labels not needed) and optional "
                "evaluation samples (a `label` column or class folders; causal LMs need no labels: they are "
                "scored by perplexity). CLIP builds each task's head from its class names: the labels, or "
                "the list you give.")
    ui = _Samples([], [], [], [], [], [], [])
    for k, row in enumerate(_padded(defaults.experts)):
        with gr.Group(visible=k < len(defaults.experts)) as card:
            with gr.Row():
                ui.calibrations.append(gr.File(row.calibration, label=f"Expert {k + 1}: calibration samples",
                                               file_types=UPLOAD_TYPES, elem_id=f"expert-{k}-calibration"))
                ui.evaluations.append(gr.File(row.evaluation, label=f"Expert {k + 1}: evaluation samples (optional)",
                                              file_types=UPLOAD_TYPES, elem_id=f"expert-{k}-evaluation"))
            ui.class_names.append(gr.Textbox(row.labels, label="class names, comma-separated (CLIP; optional)",
                                             placeholder="e.g. airplane, car, ship", elem_id=f"expert-{k}-classes"))
            note, frame, thumbnails = _on_samples(policy, row.calibration, row.evaluation, defaults.base)
            ui.notes.append(gr.Markdown(note, elem_id=f"samples-{k}-status"))
            with gr.Accordion("first samples", open=False):
                ui.previews.append(gr.Dataframe(frame, show_label=False, max_height=220))
                ui.galleries.append(gr.Gallery(thumbnails, label="some of the images", columns=5, height=140,
                                               elem_id=f"expert-{k}-thumbnails"))
        ui.cards.append(card)
    return ui


@dataclass
class _Run:
    methods: gr.CheckboxGroup
    alpha: gr.Slider
    task_lambda: gr.Slider
    samples: gr.Slider
    max_length: gr.Slider
    evaluation_samples: gr.Slider
    device: gr.Radio
    dtype: gr.Radio
    run: gr.Button
    cancel: gr.Button
    progress: gr.HTML

    def options(self) -> list:
        """The option controls a demo fills, in on_demo's order."""
        return [self.alpha, self.task_lambda, self.samples, self.max_length, self.evaluation_samples]


def _run_section(options: dict, limits: Limits) -> _Run:
    gr.Markdown("## Run")
    methods = gr.CheckboxGroup([(m.title, m.name) for m in METHODS.values()], value=DEFAULT_METHODS,
                               label="Methods to compare")
    with gr.Row():
        alpha = gr.Slider(0.0, 1.0, value=options["alpha"], step=0.05, label="α (CoM, RegMean, RegMean++ shrink)",
                          elem_id="alpha")
        task_lambda = gr.Slider(0.05, 1.0, value=options["lambda"], step=0.05, label="λ (task arithmetic, TIES, DARE)")
        samples = gr.Slider(4, min(1024, limits.calibration_samples), value=options["calibration_samples"], step=4,
                            label="calibration samples per expert")
        max_length = gr.Slider(8, min(512, limits.max_length), value=options["max_length"], step=8,
                               label="max length (tokens)")
        evaluation_samples = gr.Slider(0, min(2000, limits.evaluation_samples), value=options["evaluation_samples"] or 0,
                                       step=10, label="evaluation samples per task (0: all)")
    with gr.Row():
        device = gr.Radio(["auto", "cpu", "cuda"], value="auto", label="device", info=handlers.device_note())
        dtype = gr.Radio(["float32", "bfloat16", "float16"], value="float32", label="dtype")
    with gr.Row():
        run = gr.Button("Run", variant="primary", elem_id="run")
        cancel = gr.Button("Cancel", variant="secondary", interactive=False, elem_id="cancel")  # live while a run goes
    progress = gr.HTML("", elem_id="progress")
    return _Run(methods, alpha, task_lambda, samples, max_length, evaluation_samples, device, dtype, run, cancel,
                progress)


@dataclass
class _Results:
    report: gr.State
    status: gr.Markdown
    shown: gr.CheckboxGroup
    heat_method: gr.Radio
    normalized: gr.Radio
    json: gr.JSON
    views: list  # shift plot, held-out plot, heatmap, scores, bars, costs, warnings: what result_views fills


HOW_TO_READ = """**How to read this.** Each line is one merge. At each layer, the *covariate shift* is how far
the inputs the layer receives in the merged model (X̂) are from those it receives in the expert (X):
‖X̂ − X‖ / ‖X‖ on the calibration samples, mean over tasks. 0: the layer sees exactly what the expert would.

Independent merges (RegMean, averaging) let the shift grow with depth, because each layer is merged as if
the layers before it were the expert's. Chain of Merges fits every layer to the inputs the merged model
really produces, so its curve should stay lower towards the last layers. A lower curve means a closer match
to the experts on these samples, not by itself a higher score: read it with the scores below."""


HELD_OUT = """**Does it carry over?** The curves above are measured on the calibration samples, the very samples
the regression merges were fitted to: a merge can match the experts there and still drift on other text. Here
each block's output is compared with the expert's on the calibration samples (solid) and on the evaluation
samples (dashed), which no merge saw. A dashed line far above its solid one is in-sample fit; on the
language-model demo CoM's does so (docs/results.md, "The language-model demo")."""


def _results_section() -> _Results:
    gr.Markdown("## Results")
    report = gr.State(None)
    status = gr.Markdown("", elem_id="run-status")
    with gr.Row():
        shown = gr.CheckboxGroup(["mean"], value=["mean"], label="Shift curves: mean over tasks and/or each task")
    with gr.Row():
        shift_plot = gr.Plot(label="Covariate shift per layer", elem_id="shift-plot", scale=3)
        gr.Markdown(HOW_TO_READ, elem_id="how-to-read")
    with gr.Row():
        heldout_plot = gr.Plot(label="Shift on held-out samples", elem_id="heldout-plot", scale=3)
        gr.Markdown(HELD_OUT, elem_id="held-out-note")
    heat_method = gr.Radio([], label="Heatmap of method", value=None)
    heatmap = gr.Plot(label="Shift per task and layer", elem_id="heatmap")
    normalized = gr.Radio([("raw scores", False), ("normalized to each expert", True)], value=False, label="Scores")
    scores = gr.Dataframe(label="Scores", elem_id="scores", interactive=False, wrap=True,
                          headers=["model", "each task's score", "average"])  # named, not "1 2 3", before a run
    bars = gr.Plot(label="Scores per task", elem_id="bars")
    costs = gr.Dataframe(label="Time and peak memory", elem_id="costs", interactive=False,
                         headers=["method", "seconds", "peak memory (MiB)", "shift at last layer",
                                  "held-out shift, last block", "warnings"])
    warnings = gr.Markdown("")
    with gr.Accordion("report.json", open=False):
        report_json = gr.JSON(label="report")
    return _Results(report, status, shown, heat_method, normalized, report_json,
                    [shift_plot, heldout_plot, heatmap, scores, bars, costs, warnings])


@dataclass
class _Compare:
    runs: gr.CheckboxGroup
    plot: gr.Plot
    table: gr.Dataframe
    download: gr.File


def _compare_section() -> _Compare:
    gr.Markdown("## Compare runs\nEvery finished run of this session is kept (its options in its name). "
                "Tick two or more to overlay their shift curves (a line style per run) and put their scores side "
                "by side; the zip holds their report.json files.")
    runs = gr.CheckboxGroup([], value=[], label="Runs", elem_id="compare-runs")
    plot = gr.Plot(label="Shift per layer, runs compared", elem_id="compare-plot")
    table = gr.Dataframe(label="Runs side by side", elem_id="compare-table", interactive=False, wrap=True,
                         headers=handlers.plots.compare_rows([])[0])
    download = gr.File(label="the compared runs' reports (.zip)", interactive=False)
    return _Compare(runs, plot, table, download)


def _wire_compare(sessions: Sessions, compare: _Compare) -> None:
    def on_compare(chosen, request: gr.Request):
        return handlers.compare_views(sessions.get(request.session_hash), chosen)

    compare.runs.change(on_compare, compare.runs, [compare.plot, compare.table, compare.download],
                        api_visibility="private")


@dataclass
class _Export:
    method: gr.Dropdown
    zip_button: gr.Button
    model_file: gr.File
    report_file: gr.File
    config_file: gr.File
    bundle_file: gr.File
    repo_id: gr.Textbox
    token: gr.Textbox
    private: gr.Checkbox
    push_button: gr.Button
    push_note: gr.Markdown


def _export_section() -> _Export:
    gr.Markdown("## Export")
    with gr.Row():
        method = gr.Dropdown([], label="merged model of method", value=None)
        zip_button = gr.Button("Zip the merged model")
        model_file = gr.File(label="merged model (.zip)", interactive=False)
    with gr.Row():
        report_file = gr.File(label="report.json", interactive=False)
        config_file = gr.File(label="config.yaml (its samples: in the zip beside it)", interactive=False)
        bundle_file = gr.File(label="config.yaml + samples (.zip)", interactive=False)
    with gr.Row():
        repo_id = gr.Textbox(label="Hub repo id", placeholder="your-name/merged-model")
        token = gr.Textbox(label="Hub token (write access; used once, never stored)", type="password")
        private = gr.Checkbox(True, label="private")
        push_button = gr.Button("Push to the Hub")
    push_note = gr.Markdown("")
    return _Export(method, zip_button, model_file, report_file, config_file, bundle_file, repo_id, token, private,
                   push_button, push_note)


def _wire_models(models: _Models, samples: _Samples, run: _Run, policy: Policy) -> None:
    def on_count(n: float):
        visible = [gr.update(visible=k < int(n)) for k in range(MAX_EXPERTS)]
        return visible + visible

    models.count.change(on_count, models.count, models.cards + samples.cards, api_visibility="private")

    demo_outputs = [models.base, models.count, *models.names, *models.models, *samples.calibrations,
                    *samples.evaluations, *samples.class_names, *run.options()]

    def on_demo(key: str | None):
        if key not in DEMOS:
            return [gr.update()] * len(demo_outputs)
        d = handlers.defaults_from(DEMOS[key].config)
        filled = _padded(d.experts)
        o = d.options
        return [gr.update(choices=[_choice(d.base, policy)], value=d.base), len(d.experts),
                *(r.name for r in filled), *(gr.update(choices=[_choice(r.model, policy)] if r.model else [],
                                                       value=r.model or None)
                                             for r in filled),
                *(r.calibration for r in filled), *(r.evaluation for r in filled), *(r.labels for r in filled),
                o["alpha"], o["lambda"], o["calibration_samples"], o["max_length"], o["evaluation_samples"] or 0]

    models.demo.input(on_demo, models.demo, demo_outputs, api_visibility="private")
    def on_model(ref, base=None):
        return model_message(ref, base, policy)

    models.base.change(on_model, models.base, models.base_status, api_visibility="private")
    for model, note in zip(models.models, models.notes):
        model.change(on_model, [model, models.base], note, api_visibility="private")
        models.base.change(on_model, [model, models.base], note, api_visibility="private")
    for box in [models.base, *models.models]:
        box.key_up(lambda query, base: _suggest(query, base, policy), [box, models.base], [box, models.hub_note],
                   trigger_mode="always_last", api_visibility="private")


def _wire_samples(models: _Models, samples: _Samples, policy: Policy) -> None:
    def on_samples(calibration, evaluation, base):
        return _on_samples(policy, calibration, evaluation, base)

    for calibration, evaluation, note, preview, gallery in zip(samples.calibrations, samples.evaluations,
                                                                samples.notes, samples.previews, samples.galleries):
        for box in (calibration, evaluation, models.base):
            box.change(on_samples, [calibration, evaluation, models.base], [note, preview, gallery],
                       api_visibility="private", concurrency_limit=2, concurrency_id="preview")


def _wire_run(sessions: Sessions, models: _Models, samples: _Samples, run: _Run, results: _Results,
              compare: _Compare, export: _Export) -> None:
    form_inputs = [models.base, models.count, *models.names, *models.models, *samples.calibrations,
                   *samples.evaluations, *samples.class_names, run.methods, *run.options(), run.device, run.dtype]
    run_outputs = [run.cancel, run.run, run.progress, results.status, results.report, results.json, results.shown,
                   results.heat_method, *results.views, export.method, export.report_file, export.config_file,
                   compare.runs]

    @_gpu
    def on_run(request: gr.Request, *values):
        session = sessions.get(request.session_hash)
        try:
            config = _config_from_form(values, session.policy)
        except InputError as err:
            yield {results.status: f"{PROBLEM} {session.policy.public(str(err))}", run.progress: ""}
            return
        yield {run.run: gr.update(interactive=False, value="Running…"),
               run.cancel: gr.update(interactive=True, variant="stop")}
        for update in handlers.run_merge_events(session, config, values[-2], values[-1]):
            if update.report is None:
                yield {run.progress: update.html(),
                       results.status: update.error if update.error else f"running: {update.stage}",
                       **({run.run: gr.update(interactive=True, value="Run"), run.cancel: IDLE_CANCEL}
                          if update.error else {})}
                continue
            report = handlers.report_dict(update)
            method_choices = [(handlers.plots.title_of(m), m) for m in report["methods"]]
            first = next(iter(report["methods"]))
            yield {
                run.run: gr.update(interactive=True, value="Run"), run.cancel: IDLE_CANCEL,
                run.progress: update.html(), results.status: handlers.verdict_line(report), results.report: report, results.json: report,
                results.shown: gr.update(choices=["mean", *report["experts"]], value=["mean"]),
                results.heat_method: gr.update(choices=method_choices, value=first),
                **_views_update(handlers.result_views(report, ["mean"], "com", False), results.views),
                export.method: gr.update(choices=method_choices, value=first),
                export.report_file: str(session.run_folder / "report.json"),
                export.config_file: str(session.run_folder / "config.yaml"),
                compare.runs: gr.update(choices=[r.label for r in session.runs],
                                        value=[r.label for r in session.runs[-2:]]),
            }

    run.run.click(on_run, form_inputs, run_outputs, concurrency_limit=1, concurrency_id="merge", api_name="run",
                  show_progress="minimal").then(None, js=SHOW_VERDICT)

    def on_cancel(request: gr.Request) -> str:
        session = sessions.get(request.session_hash)
        if not session.running:
            return "Nothing is running."
        session.cancel.set()
        return f"{STOPPING} cancelling after the current layer group…"

    run.cancel.click(on_cancel, None, results.status, queue=False, api_name="cancel")

    def on_toggle(report, shown_now, method, norm):
        if not report:
            return [gr.update()] * len(results.views)
        return list(_views_update(handlers.result_views(report, shown_now, method, norm), results.views).values())

    for control in (results.shown, results.heat_method, results.normalized):
        control.change(on_toggle, [results.report, results.shown, results.heat_method, results.normalized],
                       results.views, api_visibility="private")


def _wire_export(sessions: Sessions, results: _Results, export: _Export) -> None:
    def on_zip(method, request: gr.Request):
        try:
            return handlers.zip_model(sessions.get(request.session_hash), method), ""
        except InputError as err:
            return None, f"{PROBLEM} {err}"

    export.zip_button.click(on_zip, export.method, [export.model_file, export.push_note], api_name="zip_model")

    def on_bundle(report, request: gr.Request):
        if not report:
            return None
        try:
            return handlers.zip_config_bundle(sessions.get(request.session_hash))
        except InputError:  # precomputed results: this session has run nothing to bundle yet
            return None

    results.report.change(on_bundle, results.report, export.bundle_file, api_visibility="private")

    def on_push(method, repo, secret, is_private, request: gr.Request):
        try:
            message = handlers.push(sessions.get(request.session_hash), method, repo, secret, is_private)
        except InputError as err:
            message = f"{PROBLEM} {err}"
        return message, ""  # the token box is cleared either way

    export.push_button.click(on_push, [export.method, export.repo_id, export.token, export.private],
                             [export.push_note, export.token], api_visibility="private")


def _wire_arrival(app: gr.Blocks, config_path: Path, results: _Results) -> None:
    """On page load: the default run's precomputed results, if they exist for exactly these models and options."""
    outputs = [results.status, results.report, results.json, results.shown, results.heat_method, *results.views]

    def on_arrival():
        report = handlers.precomputed_report(config_path)
        if report is None:
            return [gr.update()] * len(outputs)
        methods = [(handlers.plots.title_of(m), m) for m in report["methods"]]
        views = handlers.result_views(report, ["mean"], "com", False)
        return [handlers.arrival_line(report), report, report,
                gr.update(choices=["mean", *report["experts"]], value=["mean"]),
                gr.update(choices=methods, value=methods[0][1]),
                *_views_update(views, results.views).values()]

    app.load(on_arrival, None, outputs, api_visibility="private")


def _model_notes(policy: Policy, base_ref: str, *model_refs: str) -> list[str]:
    """On page load: the demo may have finished building since the page was made, so check the models again."""
    return [model_message(base_ref, policy=policy)] + [model_message(m, base_ref, policy) if m else ""
                                                       for m in model_refs]


def _choice(ref: str, policy: Policy) -> tuple[str, str]:
    """A model as the dropdown shows it: hosted, a demo's model by its demo and name, not its server path."""
    demo = demo_of(ref)
    shown = f"demo {demo.key}: {Path(ref).name}" if policy.hosted and demo is not None else ref
    return shown, ref


def _padded(experts: list[ExpertForm]) -> list[ExpertForm]:
    """The form's rows: the given experts, then empty ones up to MAX_EXPERTS."""
    return experts + [ExpertForm("", "", None, None)] * (MAX_EXPERTS - len(experts))


def _config_from_form(values: tuple, policy: Policy):
    """The form's config, or one InputError listing every problem at once: what the form marks ✘ beside the
    models, a missing input, and what the policy refuses (bounds; hosted, sample files)."""
    base, count, rest = values[0], int(values[1]), values[2:]
    names, models = rest[:MAX_EXPERTS], rest[MAX_EXPERTS:2 * MAX_EXPERTS]
    calibrations, evaluations = rest[2 * MAX_EXPERTS:3 * MAX_EXPERTS], rest[3 * MAX_EXPERTS:4 * MAX_EXPERTS]
    class_names = rest[4 * MAX_EXPERTS:5 * MAX_EXPERTS]
    methods, alpha, task_lambda, samples, max_length, evaluation = rest[5 * MAX_EXPERTS:5 * MAX_EXPERTS + 6]
    experts = [ExpertForm(names[k], models[k] or "", calibrations[k], evaluations[k], class_names[k] or "")
               for k in range(count)]
    marked = marked_problems(base or "", experts, policy) + marked_sample_problems(base or "", experts, policy)
    others: list[str] = []
    config = None
    try:
        config = handlers.build_config(base, experts, methods, alpha, task_lambda, samples, max_length,
                                       evaluation_samples=int(evaluation or 0) or None)
    except InputError as err:
        others.append(str(err))
    if config is not None:
        others += handlers.admission_problems(policy, config, models=False)
    if marked:
        raise InputError(f"fix what the form marks {PROBLEM} first: " + " · ".join(marked + others))
    if others:
        raise InputError(" · ".join(others))
    return config


def _views_update(views: handlers.ResultViews, outputs: list) -> dict:
    values = [views.shift, views.heldout, views.heatmap, views.scores, views.bars, views.costs, views.warnings]
    return dict(zip(outputs, values))


def _suggest(query: str, base: str, policy: Policy):
    choices, note = handlers.hub_suggestions(query, base, policy)
    if not choices:
        return gr.update(), note
    return gr.update(choices=choices), note


def _on_samples(policy: Policy, calibration: str | None, evaluation: str | None, base: str | None):
    cal_rows, cal_note = sample_preview(calibration, need_labels=False, policy=policy)
    eval_rows, eval_note = sample_preview(evaluation, need_labels=evaluation_needs_labels(base, policy), policy=policy)
    return (_sample_note(cal_note, eval_note), _preview_frame(cal_rows, eval_rows),
            sample_thumbnails(calibration, policy=policy))


def _sample_note(calibration: str, evaluation: str) -> str:
    parts = [f"calibration: {calibration}" if calibration else "calibration: none yet",
             f"evaluation: {evaluation}" if evaluation else "evaluation: none (scores are skipped)"]
    return " · ".join(parts)


def _preview_frame(calibration: list[list], evaluation: list[list]):
    import pandas as pd

    rows = [["calibration", text, label] for text, label in calibration]
    rows += [["evaluation", text, label] for text, label in evaluation]
    return pd.DataFrame(rows, columns=["file", "text", "label"])


def launch(app: gr.Blocks, trust_network: bool = False, **kwargs) -> None:
    """Queue (one merge at a time per process, which holds one GPU), upload cap, and the theme's CSS.

    Refuses to serve a local-mode page where the app must run hosted (hosting.hosted_from: on Spaces, with
    COMMERGE_HOSTED=1, or on an address other than loopback without `trust_network`)."""
    server_name = kwargs.get("server_name") or os.environ.get("GRADIO_SERVER_NAME")
    policy = getattr(app, "commerge_policy", None)
    if hosted_from(server_name, trust_network) and not (policy is not None and policy.hosted):
        raise RuntimeError(f"this page was built in local mode (it reads server folders), and serving it on "
                           f"{server_name or 'this address'} needs hosted mode: build it with hosted=True, or say the "
                           "network is trusted (--trust-network) to serve local mode to it")
    app.queue(default_concurrency_limit=4).launch(max_file_size=MAX_UPLOAD, css=CSS, **kwargs)
