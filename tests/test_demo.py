"""The embedded demo: seeded data, committed samples in sync, and CoM's advantage on the real model."""

import json

import pytest

from commerge_ui.config import load_config
from commerge_ui.demo import DEMO_CONFIG, DEMO_DIR, ensure_demo
from commerge_ui.demo.build import CALIBRATION_SAMPLES, EVAL_SAMPLES, RECIPE, held_out
from commerge_ui.demo.sentences import TASKS, sentences
from commerge_ui.samples import read_samples


def test_sentences_are_seeded_varied_and_labelled():
    for task, labels in TASKS.items():
        batch = sentences(task, 500, seed=1)
        assert batch == sentences(task, 500, seed=1)
        assert {s.label for s in batch} == set(labels)
        assert len({s.text for s in batch}) > 250, task  # not a handful of templates


def test_committed_samples_match_the_generator():
    config = load_config(DEMO_CONFIG)
    assert [e.name for e in config.experts] == list(TASKS)
    for offset, expert in enumerate(config.experts):
        calibration = read_samples(expert.calibration)
        evaluation = read_samples(expert.evaluation, need_labels=True)
        assert len(calibration) == CALIBRATION_SAMPLES and len(evaluation) == EVAL_SAMPLES
        assert [s.text for s in evaluation] == [s.text for s in held_out(expert.name, 2000 + offset, 10_000 + offset)]
        training = {s.text for s in sentences(expert.name, RECIPE["train_samples"], 10_000 + offset)}
        assert not {s.text for s in evaluation} & training  # held out: never seen in fine-tuning
        assert len({s.text for s in evaluation}) == EVAL_SAMPLES


@pytest.mark.slow
def test_com_beats_regmean_on_the_demo(tmp_path):
    """Builds the demo's experts if needed (minutes on CPU), merges, and checks the product's claim."""
    from commerge_ui.api import run_merge

    ensure_demo()
    config = load_config(DEMO_CONFIG)
    report = run_merge(config.model_copy(update={"methods": ["com", "regmean", "average"]}), out_dir=tmp_path,
                       device="cpu")
    com, regmean = report.methods["com"], report.methods["regmean"]
    experts = sum(e["score"] for e in report.experts.values()) / len(report.experts)

    def last(shift):
        return sum(s[-1] for s in shift.values()) / len(shift)

    assert com.average_score >= regmean.average_score
    assert last(com.shift) < last(regmean.shift)
    assert last(com.block_shift) < last(regmean.block_shift)
    assert json.loads((tmp_path / "report.json").read_text())["family"] == "text-classification"
    assert all(score >= 0.9 for score in (e["score"] for e in report.experts.values()))
    assert report.methods["average"].average_score <= experts - 0.10  # hard enough that a data-free merge loses
    assert (DEMO_DIR / "models" / "recipe.json").is_file()
