"""Config validation: typed, early, with messages that name the field."""

import pytest

from commerge_ui.config import config_to_yaml, load_config, parse_config
from commerge_ui.errors import InputError


def test_defaults_follow_the_design():
    config = parse_config({"base": "b", "experts": [{"name": "t", "model": "m", "calibration": "c.txt"}]})
    assert config.methods == ["com", "regmean", "task_arithmetic", "average"]
    o = config.options
    assert (o.alpha, o.task_lambda, o.calibration_samples, o.normalize) == (0.9, 0.3, 256, "tokens")


@pytest.mark.parametrize("data, field", [
    ({"experts": [{"name": "t", "model": "m"}]}, "base"),
    ({"base": "b", "experts": []}, "experts"),
    ({"base": "b", "experts": [{"name": "t", "model": "m"}], "methods": ["magic"]}, "methods"),
    ({"base": "b", "experts": [{"name": "t", "model": "m"}], "options": {"alpha": 2}}, "options.alpha"),
    ({"base": "b", "experts": [{"name": "t", "model": "m"}], "options": {"colour": 1}}, "options.colour"),
    ({"base": "b", "experts": [{"name": "t", "model": "m"}, {"name": "t", "model": "n"}]}, "experts"),
])
def test_bad_fields_are_named(data, field):
    with pytest.raises(InputError, match=f"config field '{field}'"):
        parse_config(data)


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "cal.txt").write_text("hello\n")
    (tmp_path / "c.yaml").write_text("base: org/base\nexperts:\n  - {name: t, model: org/m, calibration: cal.txt}\n")
    config = load_config(tmp_path / "c.yaml")
    assert config.experts[0].calibration == str(tmp_path / "cal.txt")
    assert config.base == "org/base"  # not a path here: kept as a Hub id


def test_yaml_round_trip(tmp_path):
    config = parse_config({"base": "b", "experts": [{"name": "t", "model": "m"}], "options": {"lambda": 0.5}})
    (tmp_path / "c.yaml").write_text(config_to_yaml(config))
    assert load_config(tmp_path / "c.yaml") == config


@pytest.mark.parametrize("text, message", [("[1, 2", "not valid YAML"), ("- a\n- b\n", "expected a mapping")])
def test_unreadable_config_files(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(InputError, match=message):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_explicit_relative_paths_resolve_even_before_they_exist(tmp_path):
    from commerge_ui.config import load_config

    (tmp_path / "c.yaml").write_text("base: ./models/base\nexperts:\n  - {name: a, model: org/name}\n")
    config = load_config(tmp_path / "c.yaml")
    assert config.base == str(tmp_path / "models" / "base")  # a path, never mistaken for a Hub id
    assert config.experts[0].model == "org/name"  # ambiguous and absent: left as a Hub id


def test_the_example_configs_are_valid():
    from pathlib import Path

    from commerge_ui.config import load_config

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
    assert len(examples) >= 2
    for path in examples:
        config = load_config(path)
        assert config.experts and all(e.calibration for e in config.experts)
