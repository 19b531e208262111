"""The causal-LM and CLIP families end to end on tiny real models: the same config, API and report as BERT's."""

import json
import math
import zipfile

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_families import COLOURS, make_clip_setup, make_lm_setup
from transformers import AutoModelForCausalLM, CLIPModel, CLIPVisionModelWithProjection

from commerge_ui.api import run_merge
from commerge_ui.compat import find_source
from commerge_ui.config import parse_config
from commerge_ui.errors import InputError
from commerge_ui.families import detect_family
from commerge_ui.families.causal_lm import perplexity
from commerge_ui.methods import METHODS
from commerge_ui.layers import find_layer_groups, group_weight, linear_shape, set_group_weight
from commerge_ui.model_info import compare_to_base, inspect_model
from commerge_ui.samples import read_samples
from commerge_ui.sources import SafetensorsWeights

KINDS = ["gpt2", "llama", "clip"]


def make(kind, root, **kwargs):
    return make_clip_setup(root, **kwargs) if kind == "clip" else make_lm_setup(root, kind, **kwargs)


@pytest.fixture(scope="module", params=KINDS)
def distinct(request, tmp_path_factory):
    """Three distinct experts per family, merged once with CoM and RegMean (both saved)."""
    setup = make(request.param, tmp_path_factory.mktemp(request.param), layers=4, noise=0.5)
    out = setup.root / "out"
    report = run_merge(parse_config(setup.config(methods=["com", "regmean", "average"])), out_dir=out,
                       save=["com", "regmean"])
    return request.param, setup, report, out


REGRESSION = [name for name, m in METHODS.items() if m.regression]


@pytest.mark.parametrize("kind", KINDS)
def test_identical_experts_give_the_expert_back(tmp_path, kind):
    setup = make(kind, tmp_path, identical=True)
    report = run_merge(parse_config(setup.config(methods=REGRESSION)), out_dir=tmp_path / "out", save=REGRESSION)
    expert = SafetensorsWeights(setup.experts["task0"])
    for method in REGRESSION:
        held = report.methods[method].heldout_shift  # the merged model is the expert on held-out samples too
        assert list(held) == list(setup.experts) and max(max(v) for v in held.values()) < 1e-4, (method, held)
        merged = SafetensorsWeights(tmp_path / "out" / method)
        source = find_source(expert, merged.names(), "", "expert")
        compared = 0
        for name in merged.names():
            if source.has(name):
                assert torch.allclose(merged.get(name).float(), source.get(name).float(), atol=2e-4), (method, name)
                compared += 1
        assert compared >= len(merged.names()) - 1  # all but, at most, a projection the expert does not store


@pytest.mark.parametrize("kind", [*KINDS, "bert"])
def test_every_registered_method_merges_every_family(kind, tiny, tmp_path):
    setup = tiny if kind == "bert" else make(kind, tmp_path, layers=2, noise=0.5)
    report = run_merge(parse_config(setup.config(methods=list(METHODS))))
    assert list(report.methods) == list(METHODS)
    for name, method in report.methods.items():
        assert all(s is not None and math.isfinite(s) for s in method.scores.values()), name
        assert all(len(v) == len(report.layers) and all(map(math.isfinite, v)) for v in method.shift.values()), name


def test_com_shift_at_the_last_layer_is_below_regmean(distinct):
    kind, setup, report, _ = distinct
    last = {m: sum(v[-1] for v in report.methods[m].shift.values()) / 3 for m in ("com", "regmean")}
    assert last["com"] < last["regmean"], (kind, last)
    assert all(len(v) == len(report.layers) for v in report.methods["com"].shift.values())


def test_report_schema_is_the_same_for_every_family(distinct, tiny, tmp_path):
    kind, setup, report, out = distinct
    bert = run_merge(parse_config(tiny.config(methods=["com", "regmean", "average"])), out_dir=tmp_path)

    def shape(value):
        if isinstance(value, dict):
            return {k if k not in setup.experts else "<task>": shape(v) for k, v in value.items()}
        return type(value).__name__ if not isinstance(value, (int, float)) or isinstance(value, bool) else "number"

    ours, theirs = json.loads((out / "report.json").read_text()), json.loads((tmp_path / "report.json").read_text())
    for data in (ours, theirs):
        data.pop("options")
        data["warnings"] = []
        for method in data["methods"].values():
            method["warnings"] = []
    assert shape(ours).keys() == shape(theirs).keys()
    assert shape(ours["methods"]) == shape(theirs["methods"])
    assert ours["family"] == {"gpt2": "causal-lm", "llama": "causal-lm", "clip": "image-classification"}[kind]
    assert bert.family == "text-classification"
    for result in report.methods.values():  # one held-out value per block (4) and task, distinct experts: > 0
        assert {len(v) for v in result.heldout_shift.values()} == {4} and min(map(min, result.heldout_shift.values())) > 0


@pytest.mark.parametrize("distinct", ["gpt2", "llama"], indirect=True)
def test_causal_lm_scores_are_perplexities_normalized_expert_over_merged(distinct):
    kind, setup, report, _ = distinct
    assert report.metric == "perplexity" and report.higher_is_better is False
    com = report.methods["com"]
    for task, ppl in com.scores.items():
        assert 1.0 < ppl < 100.0
        assert com.normalized[task] == pytest.approx(report.experts[task]["score"] / ppl)


@pytest.mark.parametrize("distinct", ["gpt2", "llama"], indirect=True)
def test_perplexity_of_a_padded_batch_equals_one_text_at_a_time(distinct):
    kind, setup, _, _ = distinct
    family = detect_family(setup.base)
    model = family.load_backbone(setup.base, torch.float32, torch.device("cpu"))
    tokenizer = family.load_processor(setup.base)
    encoded = family.encode(tokenizer, read_samples(setup.evaluation["task0"]), 64)
    assert not encoded.token_mask.all()  # the batch really is padded
    assert perplexity(model, encoded, batch_size=12) == pytest.approx(perplexity(model, encoded, batch_size=1), rel=1e-5)


@pytest.mark.parametrize("distinct", ["gpt2", "llama"], indirect=True)
def test_tied_embeddings_stay_tied_and_untied_heads_are_merged(distinct, tmp_path):
    kind, setup, _, out = distinct
    merged = AutoModelForCausalLM.from_pretrained(out / "com")
    assert merged.lm_head.weight.data_ptr() == merged.get_input_embeddings().weight.data_ptr()
    untied = make_lm_setup(tmp_path, kind, tied=False)
    run_merge(parse_config(untied.config(methods=["com"])), out_dir=tmp_path / "out", save=["com"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "com")
    heads = [load_file(str(untied.experts[t] / "model.safetensors"))["lm_head.weight"] for t in untied.experts]
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    assert torch.allclose(model.lm_head.weight, torch.stack(heads).mean(dim=0), atol=1e-6)


def test_gqa_and_conv1d_groups_have_the_right_shapes(tmp_path):
    for kind, first_group, widths in (("llama", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                                       [32, 16, 16]),
                                      ("gpt2", ("attn.c_attn",), [96])):
        setup = make_lm_setup(tmp_path / kind, kind, n_experts=1)
        family = detect_family(setup.base)
        model = family.load_backbone(setup.base, torch.float32, torch.device("cpu"))
        _, blocks = family.blocks(model)
        captured = {}
        handle = blocks[0].register_forward_pre_hook(lambda m, a, k: captured.update(a=a, k=k), with_kwargs=True)
        model(input_ids=torch.tensor([[2, 5, 6, 7]]), use_cache=False)
        handle.remove()
        groups = find_layer_groups(blocks[0], lambda: blocks[0](*captured["a"], **captured["k"]))
        assert groups[0].names == first_group
        assert len(groups) == 4  # attention in, attention out, MLP in (gate+up share it), MLP out
        modules = groups[0].modules(blocks[0])
        assert [linear_shape(m)[1] for m in modules] == widths
        weight = group_weight(modules, with_bias=kind == "gpt2")
        assert weight.shape == (32 + (kind == "gpt2"), sum(widths))
        before = [m.weight.clone() for m in modules]
        set_group_weight(modules, weight, with_bias=kind == "gpt2")
        assert all(torch.equal(b, m.weight) for b, m in zip(before, modules))


def test_gpt2_files_without_the_transformer_prefix_are_read(tmp_path):
    setup = make_lm_setup(tmp_path, "gpt2", n_experts=2)
    file = setup.experts["task1"] / "model.safetensors"
    tensors = load_file(str(file))
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, str(file), metadata={"format": "pt"})
    report = run_merge(parse_config(setup.config(methods=["regmean"])))
    assert all(math.isfinite(s) for s in report.methods["regmean"].scores.values())


def test_bfloat16_weights_merge_with_float32_statistics(tmp_path):
    setup = make_lm_setup(tmp_path, "llama")
    report = run_merge(parse_config(setup.config(methods=["com"])), out_dir=tmp_path / "out", save=["com"],
                       dtype="bfloat16")
    assert all(math.isfinite(v) for v in report.methods["com"].scores.values())
    assert all(t.dtype == torch.bfloat16 for t in load_file(str(tmp_path / "out/com/model.safetensors")).values())


@pytest.mark.parametrize("distinct", ["clip"], indirect=True)
def test_zero_shot_heads_come_from_class_names_through_the_base_text_tower(distinct):
    kind, setup, report, out = distinct
    head_dir = out / "com" / "heads" / "task1"
    classes = json.loads((head_dir / "classes.json").read_text())
    assert classes == {"classes": ["blue", "green", "red"], "templates": ["a photo of a {}."]}  # from the labels
    clip = CLIPModel.from_pretrained(setup.base)
    tokens = detect_family(setup.base).load_processor(setup.base).tokenizer(
        [f"a photo of a {c}." for c in classes["classes"]], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = torch.nn.functional.normalize(
            clip.text_projection(clip.text_model(**tokens).pooler_output), dim=-1)
    assert torch.allclose(load_file(str(head_dir / "head.safetensors"))["weight"], expected, atol=1e-5)
    tower = CLIPVisionModelWithProjection.from_pretrained(out / "com")  # the merged tower loads on its own
    assert tower.config.projection_dim == 16
    assert 0.0 <= report.methods["com"].scores["task1"] <= 1.0


def test_templates_are_averaged_and_integer_labels_need_names(tmp_path):
    setup = make_clip_setup(tmp_path)
    one = detect_family(setup.base, templates=["a photo of a {}."]).zero_shot_head(["red", "blue"])
    two = detect_family(setup.base, templates=["a photo of a {}.", "a {} thing."]).zero_shot_head(["red", "blue"])
    assert one.shape == two.shape == (2, 16) and not torch.allclose(one, two)
    assert torch.allclose(two.norm(dim=-1), torch.ones(2))
    lines = [json.loads(line) for line in setup.evaluation["task2"].read_text().splitlines()]
    numbered = tmp_path / "numbered.jsonl"
    numbered.write_text("".join(json.dumps({"image": str(setup.evaluation["task2"].parent / r["image"]),
                                            "label": list(COLOURS).index(r["label"])}) + "\n" for r in lines))
    config = setup.config(methods=["average"])
    config["experts"][2]["evaluation"] = str(numbered)
    with pytest.raises(InputError, match="set 'labels' for this expert"):
        run_merge(parse_config(config))
    config["experts"][2]["labels"] = list(COLOURS)
    assert run_merge(parse_config(config)).experts["task2"]["score"] is not None


def test_a_vision_tower_of_another_width_is_refused_clearly(tmp_path):
    setup = make_clip_setup(tmp_path)
    other = make_clip_setup(tmp_path / "other")
    from tiny_families import clip_model

    wide = clip_model()
    wide.config.vision_config.hidden_size = 48
    wide = CLIPModel(wide.config)
    wide.save_pretrained(other.root / "wide")
    config = setup.config(methods=["average"])
    config["experts"][0]["model"] = str(other.root / "wide")
    with pytest.raises(InputError, match=r"does not match the base: vision tower's hidden size 48, the base has "
                                         r"\d+; .*'vision_model\..*' has shape"):
        run_merge(parse_config(config))
    base = inspect_model(str(setup.base))
    assert compare_to_base(base, inspect_model(str(setup.experts["task1"]))) == []  # a CLIPVisionModel expert
    assert compare_to_base(base, inspect_model(str(other.root / "wide")))
    assert base.family == "image-classification"


def test_the_config_bundle_carries_image_folders_and_reruns(tmp_path):
    from commerge_ui.cli import main as cli_main
    from commerge_ui.export import write_config_bundle

    setup = make_clip_setup(tmp_path / "clip")
    (setup.calibration["task1"] / "id_rsa").write_text("not an image: it must not travel")
    bundle = tmp_path / "bundle"
    write_config_bundle(parse_config(setup.config(methods=["average"])), bundle)
    with zipfile.ZipFile(bundle / "samples" / "task1_calibration.zip") as images:  # its images, and only those
        names = images.namelist()
    assert sorted({n.split("/")[0] for n in names}) == ["blue", "green", "red"] and not any("id_rsa" in n for n in names)
    assert cli_main(["merge", str(bundle / "config.yaml"), "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["family"] == "image-classification"


def test_samples_of_the_wrong_kind_and_a_vision_only_base_are_refused(tmp_path):
    clip = make_clip_setup(tmp_path / "clip")
    lm = make_lm_setup(tmp_path / "lm", "gpt2", n_experts=1)
    config = clip.config(methods=["average"])
    config["experts"][0]["calibration"] = str(lm.calibration["task0"])
    with pytest.raises(InputError, match="image-classification samples must be images"):
        run_merge(parse_config(config))
    config = lm.config(methods=["average"])
    config["experts"][0]["calibration"] = str(clip.calibration["task0"])
    with pytest.raises(InputError, match="calibration samples are images; the base is a causal-lm model"):
        run_merge(parse_config(config))
    config = clip.config(methods=["average"], base=str(clip.experts["task1"]))  # a CLIPVisionModel
    with pytest.raises(InputError, match="the base must be a full CLIP model"):
        run_merge(parse_config(config))


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_rerun_from_cached_inputs_match_the_full_forward(tmp_path, kind):
    """Masks, rotary position embeddings and the rest reach each block when it is run from cached inputs."""
    from commerge_ui.engine import capture_block_inputs, run_block

    setup = make(kind, tmp_path, n_experts=1) if kind != "clip" else make_clip_setup(tmp_path)
    family = detect_family(setup.base)
    model = family.load_backbone(setup.base, torch.float32, torch.device("cpu"))
    samples = read_samples(setup.calibration["task0"])[:6]
    encoded = family.encode(family.load_processor(setup.base), samples, 32)
    _, blocks = family.blocks(model)
    stream = capture_block_inputs(family, model, blocks[0], encoded.inputs)
    with torch.no_grad():
        expected = model(**encoded.inputs, output_hidden_states=True).hidden_states
        for index, block in enumerate(blocks):
            stream.hidden = run_block(block, stream)
            if index < len(blocks) - 1:  # the last entry of hidden_states is after the final norm in some models
                mask = encoded.token_mask
                assert torch.allclose(stream.hidden[mask], expected[index + 1][mask], atol=1e-5), (kind, index)


def test_templates_with_other_braces_are_used_as_text(tmp_path):
    setup = make_clip_setup(tmp_path)
    head = detect_family(setup.base, templates=["a {} photo {style}."]).zero_shot_head(["red"])
    assert head.shape == (1, 16) and torch.isfinite(head).all()


def test_experts_are_read_a_tensor_at_a_time_never_whole(tmp_path, monkeypatch):
    """Merging four experts never holds four experts, nor four copies of one tensor: at most two expert tensors
    are alive at once (four embedding matrices together would exceed that)."""
    import weakref

    from commerge_ui.sources import SafetensorsWeights as Weights

    setup = make_lm_setup(tmp_path, "llama", n_experts=4, layers=3, tied=False)
    experts = {str(p) for p in setup.experts.values()}
    live, peak, largest = [0], [0], [0]
    real_get = Weights.get

    def tracked_get(self, name):
        tensor = real_get(self, name)
        if str(self.folder) in experts:
            size = tensor.numel() * tensor.element_size()
            live[0] += size
            peak[0], largest[0] = max(peak[0], live[0]), max(largest[0], size)
            weakref.finalize(tensor, lambda: live.__setitem__(0, live[0] - size))
        return tensor

    monkeypatch.setattr(Weights, "get", tracked_get)
    config = setup.config(methods=["com", "average", "task_arithmetic"])
    for expert in config["experts"]:
        expert.pop("evaluation")  # scoring loads one whole expert on purpose; the merge itself must not
    run_merge(parse_config(config))
    one_expert = sum(Weights(setup.experts["task0"]).get(n).nbytes for n in Weights(setup.experts["task0"]).names())
    assert largest[0] > 0 and peak[0] <= 2 * largest[0] < one_expert
