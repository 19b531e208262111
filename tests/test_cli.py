"""The CLI round trip: a loadable merged model, a schema-valid report, exit codes, atomic output."""

import json
import re
import subprocess
import sys

import jsonschema
import pytest
import torch
from transformers import AutoModel

from commerge_ui.cli import main
from commerge_ui.families.text_classification import load_task_model

from conftest import make_expert, make_base

NUMBER_OR_NULL = {"type": ["number", "null"]}
REPORT_SCHEMA = {
    "type": "object",
    "required": ["family", "base", "experts", "layers", "methods"],
    "properties": {
        "family": {"enum": ["text-classification", "image-classification", "causal-lm"]},
        "base": {"type": "object", "required": ["scores"],
                 "properties": {"scores": {"type": "object", "additionalProperties": NUMBER_OR_NULL}}},
        "experts": {"type": "object", "additionalProperties": {
            "type": "object", "required": ["score"], "properties": {"score": NUMBER_OR_NULL}}},
        "layers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "methods": {"type": "object", "additionalProperties": {
            "type": "object",
            "required": ["scores", "normalized", "average_score", "average_normalized", "shift", "seconds",
                         "peak_memory_bytes", "heldout_shift"],
            "properties": {
                "scores": {"type": "object", "additionalProperties": NUMBER_OR_NULL},
                "normalized": {"type": "object", "additionalProperties": NUMBER_OR_NULL},
                "average_score": NUMBER_OR_NULL, "average_normalized": NUMBER_OR_NULL,
                "shift": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "number"}}},
                "heldout_shift": {"type": "object",
                                  "additionalProperties": {"type": "array", "items": {"type": "number"}}},
                "seconds": {"type": "number", "minimum": 0},
                "peak_memory_bytes": {"type": "integer", "minimum": 0},
            }}},
    },
}


def commerge(*args):
    return subprocess.run([sys.executable, "-m", "commerge_ui.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def round_trip(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "out"
    done = commerge("merge", tiny.write_config(), "--out", out, "--save", "com,regmean", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    return out, done


def test_report_follows_the_schema(round_trip, tiny):
    out, done = round_trip
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, REPORT_SCHEMA)
    assert set(report["methods"]) == {"com", "regmean", "task_arithmetic", "ties", "average"}
    assert set(report["experts"]) == set(tiny.experts)
    for method in report["methods"].values():
        assert all(len(s) == len(report["layers"]) for s in method["shift"].values())
        for task, score in method["scores"].items():
            expected = score / report["experts"][task]["score"]
            assert method["normalized"][task] == pytest.approx(expected)
    assert "com" in done.stdout and "wrote" in done.stdout


def test_saved_model_loads_with_from_pretrained(round_trip, tiny):
    out, _ = round_trip
    for method in ("com", "regmean"):
        folder = out / method
        assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
        card = (folder / "README.md").read_text()
        assert f"`{method}`" in card and str(tiny.base) in card and "task2" in card and "alpha" in card
        encoder = AutoModel.from_pretrained(folder)
        assert encoder.config.num_hidden_layers == 2
    assert not (out / "average").exists()  # not asked for in --save


def test_task_model_reproduces_the_reported_score(round_trip, tiny):
    out, _ = round_trip
    report = json.loads((out / "report.json").read_text())
    from commerge_ui.families.text_classification import TextClassification
    from commerge_ui.samples import read_samples
    family = TextClassification()
    model = load_task_model(out / "com", "task1")
    tokenizer = family.load_processor(out / "com")
    samples = read_samples(tiny.evaluation["task1"])
    batch = family.encode(tokenizer, samples, 64)
    with torch.no_grad():
        predictions = model(**batch.inputs).logits.argmax(-1)
    accuracy = float((predictions == torch.tensor([s.label for s in samples])).float().mean())
    assert accuracy == pytest.approx(report["methods"]["com"]["scores"]["task1"])


def test_default_output_is_one_line_per_phase_and_the_table(round_trip, tiny):
    """5 methods, 3 tasks, output to a pipe: a line as each phase starts ("…"), the references line, a line per
    method with its merge, scoring and held-out shift times, then the table and the verdict."""
    _, done = round_trip
    lines = done.stderr.strip().splitlines()
    started, err = [l for l in lines if l.endswith("…")], [l for l in lines if not l.endswith("…")]
    assert lines[0] == "experts and base: scoring…" and "com: merging…" in started and "com: saving…" in started
    assert err[0].startswith("scored the experts and the base (6 models) in ")
    assert [line.split(":")[0] for line in err[1:]] == ["com", "regmean", "task_arithmetic", "ties", "average"]
    assert all(re.fullmatch(r"\w+: merged in \d+\.\ds, scored 3 tasks in \d+\.\ds, held-out shift in \d+\.\ds", line)
               for line in err[1:]), err
    assert len(err) + len(done.stdout.strip().splitlines()) <= 24  # 6 phase lines, the table, the verdict
    table = done.stdout.splitlines()
    report = json.loads((round_trip[0] / "report.json").read_text())
    expert = next(line for line in table if line.startswith("expert"))
    assert expert.split()[:2] == ["expert", f"{100 * report['experts']['task0']['score']:.1f}"]  # %, one decimal
    base = next(line for line in table if line.startswith("base"))
    assert base.split()[1] == f"{100 * report['base']['scores']['task0']:.1f}"
    # one clock: the table's `sec` is the stderr line's merge time is the report's
    for method, data in report["methods"].items():
        said = next(l for l in err if l.startswith(f"{method}: merged in"))
        row = next(l for l in table if l.startswith(method[:11] + " "))
        assert said.split("merged in ")[1].split("s,")[0] == row.split()[-1] == f"{data['seconds']:.1f}"
    assert max(len(l) for l in done.stdout.splitlines() if not l.startswith("wrote ")) <= 100


def test_a_wide_config_fits_100_columns_unless_wide(tmp_path):
    from conftest import make_setup

    setup = make_setup(tmp_path / "six", n_experts=6, layers=1)
    names = {f"task{k}": f"sentiment_of_reviews_{k}" for k in range(6)}
    data = setup.config(methods=["average", "task_arithmetic"])
    for expert in data["experts"]:
        expert["name"] = names[expert["name"]]
    config = tmp_path / "six.yaml"
    config.write_text(json.dumps(data))
    narrow = commerge("merge", config, "--out", tmp_path / "a", "--device", "cpu")
    wide = commerge("merge", config, "--out", tmp_path / "b", "--device", "cpu", "--wide")
    assert narrow.returncode == 0 and wide.returncode == 0, narrow.stderr
    assert max(len(l) for l in narrow.stdout.splitlines() if not l.startswith("wrote ")) <= 100
    assert max(map(len, wide.stdout.splitlines())) > 100 and "sentiment_of_reviews_5" in wide.stdout


def test_help_and_version_are_light():
    probe = ("import sys, contextlib, io\nfrom commerge_ui.cli import main\n"
             "for args in (['--help'], ['--version'], ['merge', '--help']):\n"
             "    with contextlib.redirect_stdout(io.StringIO()):\n"
             "        try:\n            main(args)\n        except SystemExit:\n            pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'gradio') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    assert commerge("--version").stdout.startswith("commerge 0.")


def test_verbose_prints_every_layer_group_and_json_parses(tiny, tmp_path):
    config = tiny.write_config("v.yaml", methods=["com", "average"])
    verbose = commerge("merge", config, "--out", tmp_path / "v", "--device", "cpu", "--verbose")
    assert verbose.returncode == 0, verbose.stderr
    report = json.loads((tmp_path / "v" / "report.json").read_text())
    groups = len(report["layers"])
    for method in ("com", "average"):
        lines = re.findall(rf"^  {method}: (\d+)/(\d+) ", verbose.stderr, flags=re.M)
        assert [int(step) for step, _ in lines] == list(range(1, groups + 1))
    assert "resolving base" in verbose.stderr
    done = commerge("merge", config, "--out", tmp_path / "j", "--device", "cpu", "--json", "--quiet")
    assert done.returncode == 0 and done.stderr == ""
    parsed = json.loads(done.stdout)
    jsonschema.validate(parsed, REPORT_SCHEMA)
    assert parsed["methods"]["com"]["scores"] == json.loads((tmp_path / "j" / "report.json").read_text())[
        "methods"]["com"]["scores"]


def test_existing_output_is_never_overwritten_without_force(round_trip, tiny):
    out, _ = round_trip
    before = (out / "report.json").read_text()
    done = commerge("merge", tiny.write_config(), "--out", out)
    assert done.returncode == 2 and "already exists (use --force" in done.stderr
    assert (out / "report.json").read_text() == before


def test_mismatched_expert_is_refused_and_nothing_is_written(tmp_path, tiny, capsys):
    wide_base = make_base(tmp_path / "wide_base", hidden=48)
    make_expert(tmp_path / "wide", wide_base, 0.1, seed=1)
    config = tiny.config()
    config["experts"][1]["model"] = str(tmp_path / "wide")
    import yaml
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    code = main(["merge", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: expert 'task1' ({tmp_path / 'wide'}): does not match the base: hidden size 48, "
                          "the base has 32; MLP width 96, the base has 64; 'embeddings.LayerNorm.bias' has shape "
                          "[48], base has [32]")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_bad_input_exit_codes(tmp_path, tiny):
    done = commerge("merge", tmp_path / "nope.yaml", "--out", tmp_path / "o")
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr
    done = commerge("merge", tiny.write_config("s.yaml"), "--out", tmp_path / "o", "--save", "magic")
    assert done.returncode == 2 and "--save names magic" in done.stderr
    assert not (tmp_path / "o").exists()


def test_force_replaces_atomically(tmp_path, tiny):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    config = tiny.write_config("f.yaml", methods=["average"])
    assert main(["merge", str(config), "--out", str(out), "--force", "--quiet"]) == 0
    assert (out / "report.json").is_file() and not (out / "old.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_missing_calibration_is_refused_before_any_model_is_read(tmp_path, tiny, capsys):
    config = tiny.config()
    del config["experts"][2]["calibration"]
    config["base"] = "org/never-downloaded"  # would fail differently if models were resolved first
    import yaml
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["merge", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "expert 'task2': 'calibration' samples are required" in capsys.readouterr().err
