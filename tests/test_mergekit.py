"""mergekit recipes: read as the same merge (the numbers of our own config's run), refused by name where no
exact counterpart exists, and written beside a data-free merge so that mergekit users can take it back."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

from commerge_ui.cli import main
from commerge_ui.config import load_config, load_config_with_notes, parse_config
from commerge_ui.config import MergeOptions
from commerge_ui.errors import InputError
from commerge_ui.methods import ties


def recipe(tmp_path, tiny, method: str, weight: float = 1.0, density: float | None = None, base: bool = True,
           **extra) -> str:
    models = [{"model": str(tiny.experts[n]), "parameters": {"weight": weight, **({"density": density}
                                                                                   if density else {})}}
              for n in ("task0", "task1")]
    data = {"merge_method": method, "models": models, "dtype": "bfloat16", **extra}
    if base:
        data["base_model"] = str(tiny.base)
    path = tmp_path / f"{method}.yml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def merged(out) -> dict:
    return load_file(out / "model.safetensors")


def test_a_task_arithmetic_recipe_is_our_task_arithmetic_and_needs_no_samples(tiny, tmp_path, capsys):
    path = recipe(tmp_path, tiny, "task_arithmetic", weight=0.5, parameters={"lambda": 0.6})
    config, notes = load_config_with_notes(path)
    assert config.methods == ["task_arithmetic"] and config.options.task_lambda == pytest.approx(0.3)
    assert not config.options.data_free_shift and any("dtype bfloat16" in n for n in notes)
    assert main(["merge", path, "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    assert "note (mergekit recipe): dtype bfloat16" in capsys.readouterr().err
    ours = parse_config({"base": str(tiny.base), "methods": ["task_arithmetic"],
                         "options": {"lambda": 0.3, "max_length": 16},
                         "experts": [{"name": n, "model": str(tiny.experts[n]), "calibration": str(tiny.calibration[n])}
                                     for n in ("task0", "task1")]})
    (tmp_path / "ours.yaml").write_text(yaml.safe_dump(ours.model_dump(mode="json", by_alias=True)))
    assert main(["merge", str(tmp_path / "ours.yaml"), "--out", str(tmp_path / "b"), "--device", "cpu"]) == 0
    a, b = merged(tmp_path / "a" / "task_arithmetic"), merged(tmp_path / "b" / "task_arithmetic")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method, kwargs, expected", [
    ("linear", {"base": False}, {"methods": ["average"]}),
    ("ties", {"density": 0.4, "parameters": {"lambda": 0.8}},
     {"methods": ["ties"], "ties_mean": True, "ties_density": 0.4, "task_lambda": 0.8}),
    ("ties", {"density": 0.4, "weight": 0.3, "parameters": {"normalize": False}},
     {"methods": ["ties"], "ties_mean": False, "ties_density": 0.4, "task_lambda": 0.3}),
    ("dare_ties", {"density": 0.7, "weight": 0.5}, {"methods": ["dare_ties"], "dare_drop": 0.3, "task_lambda": 0.5}),
])
def test_each_mapped_method_reads_as_its_counterpart(tiny, tmp_path, method, kwargs, expected):
    config, notes = load_config_with_notes(recipe(tmp_path, tiny, method, **kwargs))
    assert config.methods == expected.pop("methods")
    for key, value in expected.items():
        assert getattr(config.options, key) == pytest.approx(value), key
    assert config.base == str(tiny.base) if method != "linear" else config.base == str(tiny.experts["task0"])
    assert any("random" in n for n in notes) == method.startswith("dare")


@pytest.mark.parametrize("data, message", [
    ({"merge_method": "slerp"}, "merge_method 'slerp' has no exact counterpart"),
    ({"merge_method": "linear", "slices": []}, "layer slices"),
    ({"merge_method": "linear", "tokenizer_source": "union"}, "tokenizer_source 'union'"),
    ({"merge_method": "task_arithmetic", "weights": [0.3, 0.7]}, "the models' weights differ \\(0.3, 0.7\\)"),
    ({"merge_method": "task_arithmetic", "filter": True}, "per-tensor filters"),
])
def test_what_has_no_exact_counterpart_is_refused_by_name(tiny, tmp_path, data, message):
    body = {"merge_method": data["merge_method"], "base_model": str(tiny.base),
            "models": [{"model": str(tiny.experts["task0"]), "parameters": {"weight": 1.0}},
                       {"model": str(tiny.experts["task1"]), "parameters": {"weight": 1.0}}]}
    if "slices" in data:
        body["slices"] = data["slices"]
    if "tokenizer_source" in data:
        body["tokenizer_source"] = data["tokenizer_source"]
    if "weights" in data:
        for model, weight in zip(body["models"], data["weights"]):
            model["parameters"]["weight"] = weight
    if "filter" in data:
        body["models"][0]["parameters"]["weight"] = [{"filter": "mlp", "value": 0.5}, {"value": 1.0}]
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump(body))
    with pytest.raises(InputError, match=message):
        load_config(path)


def test_ties_disjoint_mean_by_hand():
    base = torch.zeros(4)
    experts = [torch.tensor([1.0, -2.0, 3.0, 0.0]), torch.tensor([3.0, 2.0, -1.0, 0.0])]
    options = MergeOptions(ties_density=1.0, ties_mean=True, **{"lambda": 1.0})
    # signs elected by the sums (4, 0 -> +, 2, 0 -> +); agreeing entries: [1, 3], [2], [3], none
    torch.testing.assert_close(ties(base, experts, options), torch.tensor([2.0, 2.0, 3.0, 0.0]))
    options = MergeOptions(ties_density=1.0, ties_mean=False, **{"lambda": 1.0})
    torch.testing.assert_close(ties(base, experts, options), torch.tensor([4.0, 2.0, 3.0, 0.0]))


def test_a_data_free_merge_leaves_its_mergekit_recipe_which_reads_back_as_the_same_merge(tiny, tmp_path):
    config = parse_config({"base": str(tiny.base), "methods": ["ties"],
                           "options": {"lambda": 0.3, "ties_density": 0.5, "max_length": 16},
                           "experts": [{"name": n, "model": str(tiny.experts[n]), "calibration": str(tiny.calibration[n])}
                                       for n in ("task0", "task1")]})
    (tmp_path / "ours.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    assert main(["merge", str(tmp_path / "ours.yaml"), "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    written = tmp_path / "a" / "ties" / "mergekit.yml"
    assert yaml.safe_load(written.read_text())["merge_method"] == "ties"
    back = load_config(written)
    assert back.methods == ["ties"] and back.options.ties_density == 0.5 and back.options.task_lambda == 0.3
    assert main(["merge", str(written), "--out", str(tmp_path / "b"), "--device", "cpu"]) == 0
    a, b = merged(tmp_path / "a" / "ties"), merged(tmp_path / "b" / "ties")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_recipe_may_add_samples_and_our_methods_beside_it(tiny, tmp_path):
    data = {"merge_method": "task_arithmetic", "base_model": str(tiny.base),
            "models": [{"model": str(tiny.experts[n]), "name": n, "calibration": str(tiny.calibration[n]),
                        "parameters": {"weight": 0.3}} for n in ("task0", "task1")],
            "commerge": {"methods": ["com", "regmean"], "options": {"calibration_samples": 16, "max_length": 16}}}
    (tmp_path / "r.yml").write_text(yaml.safe_dump(data))
    config = load_config(tmp_path / "r.yml")
    assert config.methods == ["task_arithmetic", "com", "regmean"] and config.options.data_free_shift
    assert [e.name for e in config.experts] == ["task0", "task1"] and config.options.calibration_samples == 16
