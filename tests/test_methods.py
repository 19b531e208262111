"""The registry and the data-free rules (average, task arithmetic, TIES, DARE) on hand-checked tensors; a method
registered here, outside the engine, runs end to end."""

import inspect
import json
import re

import pytest
import torch

import commerge_ui.engine
from commerge_ui.api import run_merge
from commerge_ui.config import MergeOptions, parse_config
from commerge_ui.errors import InputError
from commerge_ui.methods import MERGED_INPUTS, METHODS, Method, average, dare, dare_ties, task_arithmetic, ties
from commerge_ui.solve import GroupInputs, regmean_terms


def test_average_and_task_arithmetic():
    base = torch.zeros(3)
    experts = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])]
    torch.testing.assert_close(average(base, experts, MergeOptions()), torch.tensor([2.0, 2.0, 2.0]))
    ta = task_arithmetic(base, experts, MergeOptions(**{"lambda": 0.5}))
    torch.testing.assert_close(ta, torch.tensor([2.0, 2.0, 2.0]))


def test_ties_trims_elects_sign_and_sums_agreeing_values():
    base = torch.zeros(4)
    experts = [torch.tensor([4.0, -1.0, 0.1, 2.0]), torch.tensor([2.5, 5.0, -0.1, -3.0])]
    merged = ties(base, experts, MergeOptions(**{"lambda": 1.0, "ties_density": 0.5}))
    # kept: e1 {4, 2}, e2 {5, -3}; elected signs +, +, 0, - (2 - 3 < 0), so the 2 at index 3 drops
    torch.testing.assert_close(merged, torch.tensor([4.0, 5.0, 0.0, -3.0]))


def test_ties_keeps_exactly_k_with_ties_at_the_threshold_and_a_zero_sum_elects_plus():
    base = torch.zeros(6)
    experts = [torch.tensor([1.0, -1.0, 1.0, 1.0, 0.5, 3.0]),   # four entries tie at |1| for 2 places left
               torch.tensor([-2.0, 2.0, 0.0, 0.0, 0.0, -3.0])]
    merged = ties(base, experts, MergeOptions(**{"lambda": 1.0, "ties_density": 0.5}))  # k = ⌊0.5·6⌋ = 3
    # by hand: e1 keeps 3 (index 5) and the first two of the tied ones (indices 0, 1): [1, -1, 0, 0, 0, 3];
    # e2 keeps -3, -2, 2 (indices 5, 0, 1). Sums: [-1, 1, 0, 0, 0, 0] → signs [-, +, +, +, +, +]
    # (a zero sum elects +): index 0 keeps -2, index 1 keeps 2, index 5 keeps 3 (the -3 disagrees).
    torch.testing.assert_close(merged, torch.tensor([-2.0, 2.0, 0.0, 0.0, 0.0, 3.0]))
    assert ties(base, experts, MergeOptions(**{"lambda": 1.0, "ties_density": 0.4})).count_nonzero() <= 2


def test_registry_marks_regression_methods():
    assert {n for n, m in METHODS.items() if m.regression} == {"com", "com_chain", "regmean", "regmean_plusplus"}
    assert not METHODS["average"].needs_base and METHODS["ties"].needs_base and METHODS["dare"].needs_base


def test_dare_without_drops_is_its_base_combination():
    torch.manual_seed(1)
    base = torch.randn(6, 5)
    experts = [base + torch.randn(6, 5) for _ in range(3)]
    none = MergeOptions(**{"lambda": 0.4, "dare_drop": 0.0, "ties_density": 1.0})
    torch.testing.assert_close(dare(base, experts, none, "w"), task_arithmetic(base, experts, none))
    torch.testing.assert_close(dare_ties(base, experts, none, "w"), ties(base, experts, none))


def test_dare_drops_a_seeded_fraction_and_rescales_the_rest():
    base = torch.zeros(100, 100)
    expert = torch.full((100, 100), 2.0)
    options = MergeOptions(**{"lambda": 1.0, "dare_drop": 0.75, "seed": 3})
    merged = dare(base, [expert], options, "layer.weight")
    kept = merged != 0
    assert torch.all(merged[kept] == 8.0)  # 2 / (1 − 0.75)
    assert 0.22 < kept.float().mean() < 0.28  # a quarter survives
    assert torch.equal(merged, dare(base, [expert], options, "layer.weight"))  # reproducible
    assert not torch.equal(merged, dare(base, [expert], options, "other.weight"))  # each tensor its own mask
    assert not torch.equal(merged, dare(base, [expert], options.model_copy(update={"seed": 4}), "layer.weight"))
    two = dare(base, [expert, expert], options, "layer.weight")  # each expert its own mask: sums of 0, 8, 16
    assert set(two.unique().tolist()) == {0.0, 8.0, 16.0}


def test_dare_ties_elects_signs_on_the_dropped_vectors():
    base = torch.zeros(4)
    experts = [torch.tensor([1.0, -1.0, 2.0, 0.0]), torch.tensor([-3.0, -1.0, 1.0, 1.0])]
    merged = dare_ties(base, experts, MergeOptions(**{"lambda": 1.0, "dare_drop": 0.0}), "w")
    # signs of the sums [-2, -2, 3, 1] → [-, -, +, +]: only agreeing entries are summed
    torch.testing.assert_close(merged, torch.tensor([-3.0, -2.0, 3.0, 1.0]))


def test_the_engine_has_no_method_names():
    source = inspect.getsource(commerge_ui.engine)
    names = "|".join(re.escape(n) for n in METHODS)
    assert not re.search(rf"[\"'](?:{names})[\"']", source)


def test_unknown_methods_are_refused_by_the_config():
    with pytest.raises(InputError, match="unknown method 'fisher'.*known: com, com_chain, regmean"):
        parse_config({"base": "b", "experts": [{"name": "t", "model": "m"}], "methods": ["fisher"]})


def test_a_method_registered_outside_the_engine_runs_end_to_end(tiny, tmp_path, monkeypatch):
    """RegMean on the merged model's inputs (X̂ᵀX̂ W_i): declared here, gathered and solved by the engine."""
    calls = []

    def terms(inputs: GroupInputs, alpha: float, options: MergeOptions):
        calls.append(inputs.x_hat.shape)
        return regmean_terms(inputs.x_hat, inputs.w, inputs.w_mean, alpha)

    plugin = Method("regmean_on_merged", "RegMean on merged inputs", "a test", average, needs_base=False,
                    group_terms=terms, reads=frozenset({MERGED_INPUTS}))
    monkeypatch.setitem(METHODS, plugin.name, plugin)
    config = parse_config(tiny.config(methods=["regmean_on_merged", "regmean"]))
    report = json.loads(run_merge(config, out_dir=tmp_path / "out", save=["regmean_on_merged"], device="cpu").to_json())
    assert len(calls) == 3 * len(report["layers"])  # once per task and layer group
    ours, regmean = report["methods"]["regmean_on_merged"], report["methods"]["regmean"]
    assert ours["shift"] != regmean["shift"] and all(v is not None for v in ours["scores"].values())
    assert "RegMean on merged inputs" in (tmp_path / "out" / "regmean_on_merged" / "README.md").read_text()


def test_linear_rules_stream_the_experts_and_match_the_stacked_rule():
    torch.manual_seed(0)
    base = torch.randn(5, 7)
    experts = [base + torch.randn(5, 7) for _ in range(4)]
    options = MergeOptions(**{"lambda": 0.4})
    for name, rule in (("average", average), ("task_arithmetic", task_arithmetic)):
        read = []

        def one_at_a_time():
            for e in experts:
                read.append(e)
                yield e.to(torch.bfloat16)

        merged = METHODS[name].merge_tensor(base, one_at_a_time(), options, "w")
        assert merged.dtype == torch.bfloat16 and len(read) == 4
        expected = rule(base, [e.to(torch.bfloat16) for e in experts], options)
        torch.testing.assert_close(merged.float(), expected.to(torch.bfloat16).float())
    before = [e.clone() for e in experts]
    METHODS["average"].merge_tensor(base, experts, options)  # float32 experts: summed into a copy, not in place
    assert all(torch.equal(a, b) for a, b in zip(before, experts))
    ties_merged = METHODS["ties"].merge_tensor(base, iter(experts), options)  # a non-linear rule takes a list
    torch.testing.assert_close(ties_merged, ties(base, experts, options))


def test_data_free_methods_skip_the_calibration_forwards_when_their_shift_is_not_asked(tiny, tmp_path, monkeypatch):
    from commerge_ui.sources import SafetensorsWeights

    methods = ["com", "ties", "average"]
    config = tiny.config(methods=methods)
    with_shift = run_merge(parse_config(config), out_dir=tmp_path / "with", save=methods)
    config["options"] = {**config["options"], "data_free_shift": False}
    forwards = []
    original = commerge_ui.engine.run_block
    monkeypatch.setattr(commerge_ui.engine, "run_block", lambda *a: forwards.append(1) or original(*a))
    without = run_merge(parse_config(config), out_dir=tmp_path / "without", save=methods)
    assert without.layers == with_shift.layers and without.methods["com"].shift  # CoM still measures its shift
    for method in ["ties", "average"]:
        assert without.methods[method].shift == {} and without.methods[method].block_shift == {}
        assert without.methods[method].scores == with_shift.methods[method].scores
        a, b = SafetensorsWeights(tmp_path / "with" / method), SafetensorsWeights(tmp_path / "without" / method)
        for name in a.names():
            assert torch.equal(a.get(name), b.get(name)), (method, name)
    # the forwards that remain are CoM's (its layer groups found on one probe row per block, then its passes)
    com_only = list(forwards)
    forwards.clear()
    config["methods"] = ["ties", "average"]
    run_merge(parse_config(config))
    assert forwards == [] and com_only


def test_coms_other_reading_is_a_method_of_its_own_and_the_old_option_says_so(tiny, tmp_path):
    from commerge_ui.cli import main
    from commerge_ui.ui.handlers import DEFAULT_METHODS

    assert "com_chain" in DEFAULT_METHODS and METHODS["com_chain"].title == "CoM, chain only"
    with pytest.raises(InputError, match="'target' is no longer an option.*'com_chain' onto the experts' weights"):
        parse_config({"base": "b", "experts": [{"name": "t", "model": "m"}],
                      "options": {"target": "expert_weights"}})
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps(tiny.config(methods=["com", "com_chain"])))
    assert main(["merge", str(config), "--out", str(tmp_path / "out"), "--save", "com_chain", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (tmp_path / "out" / "com_chain" / "config.json").is_file()
    # the drift term is what lowers CoM's calibration shift: the chain alone keeps less of it
    last = {m: sum(v[-1] for v in r["shift"].values()) for m, r in report["methods"].items()}
    assert last["com"] < last["com_chain"]
