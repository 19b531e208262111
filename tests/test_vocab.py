"""An expert that grew the vocabulary (tokens added, embeddings and head resized, as chat fine-tunes do) merges
with the base's vocabulary kept: its added rows are dropped with a warning naming the tokens; an expert whose
tokenizer moved the base's tokens is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from commerge_ui.api import run_merge
from commerge_ui.config import parse_config
from commerge_ui.errors import InputError
from commerge_ui.ui.form import model_message

from tiny_families import causal_lm, perturbed, save_word_tokenizer, saved_lm_base, write_texts

ADDED = ["<|im_start|>", "<|im_end|>", "<tool>"]


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    base = saved_lm_base(root, "llama", tied=False)
    for k, add in enumerate([True, False]):
        model = causal_lm("llama", layers=2, tied=False)
        model.load_state_dict(base.state_dict())
        perturbed(model, 0.3, seed=100 + k)
        folder = root / f"task{k}"
        save_word_tokenizer(folder)
        if add:  # as a chat fine-tune: tokens added, both tables resized, the new rows trained
            tokenizer = AutoTokenizer.from_pretrained(folder)
            tokenizer.add_special_tokens({"additional_special_tokens": ADDED})
            model.resize_token_embeddings(len(tokenizer))
            with torch.no_grad():
                model.get_input_embeddings().weight[-len(ADDED):].normal_()
                model.get_output_embeddings().weight[-len(ADDED):].normal_()
            tokenizer.save_pretrained(folder)
        model.save_pretrained(folder)
        write_texts(root / f"c{k}.jsonl", 16, k)
        write_texts(root / f"e{k}.jsonl", 8, 50 + k)
    return root


def config_of(root: Path, methods: list[str]) -> object:
    return parse_config({"base": str(root / "base"), "methods": methods,
                         "experts": [{"name": f"t{k}", "model": str(root / f"task{k}"),
                                      "calibration": str(root / f"c{k}.jsonl"), "evaluation": str(root / f"e{k}.jsonl")}
                                     for k in range(2)],
                         "options": {"calibration_samples": 16, "max_length": 16}})


def test_a_grown_vocabulary_merges_with_the_bases_and_names_the_dropped_tokens(grown, tmp_path):
    report = run_merge(config_of(grown, ["average", "com"]), out_dir=tmp_path / "out", save=["average"], device="cpu")
    warning = next(w for w in report.warnings if "rows beyond the base's" in w)
    assert "3 rows" in warning and all(repr(t) in warning for t in ADDED) and "tokenizer_source is base" in warning
    assert report.options["tokenizer_source"] == "base"
    merged = load_file(tmp_path / "out" / "average" / "model.safetensors")
    experts = [load_file(grown / f"task{k}" / "model.safetensors") for k in range(2)]
    base_rows = load_file(grown / "base" / "model.safetensors")["model.embed_tokens.weight"].shape[0]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert merged[name].shape[0] == base_rows
        torch.testing.assert_close(merged[name], (experts[0][name][:base_rows] + experts[1][name]) / 2)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "average")  # loads, with the base's tokenizer
    assert model.get_input_embeddings().weight.shape[0] == base_rows
    card = (tmp_path / "out" / "average" / "README.md").read_text()
    assert "| tokenizer_source | base |" in card


def test_the_form_says_the_added_tokens_are_dropped(grown):
    note = model_message(str(grown / "task0"), str(grown / "base"))
    assert note.startswith("✔") and "matches the base; its 3 added tokens are dropped" in note


def test_an_expert_whose_tokenizer_moved_the_bases_tokens_is_refused(grown, tmp_path):
    moved = tmp_path / "moved"
    for file in (grown / "task0").iterdir():
        (moved / file.name).parent.mkdir(exist_ok=True)
        (moved / file.name).write_bytes(file.read_bytes())
    data = json.loads((moved / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[4:6]  # two ordinary words swap ids
    vocab[first], vocab[second] = vocab[second], vocab[first]
    (moved / "tokenizer.json").write_text(json.dumps(data))
    config = config_of(grown, ["average"]).model_copy()
    config.experts[0] = config.experts[0].model_copy(update={"model": str(moved)})
    with pytest.raises(InputError, match=r"gives the base's token .* not the base's vocabulary with tokens added"):
        run_merge(config, device="cpu")


def test_another_tokenizer_source_is_refused_by_name():
    with pytest.raises(InputError, match="tokenizer_source 'union' is not supported"):
        parse_config({"base": "b", "experts": [{"name": "t", "model": "m"}], "options": {"tokenizer_source": "union"}})
