"""The unmerged models' scores are computed once per process, and again when a model or the samples change."""

import os

from commerge_ui import score_cache
from commerge_ui.api import run_merge
from commerge_ui.config import parse_config
from commerge_ui.families.text_classification import TextClassification


def test_experts_and_base_are_scored_once_until_something_changes(tiny, monkeypatch, tmp_path):
    calls = []
    real = TextClassification.score

    def counted(self, backbone, expert, *args, **kwargs):
        calls.append("base" if backbone is not None else "expert")
        return real(self, backbone, expert, *args, **kwargs)

    monkeypatch.setattr(TextClassification, "score", counted)
    score_cache.clear()
    config = parse_config(tiny.config(methods=["average"]))
    first = run_merge(config, device="cpu")
    assert calls.count("expert") == 3 and calls.count("base") == 3 + 3  # the base, then the merged model
    calls.clear()
    again = run_merge(config.model_copy(update={"options": config.options.model_copy(update={"alpha": 0.5})}),
                      device="cpu")
    assert calls == ["base"] * 3  # only the merged model is scored
    assert again.experts == first.experts and again.base == first.base
    weights = tiny.experts["task1"] / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))  # "changed on disk"
    calls.clear()
    run_merge(config, device="cpu")
    assert calls.count("expert") == 1 and calls.count("base") == 1 + 3
