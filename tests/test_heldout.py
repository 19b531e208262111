"""The shift on held-out samples (commerge_ui/heldout.py, in every report), against the same quantity computed by
hand from the saved merge."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from commerge_ui.config import MergeConfig
from commerge_ui.api import run_merge
from commerge_ui.samples import read_samples
from tiny_families import make_lm_setup


def by_hand(config: MergeConfig, merged: Path, task: int, sink: int, final_norm: bool = True,
            cap: int | None = None) -> float:
    """‖H_merged − H_expert‖ / ‖H_expert‖ of the last block's output on the task's evaluation samples, with the
    model's own `last_hidden_state` (a decoder's final norm replaced by the identity, so that it is the last
    block's output) and the first `sink` tokens and the padding left out."""
    spec = config.experts[task]
    texts = [s.text for s in read_samples(spec.evaluation, config.options.evaluation_samples, config.options.seed)]
    if cap is not None:  # heldout_samples: a seeded subset of the scored samples
        texts = [texts[i] for i in sorted(random.Random(config.options.seed).sample(range(len(texts)), cap))]
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, padding=True, truncation=True, max_length=config.options.max_length,
                      return_tensors="pt")
    keep = batch["attention_mask"].bool()
    keep[:, :sink] = False

    def hidden(folder: Path) -> torch.Tensor:
        model = AutoModel.from_pretrained(folder).eval()
        if not final_norm:
            model.norm = torch.nn.Identity()
        with torch.no_grad():
            return model(**batch).last_hidden_state[keep]

    exact, approx = hidden(Path(spec.model)), hidden(merged)
    return float(torch.linalg.vector_norm(approx - exact) / torch.linalg.vector_norm(exact))


def test_an_encoders_heldout_shift_matches_a_hand_computation_at_every_task(tiny, tmp_path):
    config = MergeConfig.model_validate(tiny.config(methods=["com", "regmean", "average"]))
    report = run_merge(config, out_dir=tmp_path, save=["com", "average"])
    blocks = 2
    for method in ("com", "average"):
        shift = report.methods[method].heldout_shift
        assert list(shift) == list(tiny.experts) and all(len(v) == blocks for v in shift.values())
        for task, name in enumerate(tiny.experts):
            assert shift[name][-1] == pytest.approx(by_hand(config, tmp_path / method, task, sink=0), rel=1e-5)
    assert report.methods["regmean"].heldout_seconds is not None


def test_heldout_samples_caps_the_samples_by_a_seeded_subset(tiny, tmp_path):
    config = MergeConfig.model_validate(tiny.config(methods=["average"]))
    capped = config.model_copy(update={"options": config.options.model_copy(update={"heldout_samples": 5})})
    report = run_merge(capped, out_dir=tmp_path, save=["average"])
    shift = report.methods["average"].heldout_shift["task1"][-1]
    assert shift == pytest.approx(by_hand(capped, tmp_path / "average", 1, sink=0, cap=5), rel=1e-5)
    assert shift != pytest.approx(by_hand(capped, tmp_path / "average", 1, sink=0), rel=1e-3)


def test_one_expert_merged_is_the_expert_so_its_heldout_shift_is_zero(tiny):
    config = MergeConfig.model_validate(tiny.config(experts=tiny.config()["experts"][:1], methods=["com", "average"]))
    report = run_merge(config)
    for method in ("com", "average"):
        assert max(report.methods[method].heldout_shift["task0"]) < 1e-5


def test_a_decoders_heldout_shift_leaves_the_sink_out_and_is_taken_before_the_final_norm(tmp_path):
    setup = make_lm_setup(tmp_path, "llama")
    data = setup.config(methods=["com"])
    data["options"].update(evaluation_samples=6, seed=3)
    config = MergeConfig.model_validate(data)  # sink_tokens unset: the causal-LM default, the first token
    shift = run_merge(config, out_dir=tmp_path / "out", save=["com"]).methods["com"].heldout_shift["task1"][-1]
    merged = tmp_path / "out" / "com"
    assert shift == pytest.approx(by_hand(config, merged, 1, sink=1, final_norm=False), rel=1e-5)
    assert shift != pytest.approx(by_hand(config, merged, 1, sink=0, final_norm=False), rel=1e-3)
    assert shift != pytest.approx(by_hand(config, merged, 1, sink=1, final_norm=True), rel=1e-3)


def test_it_is_measured_only_where_asked_and_where_the_method_runs_forwards(tiny):
    off = tiny.config(methods=["com"])
    off["options"]["heldout_shift"] = False
    report = run_merge(MergeConfig.model_validate(off))
    assert report.methods["com"].heldout_shift == {} and report.methods["com"].heldout_seconds is None
    no_forwards = tiny.config(methods=["average"])
    no_forwards["options"]["data_free_shift"] = False
    assert run_merge(MergeConfig.model_validate(no_forwards)).methods["average"].heldout_shift == {}
    unscored = tiny.config(methods=["com"])
    del unscored["experts"][1]["evaluation"]
    assert list(run_merge(MergeConfig.model_validate(unscored)).methods["com"].heldout_shift) == ["task0", "task2"]
