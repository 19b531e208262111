"""The sequential engine on tiny real BERT experts: exactness, padding, shift, cancellation."""

from pathlib import Path

import pytest
import torch

from commerge_ui.config import MergeOptions
from commerge_ui.engine import EngineTask, merge
from commerge_ui.sources import ModelSource
from commerge_ui.errors import Cancelled
from commerge_ui.families import EncodedSamples
from commerge_ui.families.text_classification import TextClassification
from commerge_ui.methods import METHODS
from commerge_ui.samples import read_samples
from commerge_ui.sources import SafetensorsWeights

from conftest import make_setup

FAMILY = TextClassification()


def prepare(setup, names=None, options=None):
    names = names or list(setup.experts)
    options = options or MergeOptions(calibration_samples=24, max_length=16)
    processor = FAMILY.load_processor(setup.base)
    backbone = FAMILY.load_backbone(setup.base, torch.float32, torch.device("cpu"))
    base = ModelSource(SafetensorsWeights(setup.base))
    samples, tasks = [], []
    for name in names:
        rows = read_samples(setup.calibration[name], options.calibration_samples)
        tasks.append(EngineTask(name, ModelSource(SafetensorsWeights(setup.experts[name]), prefix="bert."),
                                slice(len(samples), len(samples) + len(rows))))
        samples += rows
    return backbone, base, tasks, FAMILY.encode(processor, samples, options.max_length), options


def run(setup, method, names=None, options=None, calibration=None, **kwargs):
    backbone, base, tasks, encoded, options = prepare(setup, names, options)
    trace = merge(METHODS[method], FAMILY, backbone, base, tasks, calibration or encoded, options, **kwargs)
    return backbone, trace


def expert_encoder(folder: Path) -> dict[str, torch.Tensor]:
    weights = SafetensorsWeights(folder)
    return {n[len("bert."):]: weights.get(n) for n in weights.names()
            if n.startswith("bert.") and not n.startswith("bert.pooler")}


def max_difference(backbone, reference: dict[str, torch.Tensor]) -> float:
    return max(float((p.detach() - reference[n]).abs().max()) for n, p in backbone.named_parameters()
               if not n.startswith("pooler"))


@pytest.fixture(scope="module")
def identical(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("identical"), identical=True)


@pytest.mark.parametrize("method", ["com", "regmean", "average"])
@pytest.mark.parametrize("regularization", ["shrink", "ridge"])
def test_identical_experts_give_the_expert_back(identical, method, regularization):
    options = MergeOptions(calibration_samples=24, max_length=16, com_regularization=regularization)
    backbone, trace = run(identical, method, options=options)
    assert max_difference(backbone, expert_encoder(identical.experts["task0"])) < 1e-4
    assert max(max(s) for s in trace.shift.values()) < 1e-5


@pytest.mark.parametrize("method", ["com", "regmean"])
def test_one_expert_gives_the_expert_back(tiny, method):
    backbone, trace = run(tiny, method, names=["task1"])
    assert max_difference(backbone, expert_encoder(tiny.experts["task1"])) < 1e-4
    assert trace.shift["task1"][-1] < 1e-5


def test_layers_are_grouped_by_shared_input_in_network_order(tiny):
    _, trace = run(tiny, "regmean")
    assert trace.layers[:4] == [
        "encoder.layer.0.attention.self.(query,key,value)",
        "encoder.layer.0.attention.output.dense",
        "encoder.layer.0.intermediate.dense",
        "encoder.layer.0.output.dense",
    ]
    assert len(trace.layers) == 8
    assert all(len(s) == len(trace.layers) for s in trace.shift.values())
    assert all(len(s) == 2 for s in trace.block_shift.values())


def test_com_equals_regmean_on_the_first_layer_group(tmp_path):
    # Experts that share the base's embeddings: the first group's inputs are unshifted, so CoM = RegMean there.
    setup = make_setup(tmp_path, layers=1)
    for folder in setup.experts.values():
        weights = SafetensorsWeights(folder)
        tensors = {n: weights.get(n) for n in weights.names()}
        base = SafetensorsWeights(setup.base)
        tensors.update({f"bert.{n}": base.get(n) for n in base.names() if n.startswith("embeddings.")})
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    com, com_trace = run(setup, "com")
    regmean, reg_trace = run(setup, "regmean")
    assert max(s[0] for s in com_trace.shift.values()) < 1e-6  # truly unshifted inputs
    q_com = com.encoder.layer[0].attention.self.query.weight
    q_reg = regmean.encoder.layer[0].attention.self.query.weight
    torch.testing.assert_close(q_com, q_reg, rtol=1e-4, atol=1e-5)
    # ... and it departs from RegMean downstream, where the merged inputs have shifted.
    out_com = com.encoder.layer[0].output.dense.weight
    out_reg = regmean.encoder.layer[0].output.dense.weight
    assert float((out_com - out_reg).abs().max()) > 1e-4


@pytest.mark.parametrize("method", ["com", "regmean"])
def test_padding_does_not_change_the_merge(tiny, method):
    backbone, base, tasks, encoded, options = prepare(tiny)
    extra = 7
    padded = {k: torch.cat([v, torch.zeros(v.shape[0], extra, dtype=v.dtype)], dim=1) for k, v in encoded.inputs.items()}
    wide = EncodedSamples(padded, padded["attention_mask"].bool())
    merge(METHODS[method], FAMILY, backbone, base, tasks, encoded, options)
    reference = {n: p.clone() for n, p in backbone.named_parameters()}
    other = FAMILY.load_backbone(tiny.base, torch.float32, torch.device("cpu"))
    merge(METHODS[method], FAMILY, other, base, tasks, wide, options)
    for name, param in other.named_parameters():
        torch.testing.assert_close(param, reference[name], rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("regularization", ["shrink", "ridge"])
def test_com_shift_at_the_last_layer_is_below_regmean(tiny_deep, regularization):
    options = MergeOptions(calibration_samples=24, max_length=16, com_regularization=regularization)
    _, com = run(tiny_deep, "com", options=options)
    _, regmean = run(tiny_deep, "regmean", options=options)

    def mean_at(trace, layer):
        return sum(s[layer] for s in trace.shift.values()) / len(trace.shift)

    assert mean_at(com, -1) < mean_at(regmean, -1) - 1e-3
    # Same inputs at the very first group (same averaged embeddings): the curves start together.
    assert mean_at(com, 0) == pytest.approx(mean_at(regmean, 0), abs=1e-6)


def test_cancel_stops_between_layer_groups(tiny):
    seen = []
    with pytest.raises(Cancelled, match="cancelled after"):
        run(tiny, "com", progress=lambda e: seen.append(e), cancel=lambda: len(seen) >= 2)
    assert len(seen) == 2 and seen[-1].total == 8


def test_progress_counts_every_group(tiny):
    events = []
    run(tiny, "regmean", progress=events.append)
    assert [e.step for e in events] == list(range(1, 9))
    assert events[-1].label == "encoder.layer.1.output.dense"


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_buckets_cut_the_padding_and_give_what_one_forward_over_every_row_gives(kind, tmp_path):
    """A bucket runs a few samples of similar length cut to their longest, with the masks and (rotary) positions
    captured for that shape: at every real token, its output is the one forward over all padded rows gives."""
    from commerge_ui.engine import by_length, capture_block_inputs, plan_buckets, run_block
    from commerge_ui.families.causal_lm import CausalLM
    from conftest import write_samples
    from tiny_families import causal_lm, save_word_tokenizer, write_texts

    cpu = torch.device("cpu")
    if kind == "bert":
        family, folder = FAMILY, make_setup(tmp_path, n_experts=1).base
        texts = write_samples(tmp_path / "c.jsonl", 12, seed=5, labelled=False, min_words=1, max_words=14)
    else:
        family, folder = CausalLM(), tmp_path / kind
        torch.manual_seed(0)
        causal_lm(kind).save_pretrained(folder)
        save_word_tokenizer(folder)
        texts = write_texts(tmp_path / "c.jsonl", 12, seed=5)
    backbone = family.load_backbone(folder, torch.float32, cpu)
    first = family.blocks(backbone)[1][0]
    encoded = family.encode(family.load_processor(folder), read_samples(texts), 32)
    tasks = [EngineTask("a", None, slice(0, 5)), EngineTask("b", None, slice(5, 12))]  # type: ignore[arg-type]
    ordered = by_length(encoded, tasks)
    lengths = ordered.token_mask.sum(dim=1)
    for task in tasks:  # each task's rows, in its own range, shortest first
        assert lengths[task.rows].tolist() == sorted(encoded.token_mask[task.rows].sum(dim=1).tolist())
    with torch.no_grad():
        stream = capture_block_inputs(family, backbone, first, ordered.inputs)
        whole = run_block(first, stream)
        widths = []
        for task in tasks:
            for bucket in plan_buckets(family, backbone, first, ordered, task, 2, cpu):
                bucket.write(stream, run_block(first, bucket.of(stream, task.rows.start)), task.rows.start)
                widths.append(bucket.width)
    real = ordered.token_mask
    assert min(widths) < max(widths) == real.shape[1]  # the short buckets were cut
    assert torch.allclose(stream.hidden[real], whole[real], atol=1e-5), (stream.hidden[real] - whole[real]).abs().max()
