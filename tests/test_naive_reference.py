"""The engine's CoM, RegMean and RegMean++ against the naive, independent implementation in commerge_ui/reference.py:
every expert run whole for its inputs X_i, and the merged model re-run from the embeddings for every layer
group (no cached streams, no shared code with the engine), under both bias modes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, BertForSequenceClassification

from commerge_ui.api import run_merge
from commerge_ui.config import parse_config
from commerge_ui.families.causal_lm import CausalLM
from commerge_ui.families.text_classification import TextClassification
from commerge_ui.reference import (BERT_GROUPS, GPT2_GROUPS, averaged, naive, relative_difference,
                                   without_first_tokens)
from commerge_ui.samples import read_samples

from conftest import make_base, make_expert, write_samples
from tiny_families import causal_lm, perturbed, save_word_tokenizer, saved_lm_base, write_texts

ALPHA = 0.9


def _merge(root: Path, base: Path, experts: list[Path], calibration: list[Path], method: str, bias: str,
           sink: int | None = None, floor: float | None = None) -> Path:
    """`floor` None: the config's default `ridge_floor`, which the naive reference also takes by default."""
    options = {"calibration_samples": 24, "max_length": 16, "alpha": ALPHA, "bias": bias, "gram_dtype": "float64",
               "normalize": "tokens", "sink_tokens": sink, **({} if floor is None else {"ridge_floor": floor})}
    config = parse_config({
        "base": str(base), "methods": [method],
        "experts": [{"name": f"t{i}", "model": str(e), "calibration": str(c)}
                    for i, (e, c) in enumerate(zip(experts, calibration))],
        "options": options})
    out = root / f"out-{method}-{bias}-{sink}-{floor}"
    run_merge(config, out_dir=out, save=[method], device="cpu")
    return out / method


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A 2-layer BERT whose FFN is 4× wide, so `output.dense` reads 128 and writes 32."""
    root = tmp_path_factory.mktemp("naive-bert")
    base = make_base(root / "base", layers=2, hidden=32, ffn=4)
    with torch.no_grad():  # BERT initialises biases to zero, and the experts' noise scales with each tensor's std
        for name, param in base.named_parameters():
            if name.endswith(".bias"):
                param.normal_(0.0, 0.1)
    base.save_pretrained(root / "base")
    experts, calibration = [], []
    for i in range(3):
        make_expert(root / f"e{i}", base, noise=0.3, seed=200 + i)
        experts.append(root / f"e{i}")
        calibration.append(write_samples(root / f"c{i}.jsonl", 24, seed=i, labelled=False))
    return root, experts, calibration


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A 2-layer GPT-2 (Conv1D layers; `mlp.c_proj` reads 128 and writes 32)."""
    root = tmp_path_factory.mktemp("naive-gpt2")
    base = saved_lm_base(root, "gpt2", tied=True)
    experts, calibration = [], []
    for i in range(3):
        model = perturbed(causal_lm("gpt2", layers=2, tied=True), 0.0, 0)
        model.load_state_dict(base.state_dict())
        perturbed(model, 0.3, seed=300 + i)
        model.save_pretrained(root / f"e{i}")
        save_word_tokenizer(root / f"e{i}")
        experts.append(root / f"e{i}")
        calibration.append(write_texts(root / f"c{i}.jsonl", 24, seed=i))
    return root, experts, calibration


def _batches(family, folder: Path, calibration: list[Path], sink: int = 0):
    processor = family.load_processor(folder)
    out = []
    for path in calibration:
        encoded = family.encode(processor, read_samples(path), 16)
        out.append((encoded.inputs, without_first_tokens(encoded.token_mask, sink)))
    return out


@pytest.mark.parametrize("method", ["com", "com_chain", "regmean", "regmean_plusplus"])
@pytest.mark.parametrize("bias", ["regress", "average"])
def test_bert_merge_equals_the_naive_reference(bert, method, bias):
    root, experts, calibration = bert
    models = [BertForSequenceClassification.from_pretrained(e).bert.eval() for e in experts]
    reference = averaged(models, AutoModel.from_pretrained(root / "base").eval())
    naive(method, reference, models, "encoder.layer", 2, BERT_GROUPS,
          _batches(TextClassification(), root / "base", calibration), bias)
    ours = AutoModel.from_pretrained(_merge(root, root / "base", experts, calibration, method, bias))
    assert relative_difference(ours.state_dict(), reference.state_dict(), "encoder.layer") < 1e-5


@pytest.mark.parametrize("method", ["com", "regmean"])
def test_bert_merge_with_a_large_floor_equals_the_naive_reference(bert, method):
    """The tiny models have no dark channels, so the default floor is below the tolerance here: a floor of 0.5
    checks its formula (μ = floor × mean diagonal of the summed left-hand side, toward W̄) against the naive one."""
    root, experts, calibration = bert
    models = [BertForSequenceClassification.from_pretrained(e).bert.eval() for e in experts]
    batches = _batches(TextClassification(), root / "base", calibration)
    reference = averaged(models, AutoModel.from_pretrained(root / "base").eval())
    naive(method, reference, models, "encoder.layer", 2, BERT_GROUPS, batches, "regress", floor=0.5)
    ours = AutoModel.from_pretrained(_merge(root, root / "base", experts, calibration, method, "regress", floor=0.5))
    plain = AutoModel.from_pretrained(_merge(root, root / "base", experts, calibration, method, "regress", floor=0.0))
    assert relative_difference(ours.state_dict(), reference.state_dict(), "encoder.layer") < 1e-5
    assert relative_difference(plain.state_dict(), reference.state_dict(), "encoder.layer") > 1e-3


@pytest.mark.parametrize("method", ["com", "com_chain", "regmean", "regmean_plusplus"])
@pytest.mark.parametrize("bias", ["regress", "average"])
def test_gpt2_merge_equals_the_naive_reference(gpt2, method, bias):
    """Unset, sink_tokens is the causal-LM family's 1: each text's first token is left out of the statistics."""
    root, experts, calibration = gpt2
    models = [AutoModelForCausalLM.from_pretrained(e).eval() for e in experts]
    reference = averaged(models, AutoModelForCausalLM.from_pretrained(root / "base").eval())
    naive(method, reference, models, "transformer.h", 2, GPT2_GROUPS,
          _batches(CausalLM(), root / "base", calibration, sink=1), bias)
    ours = AutoModelForCausalLM.from_pretrained(_merge(root, root / "base", experts, calibration, method, bias))
    assert relative_difference(ours.state_dict(), reference.state_dict(), "transformer.h") < 1e-5


def test_gpt2_com_with_every_token_equals_the_naive_reference_and_differs_from_the_default(gpt2):
    root, experts, calibration = gpt2
    models = [AutoModelForCausalLM.from_pretrained(e).eval() for e in experts]
    reference = averaged(models, AutoModelForCausalLM.from_pretrained(root / "base").eval())
    naive("com", reference, models, "transformer.h", 2, GPT2_GROUPS,
          _batches(CausalLM(), root / "base", calibration, sink=0), "regress")
    every = AutoModelForCausalLM.from_pretrained(_merge(root, root / "base", experts, calibration, "com", "regress", 0))
    default = AutoModelForCausalLM.from_pretrained(_merge(root, root / "base", experts, calibration, "com", "regress"))
    assert relative_difference(every.state_dict(), reference.state_dict(), "transformer.h") < 1e-5
    assert relative_difference(default.state_dict(), reference.state_dict(), "transformer.h") > 1e-3


def test_without_first_tokens_by_hand():
    mask = torch.tensor([[True, True, True, False], [False, True, True, True], [True, False, False, False]])
    assert without_first_tokens(mask, 1).tolist() == [[False, True, True, False], [False, False, True, True],
                                                      [False, False, False, False]]
    assert without_first_tokens(mask, 0).equal(mask)
