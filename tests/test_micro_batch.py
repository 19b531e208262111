"""Micro-batched statistics (docs/method.md §6b): the same merge as one pass, in bounded memory."""

import pytest
import torch
from tiny_families import make_clip_setup, make_lm_setup, wide_llama

from commerge_ui.api import run_merge
from commerge_ui.compat import find_source
from commerge_ui.config import MergeOptions, parse_config
from commerge_ui.engine import plan_batch
from commerge_ui.families.base import EncodedSamples
from commerge_ui.layers import LayerGroup
from commerge_ui.methods import METHODS
from commerge_ui.sources import SafetensorsWeights

REGRESSION = [name for name, m in METHODS.items() if m.regression]


def _setup(kind, tiny, root):
    if kind == "bert":
        return tiny
    if kind == "clip":
        return make_clip_setup(root, layers=2, noise=0.5)
    return make_lm_setup(root, kind, layers=3, noise=0.5)


def _merge(setup, out, batch, methods):
    config = setup.config(methods=methods)
    config["options"] = {**config["options"], "merge_batch": batch}
    return run_merge(parse_config(config), out_dir=out, save=methods)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "clip"])
def test_micro_batched_merge_equals_one_pass(kind, tiny, tmp_path):
    setup = _setup(kind, tiny, tmp_path / "models")
    one = _merge(setup, tmp_path / "one", 0, REGRESSION + ["average"])
    # 5 samples per forward: uneven micro-batches (24 calibration samples per task), padding inside each
    parts = _merge(setup, tmp_path / "parts", 5, REGRESSION + ["average"])
    for method in REGRESSION + ["average"]:
        assert one.methods[method].merge_batch is None and parts.methods[method].merge_batch == 5
        for task, curve in one.methods[method].shift.items():
            assert parts.methods[method].shift[task] == pytest.approx(curve, rel=1e-4, abs=1e-6), (method, task)
            assert parts.methods[method].block_shift[task] == pytest.approx(
                one.methods[method].block_shift[task], rel=1e-4, abs=1e-6), (method, task)
        assert parts.methods[method].scores == pytest.approx(one.methods[method].scores, rel=1e-4)
        a, b = SafetensorsWeights(tmp_path / "one" / method), SafetensorsWeights(tmp_path / "parts" / method)
        changed = 0
        for name in a.names():
            x, y = a.get(name).float(), b.get(name).float()
            assert torch.allclose(x, y, atol=2e-5, rtol=1e-4), (method, name, float((x - y).abs().max()))
            changed += int(not torch.equal(x, y))
        if method != "average":
            assert changed > 0  # floating-point sums in another order: equal within tolerance, not bitwise


def test_micro_batched_identical_experts_give_the_expert_back(tmp_path):
    setup = make_lm_setup(tmp_path / "models", "llama", identical=True)
    _merge(setup, tmp_path / "out", 7, REGRESSION)
    expert = SafetensorsWeights(setup.experts["task0"])
    for method in REGRESSION:
        merged = SafetensorsWeights(tmp_path / "out" / method)
        source = find_source(expert, merged.names(), "", "expert")
        compared = [n for n in merged.names() if source.has(n)]
        assert len(compared) >= len(merged.names()) - 1
        for name in compared:
            assert torch.allclose(merged.get(name).float(), source.get(name).float(), atol=2e-4), (method, name)


class _Block(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.up = torch.nn.Linear(width, 4 * width)
        self.down = torch.nn.Linear(4 * width, width)


def test_plan_batch_fits_the_budget():
    block = _Block(256)  # one pass holds 256 + 1024 floats per token and group input
    groups = [LayerGroup(("up",)), LayerGroup(("down",))]
    mask = torch.ones(400, 128, dtype=torch.bool)  # 51,200 tokens × 1,280 floats × 4 bytes = 250 MiB
    calibration = EncodedSamples({}, mask)
    com, plusplus = METHODS["com"], METHODS["regmean_plusplus"]
    assert plan_batch(MergeOptions(merge_memory_gb=1.0), groups, block, calibration, com) is None
    half = 125 / 1024  # GiB: half of what one pass needs
    assert plan_batch(MergeOptions(merge_memory_gb=half), groups, block, calibration, com) == 200
    assert plan_batch(MergeOptions(merge_memory_gb=half), groups, block, calibration, plusplus) == 100  # 2 reads
    assert plan_batch(MergeOptions(merge_memory_gb=1e-6), groups, block, calibration, com) == 1
    assert plan_batch(MergeOptions(merge_batch=32, merge_memory_gb=1.0), groups, block, calibration, com) == 32


def test_sink_tokens_leave_each_samples_first_real_tokens_out():
    from commerge_ui.engine import statistics_mask

    mask = torch.tensor([[True, True, True, False], [False, True, True, True], [True, False, False, False]])
    assert torch.equal(statistics_mask(mask, 0), mask)
    assert statistics_mask(mask, 1).tolist() == [[False, True, True, False], [False, False, True, True],
                                                 [False, False, False, False]]
    assert statistics_mask(mask, 2).tolist() == [[False, False, True, False], [False, False, False, True],
                                                 [False, False, False, False]]


def test_micro_batches_report_progress_and_cancel_leaves_nothing_written(tiny, tmp_path):
    from commerge_ui.errors import Cancelled

    config = tiny.config(methods=["com"])
    config["options"] = {**config["options"], "merge_batch": 5}
    seen = []
    run_merge(parse_config(config), progress=seen.append)
    inside = [e for e in seen if e.phase == "merge" and e.detail]
    # 24 samples per task in micro-batches of 5: 5 per task and layer group
    first_group = [e for e in inside if e.step == 0]
    assert [e.detail.split(" · ")[1] for e in first_group][:5] == [f"task0 micro-batch {i}/5" for i in range(1, 6)]
    assert all(not e.ends_phase for e in inside)

    out = tmp_path / "out"
    seen.clear()
    with pytest.raises(Cancelled, match="cancelled"):  # pressed during the first micro-batches
        run_merge(parse_config(config), out_dir=out, save=["com"], progress=seen.append,
                  cancel=lambda: any(e.detail for e in seen))
    assert seen[-1].detail.endswith("micro-batch 1/5") and seen[-1].step == 0
    assert not out.exists() or not any(out.iterdir())


def _merge_peak(folders: list, samples: int, tokens: int, batch: int) -> int:
    """RegMean through the engine in this (fresh) process: peak anonymous memory above the loaded model."""
    from commerge_ui.engine import EngineTask, merge
    from commerge_ui.families.causal_lm import CausalLM
    from commerge_ui.resources import PeakMemory

    torch.set_num_threads(1)
    family, cpu = CausalLM(), torch.device("cpu")
    backbone = family.load_backbone(folders[0], torch.float32, cpu)
    names = [n for n, _ in backbone.named_parameters()]
    sources = [find_source(SafetensorsWeights(f), names, "model.", f.name) for f in folders]
    n = samples * (len(folders) - 1)
    ids = torch.randint(5, 1000, (n, tokens), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(n, tokens, dtype=torch.long)
    tasks = [EngineTask(f"t{i}", s, slice(i * samples, (i + 1) * samples)) for i, s in enumerate(sources[1:])]
    memory = PeakMemory(cpu)
    memory.sample()
    before = memory.result()
    merge(METHODS["regmean"], family, backbone, sources[0], tasks,
          EncodedSamples({"input_ids": ids, "attention_mask": mask}, mask.bool()), MergeOptions(merge_batch=batch),
          memory=memory)
    return memory.result() - before


@pytest.mark.slow
def test_micro_batches_bound_memory_while_one_pass_grows_with_the_tokens(tmp_path, monkeypatch):
    import multiprocessing

    # glibc moves its mmap threshold up as large blocks are freed, so freed tensors may stay resident or not
    # from run to run (CI once saw the 8-sample baseline at 108 MiB, here 119 and 171). A fixed threshold
    # returns every large block on free, so resident memory follows what is alive. The workers read it at start.
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(2 ** 20))
    folders = wide_llama(tmp_path, experts=2)
    peaks = {}
    for samples in (8, 32):  # 4× the calibration tokens
        for batch in (0, 4):  # one pass; micro-batches of 4 samples
            # a fresh process per merge: the allocator keeps what earlier work used, which would blur the baseline
            with multiprocessing.get_context("spawn").Pool(1) as pool:
                peaks[samples, batch] = pool.apply(_merge_peak, (folders, samples, 256, batch))
    mib = {k: round(v / 2 ** 20) for k, v in peaks.items()}
    # What must grow with the tokens: the streams (block inputs of both experts and of the merged model,
    # float32). Everything else a micro-batched merge holds (one micro-batch's activations, the statistics)
    # does not; one pass also holds every layer group's inputs (q/k/v, o, gate/up: 384 wide; down: 1024) for
    # every token.
    tokens = (32 - 8) * 2 * 256
    streams, inputs = tokens * 384 * 4 * 3, tokens * (3 * 384 + 1024) * 4
    micro, one = peaks[32, 4] - peaks[8, 4], peaks[32, 0] - peaks[8, 0]
    assert micro < 1.3 * streams, (mib, streams / 2 ** 20)
    assert one > 0.8 * (streams + inputs) and one > 2.5 * micro, (mib, streams / 2 ** 20, inputs / 2 ** 20)
