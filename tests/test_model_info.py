"""Reading a model without its weights, and telling whether an expert fits the base."""

import json

import pytest
from transformers import BertModel

from commerge_ui.errors import InputError
from commerge_ui.api import run_merge
from commerge_ui.config import parse_config
from commerge_ui.model_info import compare_to_base, config_differences, fit_problems, inspect_model
from commerge_ui.ui.form import model_message

from conftest import bert_config, make_base


def test_local_folder_is_described_from_headers(tiny):
    info = inspect_model(str(tiny.experts["task0"]))
    assert info.model_type == "bert" and info.family == "text-classification"
    assert info.architectures == ["BertForSequenceClassification"]
    expected = sum(p.numel() for p in BertModel.from_pretrained(tiny.experts["task0"]).parameters())
    head = info.shapes["classifier.weight"], info.shapes["classifier.bias"]
    assert info.parameters - head[0][0] * head[0][1] - head[1][0] == expected
    assert "parameters" in info.summary()


def test_an_expert_with_a_wrapper_prefix_matches_its_bare_base(tiny):
    # The base stores 'embeddings.…', the expert 'bert.embeddings.…' plus a classifier and pooler.
    assert compare_to_base(inspect_model(str(tiny.base)), inspect_model(str(tiny.experts["task1"]))) == []


def test_different_width_names_the_first_tensors(tmp_path, tiny):
    make_base(tmp_path / "wide", hidden=48)
    problems = compare_to_base(inspect_model(str(tiny.base)), inspect_model(str(tmp_path / "wide")))
    assert len(problems) == 3
    assert problems[0] == "'embeddings.LayerNorm.bias' has shape [48], base has [32]"


def test_the_differing_config_values_come_first_and_the_page_and_the_run_say_the_same(tmp_path, tiny):
    make_base(tmp_path / "shallow", layers=1)
    shallow = fit_problems(inspect_model(str(tiny.base)), inspect_model(str(tmp_path / "shallow")))
    assert shallow[0] == "layers 1, the base has 2" and "encoder.layer.1." in shallow[1]
    make_base(tmp_path / "wide", hidden=48)
    message = model_message(str(tmp_path / "wide"), str(tiny.base))
    assert message.startswith("✘ ") and "does not match the base: hidden size 48, the base has 32; " in message
    config = tiny.config(methods=["average"])
    config["experts"][0]["model"] = str(tmp_path / "wide")
    with pytest.raises(InputError) as refused:
        run_merge(parse_config(config))
    assert str(refused.value).split("does not match the base: ")[1] == message.split("does not match the base: ")[1]
    assert fit_problems(inspect_model(str(tiny.base)), inspect_model(str(tiny.experts["task1"]))) == []


def test_config_differences_by_hand():
    base = {"model_type": "llama", "hidden_size": 576, "num_key_value_heads": 3, "vocab_size": 49152}
    assert config_differences(base, {**base, "num_key_value_heads": 9, "vocab_size": 49151}) == [
        "key-value heads 9, the base has 3", "vocabulary 49151, the base has 49152"]
    # tokens added to the base's vocabulary are not a difference: such an expert merges (vocab.py)
    assert config_differences(base, {**base, "vocab_size": 49155}) == []
    assert config_differences({"n_embd": 32, "n_layer": 2}, {"n_embd": 32}) == ["layers unset, the base has 2"]
    clip = {"model_type": "clip", "vision_config": {"hidden_size": 32}, "text_config": {"hidden_size": 32}}
    assert config_differences(clip, {"model_type": "clip_vision_model", "hidden_size": 48}) == [
        "vision tower's hidden size 48, the base has 32"]


def test_different_depth_is_reported_as_missing_layers(tmp_path, tiny):
    make_base(tmp_path / "shallow", layers=1)
    problems = compare_to_base(inspect_model(str(tiny.base)), inspect_model(str(tmp_path / "shallow")))
    assert problems and all("encoder.layer.1." in p and "missing" in p for p in problems)


def test_different_architecture_is_refused(tmp_path, tiny):
    other = tmp_path / "other"
    make_base(other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    assert compare_to_base(inspect_model(str(tiny.base)), inspect_model(str(other))) == [
        "architecture 'roberta' differs from the base's 'bert'"]


@pytest.mark.parametrize("ref, message", [
    ("", "no model given"),
    ("./no/such/folder", "no such folder"),
    ("not a repo id!", "not a Hub model id"),
])
def test_bad_references_are_refused(ref, message):
    with pytest.raises(InputError, match=message):
        inspect_model(ref)


def test_a_file_or_a_pickle_folder_is_refused(tmp_path, tiny):
    with pytest.raises(InputError, match="got a file"):
        inspect_model(str(tiny.calibration["task0"]))
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(bert_config().to_dict()))
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(InputError, match="only pickle weights"):
        inspect_model(str(folder))


def test_hub_id_offline_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(InputError, match="commerge-test/none"):
        inspect_model("commerge-test/none")
