"""LoRA adapters as experts, made by the `peft` library itself: merging "base + adapter" experts gives what
merging their `merge_and_unload()` full models gives, for every method, on a tiny BERT classifier (LoRA with a
saved classifier head, and rsLoRA) and a tiny GPT-2 (Conv1D layers, fan_in_fan_out)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

peft = pytest.importorskip("peft")

from commerge_ui.api import run_merge  # noqa: E402
from commerge_ui.config import parse_config  # noqa: E402
from commerge_ui.errors import InputError  # noqa: E402
from commerge_ui.methods import METHODS  # noqa: E402
from commerge_ui.ui.form import model_message  # noqa: E402

from conftest import make_base, save_tokenizer, write_samples  # noqa: E402
from tiny_families import causal_lm, save_word_tokenizer, saved_lm_base, write_texts  # noqa: E402


def randomized(model, seed: int):
    """peft starts B at zero (a no-op adapter): give every factor seeded values, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return model


def recorded(adapter: Path, base: Path) -> None:
    """The base the adapter says it was trained on, as peft records it for a model loaded from that folder."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))


def adapter_pair(model, config, folder: Path, seed: int, tokenizer) -> tuple[Path, Path]:
    """The adapter saved as PEFT saves it, and its merge_and_unload() full model beside it."""
    lora = randomized(peft.get_peft_model(model, config), seed)
    lora.save_pretrained(folder / "adapter")
    lora.merge_and_unload().save_pretrained(folder / "full")
    tokenizer(folder / "full")
    return folder / "adapter", folder / "full"


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("lora-bert")
    make_base(root / "base", layers=2)
    pairs = []
    for k, rslora in enumerate([False, True]):
        model = AutoModelForSequenceClassification.from_pretrained(root / "base", num_labels=2)
        config = peft.LoraConfig(r=4, lora_alpha=8, use_rslora=rslora, task_type="SEQ_CLS",
                                 target_modules=["query", "value", "dense"], modules_to_save=["classifier"])
        pairs.append(adapter_pair(model, config, root / f"task{k}", 10 + k, save_tokenizer))
    samples = [(write_samples(root / f"c{k}.jsonl", 16, k, False), write_samples(root / f"e{k}.jsonl", 12, 50 + k, True))
               for k in range(2)]
    return root, pairs, samples


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-gpt2")
    base = saved_lm_base(root, "gpt2")
    pairs = []
    for k in range(2):
        model = causal_lm("gpt2", layers=2)
        model.load_state_dict(base.state_dict())
        config = peft.LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)
        pairs.append(adapter_pair(model, config, root / f"task{k}", 20 + k, save_word_tokenizer))
        recorded(pairs[-1][0], root / "base")
    samples = [(write_texts(root / f"c{k}.jsonl", 16, k), write_texts(root / f"e{k}.jsonl", 8, 50 + k)) for k in range(2)]
    return root, pairs, samples


def merged(root: Path, experts: list[Path], samples, methods: list[str], out: str, **spec) -> tuple[dict, dict]:
    config = parse_config({
        "base": str(root / "base"), "methods": methods,
        "experts": [{"name": f"t{k}", "model": str(e), "calibration": str(c), "evaluation": str(v), **spec}
                    for k, (e, (c, v)) in enumerate(zip(experts, samples))],
        "options": {"calibration_samples": 16, "max_length": 16}})
    report = run_merge(config, out_dir=root / out, save=methods, device="cpu")
    return {m: load_file(root / out / m / "model.safetensors") for m in methods}, json.loads(report.to_json())


@pytest.mark.parametrize("setup", ["bert", "gpt2"])
def test_every_method_merges_adapters_as_it_merges_their_full_models(setup, request):
    root, pairs, samples = request.getfixturevalue(setup)
    methods = list(METHODS)
    ours, ours_report = merged(root, [a for a, _ in pairs], samples, methods, "out-adapters")
    full, full_report = merged(root, [f for _, f in pairs], samples, methods, "out-full")
    for method in methods:
        for name, tensor in full[method].items():
            torch.testing.assert_close(ours[method][name], tensor, atol=2e-5, rtol=1e-4, msg=f"{method} {name}")
        assert ours_report["methods"][method]["scores"] == pytest.approx(full_report["methods"][method]["scores"])
    assert ours_report["experts"] == {t: {**e, "model": str(pairs[int(t[1])][0])}
                                      for t, e in full_report["experts"].items()}  # experts scored the same


def test_an_adapter_of_another_base_is_refused_unless_allowed_and_dora_is_named(bert, tmp_path):
    root, pairs, samples = bert
    other = tmp_path / "other"
    other.mkdir()
    for file in pairs[0][0].iterdir():
        (other / file.name).write_bytes(file.read_bytes())
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "someone/other-bert"}))
    with pytest.raises(InputError, match="a LoRA adapter of 'someone/other-bert', and the base is .*allow_other_base"):
        merged(root, [other, pairs[1][0]], samples, ["average"], "out-other")
    models, _ = merged(root, [other, pairs[1][0]], samples, ["average"], "out-allowed", allow_other_base=True)
    assert models["average"]
    (other / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(InputError, match="a DoRA adapter"):
        merged(root, [other, pairs[1][0]], samples, ["average"], "out-dora")


def test_the_form_describes_an_adapter_and_checks_its_base(bert):
    root, pairs, _ = bert
    note = model_message(str(pairs[1][0]), str(root / "base"))
    assert note.startswith("✔ rsLoRA r=4 on dense/query/value + classifier of") and "matches the base" in note
    assert model_message(str(pairs[1][0]), "someone/other-bert").startswith("✘")


@pytest.mark.slow
def test_an_adapter_merge_of_the_real_smollm2_loads_and_generates(tmp_path):
    """Two LoRA adapters of the real SmolLM2-135M (peft, seeded factors) merged; the merged folder loads in
    transformers and generates text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from commerge_ui.demo.smollm2 import ensure_smollm2

    base = ensure_smollm2(log=lambda m: None)
    adapters = []
    for k in range(2):
        model = AutoModelForCausalLM.from_pretrained(base)
        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
        lora = peft.get_peft_model(model, config)
        generator = torch.Generator().manual_seed(30 + k)
        with torch.no_grad():
            for name, param in lora.named_parameters():
                if "lora_" in name:
                    param.copy_(0.01 * torch.randn(param.shape, generator=generator))
        lora.save_pretrained(tmp_path / f"a{k}")
        recorded(tmp_path / f"a{k}", base)
        adapters.append(tmp_path / f"a{k}")
    texts = tmp_path / "texts.txt"
    texts.write_text("The weather today is sunny and warm.\nA short note about merging models.\n" * 4)
    config = parse_config({"base": str(base), "methods": ["average", "com_chain"],
                           "experts": [{"name": f"t{k}", "model": str(a), "calibration": str(texts)}
                                       for k, a in enumerate(adapters)],
                           "options": {"calibration_samples": 8, "max_length": 16, "heldout_shift": False}})
    run_merge(config, out_dir=tmp_path / "out", save=["average", "com_chain"], device="cpu")
    for method in ("average", "com_chain"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / method)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out" / method)
        ids = tokenizer("The capital of France is", return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
        assert out.shape[1] == ids["input_ids"].shape[1] + 5
        assert tokenizer.decode(out[0, ids["input_ids"].shape[1]:]).strip()
