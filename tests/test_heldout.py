"""The shift on held-out samples (commerge_ui/heldout.py), against the same quantity computed by hand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from commerge_ui.config import MergeConfig
from commerge_ui.heldout import heldout_shift
from commerge_ui.samples import read_samples
from tiny_families import make_lm_setup


def by_hand(config: MergeConfig, merged: Path, task: int, sink: int, final_norm: bool = True) -> float:
    """‖H_merged − H_expert‖ / ‖H_expert‖ of the last block's output on the task's evaluation samples, with the
    model's own `last_hidden_state` (a decoder's final norm replaced by the identity, so that it is the last
    block's output) and the first `sink` tokens and the padding left out."""
    spec = config.experts[task]
    texts = [s.text for s in read_samples(spec.evaluation, config.options.evaluation_samples, config.options.seed)]
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


def test_an_encoders_heldout_shift_is_zero_for_the_expert_and_matches_a_hand_computation(tiny):
    config = MergeConfig.model_validate(tiny.config())
    shift = heldout_shift(config, {"first expert": tiny.experts["task0"], "base": tiny.base})
    assert shift["first expert"]["task0"] == 0.0
    assert shift["first expert"]["task1"] > 0.01
    for task, name in enumerate(tiny.experts):
        assert shift["base"][name] == pytest.approx(by_hand(config, tiny.base, task, sink=0), rel=1e-5)


def test_a_decoders_heldout_shift_leaves_the_sink_out_and_is_taken_before_the_final_norm(tmp_path):
    setup = make_lm_setup(tmp_path, "llama")
    data = setup.config()
    data["options"].update(evaluation_samples=6, seed=3)
    config = MergeConfig.model_validate(data)  # sink_tokens unset: the causal-LM default, the first token
    shift = heldout_shift(config, {"base": setup.base})["base"]["task1"]
    assert shift == pytest.approx(by_hand(config, setup.base, 1, sink=1, final_norm=False), rel=1e-5)
    assert shift != pytest.approx(by_hand(config, setup.base, 1, sink=0, final_norm=False), rel=1e-3)
    assert shift != pytest.approx(by_hand(config, setup.base, 1, sink=1, final_norm=True), rel=1e-3)
    with_sink = MergeConfig.model_validate({**data, "options": {**data["options"], "sink_tokens": 0}})
    assert heldout_shift(with_sink, {"base": setup.base})["base"]["task1"] == pytest.approx(
        by_hand(config, setup.base, 1, sink=0, final_norm=False), rel=1e-5)
