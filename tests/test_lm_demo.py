"""The SmolLM2 language-model demo: its config, and a smoke version on the real model (its first two decoder
blocks, five experts fine-tuned for 10 steps each on real text domains) merged and scored by perplexity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from commerge_ui.api import run_merge
from commerge_ui.config import load_config, parse_config
from commerge_ui.demo import DEMOS, demo_of
from commerge_ui.demo.lm import DOMAINS, LM_CONFIG, LM_MODELS, RECIPE, ensure_lm_demo, is_lm_built, prepare_folder
from commerge_ui.errors import InputError
from commerge_ui.samples import read_samples

SMOKE = {**RECIPE, "steps": 10}


def test_the_example_config_names_the_demo_models_and_committed_texts():
    config = load_config(LM_CONFIG)
    assert config.family == "causal-lm" and [e.name for e in config.experts] == DOMAINS
    assert demo_of(config.experts[0].model) is DEMOS["lm"] and Path(config.experts[0].model).parent == LM_MODELS
    for expert in config.experts:
        assert len(read_samples(expert.calibration)) == 256 and len(read_samples(expert.evaluation)) >= 300


def test_a_build_resumes_only_its_own_recipe_and_refuses_foreign_folders(tmp_path):
    ours, other = {"recipe": 1}, {"recipe": 2}
    prepare_folder(tmp_path / "new", ours)
    (tmp_path / "new" / "tweets").mkdir()  # an expert of an interrupted build
    prepare_folder(tmp_path / "new", ours)
    assert (tmp_path / "new" / "tweets").is_dir()  # same recipe: resumed
    prepare_folder(tmp_path / "new", other)
    assert not (tmp_path / "new" / "tweets").exists()  # another recipe: begun again
    assert json.loads((tmp_path / "new" / "recipe.json").read_text()) == other
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an LM demo build"):
        prepare_folder(tmp_path / "mine", ours)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def smoke_config(root: Path) -> dict:
    data = yaml.safe_load(LM_CONFIG.read_text())
    data["base"] = str(root / "base")
    for expert in data["experts"]:
        expert["model"] = str(root / expert["name"])
        for key in ("calibration", "evaluation"):
            expert[key] = str((LM_CONFIG.parent / expert[key]).resolve())
    data["methods"] = ["com", "regmean", "average"]
    data["options"].update(calibration_samples=16, evaluation_samples=40, max_length=32)
    return data


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-demo")
    ensure_lm_demo(root, SMOKE, blocks=2, device="cpu", log=lambda _: None)
    return root


@pytest.mark.slow
def test_smoke_build_is_complete_and_not_redone(smoke):
    assert is_lm_built(smoke, SMOKE, blocks=2)
    assert not is_lm_built(smoke, RECIPE, blocks=2) and not is_lm_built(smoke, SMOKE, blocks=None)
    base = load_file(str(smoke / "base" / "model.safetensors"))
    for name in DOMAINS:
        assert json.loads((smoke / name / "config.json").read_text())["num_hidden_layers"] == 2
        expert = load_file(str(smoke / name / "model.safetensors"))
        assert set(expert) == set(base)
        assert (expert["model.embed_tokens.weight"] == base["model.embed_tokens.weight"]).all()  # frozen (tied head)
        assert not (expert["model.layers.1.mlp.down_proj.weight"] == base["model.layers.1.mlp.down_proj.weight"]).all()
    logs: list[str] = []
    ensure_lm_demo(smoke, SMOKE, blocks=2, device="cpu", log=logs.append)
    assert logs == []


@pytest.mark.slow
def test_smoke_merge_of_the_real_model(smoke):
    report = json.loads(run_merge(parse_config(smoke_config(smoke)), device="cpu").to_json())
    assert report["family"] == "causal-lm" and report["metric"] == "perplexity"
    base = report["base"]["scores"]
    for name in DOMAINS:  # each expert learnt its domain: well below the base's perplexity on it
        assert report["experts"][name]["score"] < base[name] / 5

    def log_ppl(method: str) -> float:
        return sum(math.log(v) for v in report["methods"][method]["scores"].values()) / len(DOMAINS)

    def last_shift(method: str) -> float:
        return sum(s[-1] for s in report["methods"][method]["shift"].values()) / len(DOMAINS)

    # Measured (10-step experts, 2 blocks): mean log-perplexity CoM 17.02, RegMean 17.08, averaging 17.56;
    # last-group shift CoM 0.020, RegMean 0.033, averaging 0.064.
    assert log_ppl("com") < log_ppl("average") and log_ppl("regmean") < log_ppl("average")
    assert last_shift("com") < last_shift("regmean") < last_shift("average")


@pytest.mark.slow
def test_another_training_seed_builds_other_experts_in_its_own_folder(tmp_path):
    from commerge_ui.demo.lm import main

    for seed in (0, 1):
        main(["--seed", str(seed), "--steps", "2", "--blocks", "1", "--device", "cpu",
              "--out", str(tmp_path / str(seed))])
    assert json.loads((tmp_path / "1" / "stamp.json").read_text())["recipe"]["seed"] == 1
    assert is_lm_built(tmp_path / "1", {**RECIPE, "steps": 2, "seed": 1}, blocks=1)
    key = "model.layers.0.mlp.down_proj.weight"
    for name in DOMAINS:
        zero, one = (load_file(str(tmp_path / s / name / "model.safetensors"))[key] for s in ("0", "1"))
        assert not (zero == one).all(), name  # other batches drawn: another expert


@pytest.mark.parametrize("argv, named", [(["--seed", "1"], "--seed 1"), (["--steps", "5"], "--steps 5"),
                                         (["--blocks", "2"], "--blocks 2"),
                                         (["--seed", "2", "--out", "assets/demo/lm-models"], "--seed 2")])
def test_another_recipe_is_refused_into_the_example_configs_folder(argv, named, capsys, monkeypatch):
    from commerge_ui.demo import lm

    monkeypatch.chdir(LM_MODELS.parents[2])  # the repository root: the last case names the folder relatively
    builds: list[tuple] = []
    monkeypatch.setattr(lm, "ensure_lm_demo", lambda *args: builds.append(args))  # never touch the real folder
    with pytest.raises(SystemExit) as exit_:
        lm.main(argv)
    assert exit_.value.code == 2 and f"{named} needs --out DIR" in capsys.readouterr().err and builds == []


def test_the_example_configs_own_recipe_is_built_in_its_folder(monkeypatch):
    from commerge_ui.demo import lm

    builds: list[tuple] = []
    monkeypatch.setattr(lm, "ensure_lm_demo", lambda *args: builds.append(args))
    lm.main(["--seed", "0", "--steps", str(RECIPE["steps"])])
    assert builds and builds[0][0] == LM_MODELS and builds[0][1] == RECIPE and builds[0][2] is None
