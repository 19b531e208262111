"""The app's handlers as plain functions: form checks, config building, the background run, views, export."""

import json
import re
import shutil
import threading
import zipfile
from pathlib import Path

import pytest

import commerge_ui
from commerge_ui.cli import main as cli_main
from commerge_ui.errors import InputError
from commerge_ui.ui import handlers
from commerge_ui.ui.form import (ExpertForm, evaluation_needs_labels, form_config, model_message, sample_preview,
                                 sample_thumbnails)
from commerge_ui.ui import marks
from commerge_ui.ui.session import Sessions

from conftest import make_base
from tiny_families import make_lm_setup, write_image_samples

FAST = {"alpha": 0.9, "task_lambda": 0.3, "samples": 16, "max_length": 16}


# Code points drawn as emoji by default (Unicode's Emoji_Presentation, the part below U+1F000), the selector that
# asks for emoji drawing, and everything from U+1F000 on: a browser without a colour-emoji font shows a box.
EMOJI = {*range(0x231A, 0x231C), *range(0x23E9, 0x23ED), 0x23F0, 0x23F3, *range(0x23F8, 0x23FB), 0x25FD, 0x25FE,
         0x2614, 0x2615, *range(0x2648, 0x2654), 0x267F, 0x2693, 0x26A1, 0x26AA, 0x26AB, 0x26BD, 0x26BE, 0x26C4,
         0x26C5, 0x26CE, 0x26D4, 0x26EA, 0x26F2, 0x26F3, 0x26F5, 0x26FA, 0x26FD, 0x2705, 0x270A, 0x270B, 0x2728,
         0x274C, 0x274E, *range(0x2753, 0x2756), 0x2757, *range(0x2795, 0x2798), 0x27B0, 0x27BF, 0x2B1B, 0x2B1C,
         0x2B50, 0x2B55, 0xFE0F}


def test_no_emoji_where_a_plain_font_shows_a_box():
    """Debian's chromium without a colour-emoji font drew the page's ✅/❌ marks as empty boxes: the package's
    sources (everything the page and the CLI print) hold no emoji, and the marks are plain symbols."""
    found = [f"{path.name}:{number}: {line.strip()}"
             for path in sorted(Path(commerge_ui.__file__).parent.rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if any(ord(ch) in EMOJI or ord(ch) >= 0x1F000 for ch in line)]
    assert found == []
    symbols = [marks.OK, marks.PROBLEM, marks.WARNING, marks.INFO, marks.PENDING, marks.STOPPING]
    assert len(set(symbols)) == len(symbols) and all(len(s) == 1 and ord(s) not in EMOJI for s in symbols)


def experts_of(tiny, names=("task0", "task1")):
    return [ExpertForm(n, str(tiny.experts[n]), str(tiny.calibration[n]), str(tiny.evaluation[n])) for n in names]


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """One real run of the app's background merge on the tiny experts."""
    sessions = Sessions(tmp_path_factory.mktemp("sessions"))
    session = sessions.get("first")
    config = handlers.build_config(str(tiny.base), experts_of(tiny), ["com", "regmean", "average"], **FAST)
    updates = list(handlers.run_merge_events(session, config, "cpu", "float32"))
    return sessions, session, updates


def test_model_messages(tmp_path, tiny):
    assert model_message(str(tiny.experts["task0"]), str(tiny.base)).startswith("✔")
    assert "matches the base" in model_message(str(tiny.experts["task0"]), str(tiny.base))
    make_base(tmp_path / "wide", hidden=48)
    mismatch = model_message(str(tmp_path / "wide"), str(tiny.base))
    assert mismatch.startswith("✘") and "does not match the base" in mismatch and "[48]" in mismatch
    assert model_message(str(tmp_path / "none"), str(tiny.base)).startswith("✘")
    assert model_message("", str(tiny.base)) == ""


def test_run_refuses_what_the_form_marks(tmp_path, tiny):
    from commerge_ui.ui.form import marked_problems

    make_base(tmp_path / "wide", hidden=48)
    forms = experts_of(tiny)
    assert marked_problems(str(tiny.base), forms) == []
    forms[1].model = str(tmp_path / "wide")
    forms.append(ExpertForm("hub", "someone/not-cached-here", None, None))  # unreachable Hub id: the run decides
    problems = marked_problems(str(tiny.base), forms)
    assert len(problems) == 1 and problems[0].startswith("expert 2 (task1): ")
    assert problems[0].split(": ", 1)[1] == model_message(str(tmp_path / "wide"), str(tiny.base))[2:]
    assert marked_problems(str(tmp_path / "nothing-here"), forms[:1])[0].startswith("base: ")


def test_sample_previews_and_their_errors(tmp_path, tiny):
    rows, note = sample_preview(str(tiny.evaluation["task0"]), need_labels=True)
    assert len(rows) == 5 and note == "✔ task0_eval.jsonl: 16 samples, 2 labels"
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert sample_preview(str(empty), need_labels=False) == ([], "✘ empty.txt: no samples")
    broken = tmp_path / "broken.csv"
    broken.write_text("text,label\nfine,1\n,0\n")
    rows, note = sample_preview(str(broken), need_labels=True)
    assert rows == [] and note.startswith("✘ broken.csv:3:") and "text" in note
    rows, note = sample_preview(str(tiny.calibration["task0"]), need_labels=True)
    assert note.startswith("✘") and "no label" in note


def test_form_becomes_a_config(tiny):
    forms = experts_of(tiny) + [ExpertForm("", "", None, None)]
    forms[1].name = "my task/../x"
    config = handlers.build_config(str(tiny.base), forms, ["regmean", "com"], **FAST)
    assert [e.name for e in config.experts] == ["task0", "my_task_.._x"]
    assert config.methods == ["com", "regmean"]  # network-independent, registry order
    assert config.options.calibration_samples == 16 and config.options.task_lambda == 0.3


@pytest.mark.parametrize("change, message", [
    (lambda f: setattr(f[0], "calibration", None), "expert 'task0': upload calibration samples"),
    (lambda f: [setattr(e, "model", "") for e in f], "add at least one expert"),
])
def test_incomplete_forms_are_refused(tiny, change, message):
    forms = experts_of(tiny)
    change(forms)
    with pytest.raises(InputError, match=message):
        handlers.build_config(str(tiny.base), forms, ["com"], **FAST)
    with pytest.raises(InputError, match="at least one method"):
        handlers.build_config(str(tiny.base), experts_of(tiny), [], **FAST)


def test_background_run_reports_progress_then_the_report(finished):
    _, session, updates = finished
    last = updates[-1]
    assert last.error is None and last.report is not None
    assert set(last.report.methods) == {"com", "regmean", "average"}
    page = last.html()
    assert page.count("<progress") == 5  # overall, references, three methods
    for method in ("com", "regmean", "average"):  # the times said are the table's
        result = last.report.methods[method]
        assert f"merged in {result.seconds:.1f} s, scored in {result.score_seconds:.1f} s" in page
    for name in ("report.json", "config.yaml", "samples/task0_calibration.jsonl", "com/config.json",
                 "average/config.json"):
        assert (session.run_folder / name).is_file(), name
    assert not session.running


def test_progress_rows_phases_and_overall_eta_by_hand():
    from commerge_ui.engine import ProgressEvent
    from commerge_ui.ui.session import RunProgress

    progress = RunProgress(["com", "average"])
    for t, event in [(0, ProgressEvent("", 0, 2, "expert t0", "references")),
                     (1, ProgressEvent("", 1, 2, "expert t1", "references")),
                     (2, ProgressEvent("", 2, 2, "", "references")),
                     (2, ProgressEvent("com", 0, 0, "", "merge")),
                     (3, ProgressEvent("com", 1, 4, "layer.0.q"))]:
        progress.on_event(event, now=t)
    assert progress.rows[""].seconds == {"references": 2} and progress.rows[""].done
    assert progress.rows["com"].eta(now=3) == 3.0  # 1 s per group, 3 left
    # no method finished yet: the first rates stand in. Scoring took 1 s per model, so a method's scoring (1 task)
    # 1 s; CoM merges at 1 s per group, so a merge 4 s: CoM 3 s + 1 s left, Average 4 s + 1 s
    assert progress.overall(now=3) == ((1 + 0.5 * 0.25 + 0) / 3, 9.0)
    assert RunProgress(["com"]).overall(now=0) == (0.0, None)  # nothing measured: no ETA
    assert "time left known after the first measured step" in RunProgress(["com"]).html()
    for t, event in [(6, ProgressEvent("com", 4, 4, "layer.1.out")), (6, ProgressEvent("com", 0, 2, "t0", "score")),
                     (8, ProgressEvent("com", 2, 2, "", "score")), (8, ProgressEvent("average", 0, 0, "", "merge"))]:
        progress.on_event(event, now=t)
    assert progress.rows["com"].done and progress.rows["com"].seconds == {"merge": 4, "score": 2}
    # average: CoM's merge time (4 s) minus the 1 s it has run, then CoM's scoring time (2 s)
    assert progress.overall(now=9) == ((1 + 1 + 0) / 3, 5.0)
    progress.error = "Cancelled: nothing was written"
    page = progress.html()
    assert "stopped while merging" in page and "ETA" not in page and "done: merged in 4.0 s, scored in 2.0 s" in page


def test_a_demo_build_has_a_row_that_moves_with_an_eta():
    from commerge_ui.ui.session import RunProgress

    progress = RunProgress(["com"], building=True)
    progress.build.phase_began = 0.0
    progress.on_log("LM demo: fine-tuning expert 2/5 'movies' on cpu: step 20/50, loss 2.1", now=14.0)
    assert (progress.build.step, progress.build.total) == (280, 1000)  # (1 + 20/50) of 5 experts
    assert progress.overall(now=14.0) == (0.28, 36.0)  # 14 s for 28 %: 36 s for the other 72 %
    page = progress.html()
    assert "Demo build" in page and "building 280/1000" in page and "the demo's build: 28 %" in page
    progress.on_log("LM demo: 5 experts ready in 50s (folder)", now=50.0)
    assert progress.build.done and progress.overall(now=50.0)[1] is None  # the run's own rates come next


def test_runs_are_kept_and_compared(finished, tiny):
    sessions, _, _ = finished
    session = sessions.get("compare")
    for alpha in (0.9, 0.5):
        config = handlers.build_config(str(tiny.base), experts_of(tiny), ["com", "average"],
                                       **{**FAST, "alpha": alpha})
        assert list(handlers.run_merge_events(session, config, "cpu", "float32"))[-1].report is not None
    labels = [r.label for r in session.runs]
    assert [label.split(",")[0] for label in labels] == ["run 1: α 0.9", "run 2: α 0.5"]
    figure, table, archive = handlers.compare_views(session, labels)
    assert [t.name for t in figure.data] == ["run 1 · Chain of Merges", "run 1 · Average", "run 2 · Chain of Merges",
                                             "run 2 · Average"]
    assert [t.line.dash for t in figure.data] == ["solid", "solid", "dash", "dash"]
    com = {r.label: r.report["methods"]["com"] for r in session.runs}
    assert list(figure.data[2].y)[-1] == pytest.approx(
        sum(v[-1] for v in com[labels[1]]["shift"].values()) / len(com[labels[1]]["shift"]))
    assert list(table["run"]) == [labels[0], labels[0], labels[1], labels[1]]
    assert table["shift at last layer"][0] != table["shift at last layer"][2]  # α changed CoM's drift
    held = sum(v[-1] for v in com[labels[1]]["heldout_shift"].values()) / len(com[labels[1]]["heldout_shift"])
    assert table["held-out shift, last block"][2] == f"{held:.3f}"  # text: every cell shows its decimals
    assert all(re.fullmatch(r"\d+\.\d", v) for v in table["average score"])  # "75.0", never "75"
    with zipfile.ZipFile(archive) as bundle:
        assert sorted(bundle.namelist()) == ["run-1.json", "run-2.json"]
        assert json.loads(bundle.read("run-2.json"))["options"]["alpha"] == 0.5
    figure, table, archive = handlers.compare_views(session, [])
    assert not figure.data and table.empty and archive is None


def test_result_views_follow_the_toggles(finished):
    _, _, updates = finished
    report = handlers.report_dict(updates[-1])
    views = handlers.result_views(report, ["mean"], "com", normalized=False)
    assert [t.name for t in views.shift.data] == ["Chain of Merges (mean)", "RegMean (mean)", "Average (mean)"]
    assert len(views.shift.data[0].y) == len(report["layers"])
    assert [t.name for t in views.heldout.data] == [f"{m} · {kind}" for m in ("Chain of Merges", "RegMean", "Average")
                                                    for kind in ("calibration", "held-out")]
    held = report["methods"]["regmean"]["heldout_shift"]
    assert list(views.heldout.data[3].y) == pytest.approx([sum(v[b] for v in held.values()) / len(held)
                                                           for b in range(len(held["task0"]))])
    assert views.heldout.data[3].line.dash == "dash"
    assert list(views.costs["held-out shift, last block"])[1] == pytest.approx(
        sum(v[-1] for v in held.values()) / len(held), abs=1e-4)
    unmeasured = {**report, "methods": {m: {**r, "heldout_shift": {}} for m, r in report["methods"].items()}}
    figure = handlers.result_views(unmeasured, ["mean"], "com", normalized=False).heldout
    assert not figure.data and "not measured" in figure.layout.annotations[0].text
    views = handlers.result_views(report, ["task1"], "regmean", normalized=True)
    assert [t.name for t in views.shift.data] == ["Chain of Merges · task1", "RegMean · task1", "Average · task1"]
    assert list(views.heatmap.data[0].y) == ["task0", "task1"]
    assert list(views.scores["model"]) == ["base", "experts", "Chain of Merges", "RegMean", "Average"]
    assert list(views.scores.iloc[1, 1:]) == ["100.0", "100.0", "100.0"]  # experts normalized to themselves, in %
    assert list(views.scores.columns) == ["model", "task0 (%)", "task1 (%)", "average (%)"]
    for column in views.scores.columns[1:]:  # the best merge of each column is marked, and only merges
        marked = [row for row, cell in zip(views.scores["model"], views.scores[column]) if cell.endswith("★ best")]
        assert marked and not {"base", "experts"} & set(marked)
        best = max(float(c.split()[0]) for c in views.scores[column][2:])
        assert all(float(views.scores[column][list(views.scores["model"]).index(m)].split()[0]) == best
                   for m in marked)
    assert len(views.bars.data) == 5 and list(views.costs["method"])[0] == "Chain of Merges"


def test_exports_reproduce_the_run_with_the_cli(finished, tmp_path, capsys):
    _, session, _ = finished
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(session.run_folder / "config.yaml", alone)  # without the bundle's samples/: says what to do
    assert (alone / "config.yaml").read_text().startswith("# commerge_ui run config.")
    assert cli_main(["merge", str(alone / "config.yaml"), "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "sample file not found (a bundle's config: unzip config-bundle.zip" in capsys.readouterr().err
    with zipfile.ZipFile(handlers.zip_model(session, "com")) as archive:
        assert {"config.json", "model.safetensors", "README.md", "heads/task0/config.json"} <= set(archive.namelist())
    with zipfile.ZipFile(handlers.zip_config_bundle(session)) as archive:
        archive.extractall(tmp_path / "bundle")
    assert cli_main(["merge", str(tmp_path / "bundle" / "config.yaml"), "--out", str(tmp_path / "again"),
                     "--quiet"]) == 0
    first = json.loads((session.run_folder / "report.json").read_text())
    again = json.loads((tmp_path / "again" / "report.json").read_text())
    assert again["methods"]["com"]["scores"] == first["methods"]["com"]["scores"]
    with pytest.raises(InputError, match="run a merge first"):
        handlers.zip_model(session, "ties")


def test_push_uses_the_token_once_and_names_the_model(finished):
    from test_hub import StandInHub

    _, session, _ = finished
    hub = StandInHub()
    assert handlers.push(session, "com", "me/merged", "hf_secret", True, api=hub).startswith("✔ pushed the Chain")
    assert hub.calls[-1] == ("upload_folder", "me/merged", str(session.run_folder / "com"))
    for path in session.folder.rglob("*"):
        assert not path.is_file() or b"hf_secret" not in path.read_bytes()


def test_cancel_keeps_the_previous_results(finished, tiny):
    _, session, _ = finished
    before = (session.run_folder / "report.json").read_text()
    config = handlers.build_config(str(tiny.base), experts_of(tiny), ["com"], **FAST)
    session.cancel = CancelAfter(polls=3)  # as if Cancel were pressed after the third layer group
    last = list(handlers.run_merge_events(session, config, "cpu", "float32"))[-1]
    assert last.report is None and last.error.startswith("Cancelled")
    assert (session.run_folder / "report.json").read_text() == before
    assert not [p for p in session.folder.iterdir() if "partial" in p.name]


def test_cancel_after_a_method_finished_keeps_it_as_a_partial_run(tmp_path, tiny):
    session = Sessions(tmp_path / "s").get("x")
    config = handlers.build_config(str(tiny.base), experts_of(tiny), ["com", "regmean", "average"], **FAST)
    session.cancel = CancelOnce(lambda: any(session.folder.glob(".run.partial-*/com/config.json")))  # CoM saved
    last = None
    for last in handlers.run_merge_events(session, config, "cpu", "float32"):
        pass
    assert last is not None and last.report is not None and last.report.partial
    assert list(last.report.methods) == ["com"]
    report = json.loads((session.run_folder / "report.json").read_text())
    assert report["partial"] and list(report["methods"]) == ["com"]
    assert (session.run_folder / "com" / "config.json").is_file() and not (session.run_folder / "regmean").exists()
    assert not [p for p in session.folder.iterdir() if "partial-" in p.name]  # nothing half-written
    line = handlers.verdict_line(handlers.report_dict(last))
    assert line.startswith("⚠ cancelled: a partial run; what finished is kept (Chain of Merges)")
    assert "cancelled: nothing of it was kept" in last.html()
    assert session.runs[-1].label.endswith("(cancelled: partial)")


class CancelOnce(threading.Event):
    """Cancel pressed as soon as `condition()` holds."""

    def __init__(self, condition) -> None:
        super().__init__()
        self.condition = condition

    def is_set(self) -> bool:
        return super().is_set() or self.condition()


class CancelAfter(threading.Event):
    def __init__(self, polls: int) -> None:
        super().__init__()
        self.polls = polls

    def is_set(self) -> bool:
        self.polls -= 1
        return self.polls < 0


def test_bad_input_in_a_run_is_a_message(tmp_path, tiny):
    make_base(tmp_path / "wide", hidden=48)
    session = Sessions(tmp_path / "s").get("x")
    forms = experts_of(tiny)
    forms[1].model = str(tmp_path / "wide")
    config = handlers.build_config(str(tiny.base), forms, ["com"], **FAST)
    last = list(handlers.run_merge_events(session, config, "cpu", "float32"))[-1]
    assert last.error.startswith("✘") and "does not match the base" in last.error
    assert not session.run_folder.exists()


def test_sessions_are_separate_and_closing_removes_files(tmp_path):
    sessions = Sessions(tmp_path)
    a, b = sessions.get("a"), sessions.get("b")
    assert a.folder != b.folder and sessions.get("a") is a
    (a.folder / "upload.txt").write_text("x")
    sessions.close("a")
    assert not a.folder.exists() and b.folder.exists() and len(sessions) == 1


@pytest.mark.parametrize("key", ["text", "lm"])
def test_demo_models_say_they_are_built_on_first_use(monkeypatch, key):
    from dataclasses import replace

    from commerge_ui import demo
    from commerge_ui.config import MergeConfig
    from commerge_ui.ui.form import evaluation_needs_labels

    d = demo.DEMOS[key]
    monkeypatch.setitem(demo.DEMOS, key, replace(d, is_built=lambda: False))
    message = model_message(str(d.models / "base"))
    assert message.startswith("◷ the demo's models are built on first use") and d.build_note in message
    assert evaluation_needs_labels(str(d.models / "base")) == (key == "text")  # the LM is scored by perplexity
    config = MergeConfig(base="org/model", experts=[{"name": n, "model": str(d.models / n)} for n in ("a", "b")])
    assert [u.key for u in demo.unbuilt_demos(config)] == [key]


def test_a_demo_build_streams_its_log_and_reports_its_failure():
    from commerge_ui.ui.handlers import _while_building
    from commerge_ui.ui.session import RunProgress

    def build(log):
        log("step 1 of 2")
        log("step 2 of 2")

    waiting = RunProgress(["com"], stage="building")
    updates = list(_while_building(build, waiting, every=0.01))
    assert updates[-1].stage == "step 2 of 2" and updates[-1].error is None

    def broken(log):
        log("converting")
        raise OSError("disk full")

    waiting = RunProgress(["com"], stage="building")
    assert list(_while_building(broken, waiting, every=0.01))[-1].error == "✘ building the demo failed: disk full"


def test_closing_the_page_mid_run_cancels_it_and_frees_the_folder(tmp_path, tiny):
    sessions = Sessions(tmp_path)
    session = sessions.get("leaving")

    class CloseAfter(CancelAfter):
        def is_set(self) -> bool:
            if self.polls == 0:
                sessions.close("leaving")  # what Gradio's unload event does when the tab closes
            return super().is_set()

    session.cancel = CloseAfter(polls=2)
    config = handlers.build_config(str(tiny.base), experts_of(tiny), ["com"], **FAST)
    last = list(handlers.run_merge_events(session, config, "cpu", "float32"))[-1]
    assert last.error.startswith("Cancelled") and not session.running
    assert not session.folder.exists() and len(sessions) == 0


def test_image_uploads_are_previewed_with_thumbnails_and_class_names_reach_the_config(tmp_path):
    archive = write_image_samples(tmp_path / "cal.zip", "zip", 6, seed=0, classes=["red", "blue"])
    rows, note = sample_preview(str(archive), need_labels=True)
    assert note == "✔ cal.zip: 6 samples, 2 labels"
    assert rows[0][0] == "[PNG image, 40×40]" and {r[1] for r in rows} == {"red", "blue"}
    thumbnails = sample_thumbnails(str(archive))
    assert len(thumbnails) == 5 and thumbnails[0][0].size == (40, 40)
    assert sample_thumbnails(str(tmp_path / "missing.zip")) == []
    config = form_config("base", [ExpertForm("colours", "m", str(archive), None, " red, blue ,")], ["com"], {})
    assert config.experts[0].labels == ["red", "blue"]


def test_evaluation_labels_are_asked_for_unless_the_base_is_a_causal_lm(tiny, tmp_path):
    lm = make_lm_setup(tmp_path, "gpt2", n_experts=1)
    assert evaluation_needs_labels(str(tiny.base)) is True
    assert evaluation_needs_labels(str(lm.base)) is False
    assert evaluation_needs_labels(str(tmp_path / "missing")) is True and evaluation_needs_labels("") is True
    unlabelled = str(lm.calibration["task0"])
    assert sample_preview(unlabelled, evaluation_needs_labels(str(lm.base)))[1].startswith("✔")
    assert "has no label" in sample_preview(unlabelled, evaluation_needs_labels(str(tiny.base)))[1]


def test_verdict_by_hand():
    from commerge_ui.report import verdict

    def method(score: float, last_shift: float) -> dict:
        return {"average_score": score, "shift": {"a": [0.01, last_shift], "b": [0.02, last_shift]}}

    report = {"metric": "accuracy", "higher_is_better": True,
              "experts": {"a": {"score": 0.9}, "b": {"score": 0.7}},
              "methods": {"com": method(0.78, 0.05), "regmean": method(0.79, 0.4), "average": method(0.62, 0.8)}}
    assert verdict(report) == ("best average accuracy: regmean 79.0 % (experts 80.0 %) · last-layer shift: com "
                               "0.050 vs regmean 0.400 (8.0× lower than regmean) · mean over layers: com 0.033 vs "
                               "regmean 0.208 (6.4× lower than regmean), worst layer com 0.050 vs regmean 0.400 · "
                               "worst: average 62.0 %, 18.0 points below the experts")
    lm = {**report, "metric": "perplexity", "higher_is_better": False,
          "experts": {"a": {"score": 20.0}, "b": {"score": 40.0}},
          "methods": {"com": {**method(35.0, 0.1), "heldout_shift": {"a": [0.1, 0.2], "b": [0.3, 0.4]}},
                      "regmean": {**method(33.0, 0.2), "heldout_shift": {"a": [0.1, 0.1], "b": [0.1, 0.1]}}}}
    assert verdict(lm, {"com": "CoM"}) == ("best mean perplexity: regmean 33.0 (experts 30.0) · last-layer shift: "
                                           "CoM 0.100 vs regmean 0.200 (2.0× lower than regmean) · mean over layers: "
                                           "CoM 0.058 vs regmean 0.108 (1.9× lower than regmean), worst layer CoM "
                                           "0.100 vs regmean 0.200 · held-out shift (last block): CoM 0.300 vs "
                                           "regmean 0.100 (3.0× higher than regmean) · CoM's held-out shift is 3.0× "
                                           "its calibration one at the last block: its calibration curve overstates "
                                           "the match · worst: CoM 35.0, +5.0 perplexity vs the experts")


def test_results_on_arrival_are_the_default_runs_and_go_stale_when_its_inputs_change(tmp_path):
    from conftest import make_setup

    setup = make_setup(tmp_path / "own", n_experts=2)
    config_path = setup.write_config("page.yaml", options={"calibration_samples": 16, "max_length": 16, "seed": 0})
    assert handlers.precomputed_report(config_path) is None
    report = handlers.precompute_default_run(config_path, log=lambda m: None)
    assert handlers.precomputed_report(config_path) == report and list(report["methods"]) == handlers.DEFAULT_METHODS
    # what Run gives with the form as the page opens: the same scores and shifts
    session = Sessions(tmp_path / "s").get("x")
    last = list(handlers.run_merge_events(session, handlers.default_run(config_path), "cpu", "float32"))[-1]
    ran = handlers.report_dict(last)
    for method in report["methods"]:
        assert ran["methods"][method]["scores"] == report["methods"][method]["scores"]
        assert ran["methods"][method]["shift"] == pytest.approx(report["methods"][method]["shift"])
    assert handlers.arrival_line(report).startswith("ℹ precomputed: the default demo run (Chain of Merges")
    # other options, or a sample file changed on disk: no longer these results
    other = setup.write_config("other.yaml", options={"calibration_samples": 8, "max_length": 16, "seed": 0})
    assert handlers.precomputed_report(other) is None
    calibration = setup.calibration["task0"]
    calibration.write_text(calibration.read_text() + '{"text": "one more line"}\n')
    assert handlers.precomputed_report(config_path) is None


def test_every_method_has_a_colour_of_its_own():
    from commerge_ui.methods import METHODS
    from commerge_ui.ui.plots import COLORS

    assert set(METHODS) <= set(COLORS) and len({COLORS[m] for m in METHODS}) == len(METHODS)
