"""`commerge convert`: a pickle-only checkpoint becomes safetensors with identical tensors; a pickle that would
run code is refused and nothing in it runs; the refusal of a pickle-only expert names the remedy."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

from commerge_ui.cli import main
from commerge_ui.errors import InputError
from commerge_ui.sources import check_model_folder

from conftest import save_tokenizer


def pickle_only(tiny, folder: Path) -> dict[str, torch.Tensor]:
    model = BertForSequenceClassification.from_pretrained(tiny.experts["task0"])
    folder.mkdir()
    model.config.save_pretrained(folder)  # as older transformers saved fine-tunes: config and a pickle
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    save_tokenizer(folder)
    assert (folder / "pytorch_model.bin").is_file() and not list(folder.glob("*.safetensors"))
    return model.state_dict()


def test_a_pickle_only_expert_is_refused_naming_the_remedy(tiny, tmp_path):
    pickle_only(tiny, tmp_path / "old")
    with pytest.raises(InputError, match=r"only pickle weights \(pytorch_model.bin\).*commerge convert .*refs/pr/N"):
        check_model_folder(tmp_path / "old")


def test_convert_gives_identical_tensors_and_a_usable_expert(tiny, tmp_path, capsys):
    state = pickle_only(tiny, tmp_path / "old")
    assert main(["convert", str(tmp_path / "old"), "--out", str(tmp_path / "new")]) == 0
    said = capsys.readouterr().out
    assert "converted pytorch_model.bin" in said and "no code ran" in said
    converted = load_file(tmp_path / "new" / "model.safetensors")
    assert set(converted) == set(state)
    for name, tensor in state.items():
        assert torch.equal(converted[name], tensor), name
    check_model_folder(tmp_path / "new")  # a model folder now
    assert (tmp_path / "new" / "config.json").is_file() and (tmp_path / "new" / "tokenizer.json").is_file()
    assert main(["convert", str(tmp_path / "old"), "--out", str(tmp_path / "new")]) == 2  # never overwritten


class Payload:
    """A pickle that runs code when loaded: it creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, capsys):
    marker = tmp_path / "ran"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with open(folder / "pytorch_model.bin", "wb") as stream:
        pickle.dump({"weight": Payload(marker)}, stream)
    assert main(["convert", str(folder), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "pytorch_model.bin: refused" in err and "nothing in it was run" in err
    assert not marker.exists() and not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))
