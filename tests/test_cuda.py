"""The CUDA paths: a merge on the GPU matches the CPU's, bf16 runs there, and a real out-of-memory is a message.

Skipped where no CUDA GPU is present (CI); run on a GPU machine with `pytest tests/test_cuda.py`.
"""

import pytest
import torch
from conftest import make_setup
from tiny_families import make_clip_setup, make_lm_setup, wide_llama

from commerge_ui.api import OUT_OF_GPU_MEMORY, run_merge
from commerge_ui.cli import main
from commerge_ui.config import parse_config
from commerge_ui.sources import SafetensorsWeights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make(kind, root):
    if kind == "bert":
        return make_setup(root, layers=3)
    if kind == "clip":
        return make_clip_setup(root, layers=3, noise=0.5)
    return make_lm_setup(root, kind, layers=3, noise=0.5)


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama", "clip"])
def test_a_merge_on_the_gpu_matches_the_cpu(tmp_path, kind):
    setup = make(kind, tmp_path)
    config = parse_config(setup.config(methods=["com", "regmean", "ties"]))
    on = {d: run_merge(config, out_dir=tmp_path / d, save=["com", "regmean", "ties"], device=d)
          for d in ("cpu", "cuda")}
    assert on["cuda"].device.startswith("cuda") and on["cpu"].device == "cpu"
    for method in ("com", "regmean", "ties"):
        gpu, cpu = on["cuda"].methods[method], on["cpu"].methods[method]
        assert gpu.peak_memory_bytes > 0
        for task in cpu.shift:
            assert gpu.shift[task] == pytest.approx(cpu.shift[task], rel=1e-3, abs=1e-4), (method, task)
        for task, score in cpu.scores.items():
            assert gpu.scores[task] == pytest.approx(score, rel=1e-3), (method, task)
        merged_gpu = SafetensorsWeights(tmp_path / "cuda" / method)
        merged_cpu = SafetensorsWeights(tmp_path / "cpu" / method)
        for name in merged_cpu.names():
            assert torch.allclose(merged_gpu.get(name), merged_cpu.get(name), atol=1e-4), (method, name)


def test_bfloat16_on_the_gpu_keeps_bf16_weights_and_close_scores(tmp_path):
    setup = make_lm_setup(tmp_path, "llama", layers=3, noise=0.5)
    config = parse_config(setup.config(methods=["com", "regmean"]))
    full = run_merge(config, device="cuda", dtype="float32")
    half = run_merge(config, out_dir=tmp_path / "out", save=["com"], device="cuda", dtype="bfloat16")
    weights = SafetensorsWeights(tmp_path / "out" / "com")
    assert {weights.get(n).dtype for n in weights.names()} == {torch.bfloat16}
    for method in ("com", "regmean"):
        for task, score in full.methods[method].scores.items():  # perplexity, lower is better
            assert half.methods[method].scores[task] == pytest.approx(score, rel=0.05), (method, task)


@pytest.mark.parametrize("budget_kib", [64, 1024, 4096])
def test_a_real_out_of_memory_is_a_clear_message_and_nothing_is_written(tmp_path, capsys, budget_kib):
    """A GPU memory cap makes loading (64 KiB), scoring or merging run out; every case is one clear line."""
    setup = make_lm_setup(tmp_path, "llama", layers=3, noise=0.5)
    path = setup.write_config(methods=["com"])
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(budget_kib * 2**10 / total)
    try:
        code = main(["merge", str(path), "--out", str(tmp_path / "out"), "--device", "cuda", "--save", "com",
                     "--quiet"])
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == f"error: {OUT_OF_GPU_MEMORY}", err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial*"))
    config = parse_config(setup.config(methods=["com"]))
    assert run_merge(config, device="cuda").methods["com"].average_score is not None  # the process is still usable


def test_an_offloaded_merge_matches_the_on_device_one(tmp_path):
    setup = make_lm_setup(tmp_path, "llama", layers=3, noise=0.5)
    config = parse_config(setup.config(methods=["com", "regmean", "ties"]))
    runs = {mode: run_merge(config, out_dir=tmp_path / mode, save=["com", "regmean", "ties"], device="cuda",
                            offload=mode) for mode in ("off", "on")}
    assert runs["on"].offload and not runs["off"].offload
    for method in ("com", "regmean", "ties"):
        on, off = runs["on"].methods[method], runs["off"].methods[method]
        assert on.scores == pytest.approx(off.scores, rel=1e-4), method
        for task, curve in off.shift.items():
            assert on.shift[task] == pytest.approx(curve, rel=1e-4, abs=1e-6), (method, task)
        a, b = SafetensorsWeights(tmp_path / "off" / method), SafetensorsWeights(tmp_path / "on" / method)
        for name in a.names():
            assert torch.allclose(a.get(name), b.get(name), atol=1e-5), (method, name)


def _device_peak(folders: list, samples: int, offloaded: bool) -> tuple[int, int]:
    """CoM in micro-batches of 4 through the engine: peak allocated GPU memory, and one block's bytes."""
    from commerge_ui.compat import find_source
    from commerge_ui.config import MergeOptions
    from commerge_ui.engine import EngineTask, merge
    from commerge_ui.families.base import EncodedSamples
    from commerge_ui.families.causal_lm import CausalLM
    from commerge_ui.methods import METHODS
    from commerge_ui.offload import Placement

    family, cuda = CausalLM(), torch.device("cuda")
    torch.cuda.empty_cache()
    backbone = family.load_backbone(folders[0], torch.float32, cuda, offloaded)
    _, blocks = family.blocks(backbone)
    block_bytes = sum(p.numel() * p.element_size() for p in blocks[0].parameters())
    names = [n for n, _ in backbone.named_parameters()]
    sources = [find_source(SafetensorsWeights(f), names, "model.", f.name) for f in folders]
    ids = torch.randint(5, 1000, (samples * 2, 256), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    calibration = EncodedSamples({"input_ids": ids, "attention_mask": mask}, mask.bool()).to(cuda)
    tasks = [EngineTask(f"t{i}", s, slice(i * samples, (i + 1) * samples)) for i, s in enumerate(sources[1:])]
    torch.cuda.reset_peak_memory_stats(cuda)
    merge(METHODS["com"], family, backbone, sources[0], tasks, calibration, MergeOptions(merge_batch=4),
          placement=Placement(cuda, offloaded))
    peak = torch.cuda.max_memory_allocated(cuda)
    if offloaded:
        assert {p.device.type for p in blocks.parameters()} == {"cpu"}
        assert {p.device.type for n, p in backbone.named_parameters() if ".layers." not in n} == {"cuda"}
    del backbone, blocks
    torch.cuda.empty_cache()
    return peak, block_bytes


def test_offloaded_device_memory_grows_with_neither_depth_nor_tokens(tmp_path):
    peaks, block = {}, 0
    for layers in (4, 16):
        folders = wide_llama(tmp_path / f"l{layers}", experts=2, layers=layers)
        for samples in ((8, 32) if layers == 16 else (8,)):
            for offloaded in (False, True):
                peaks[layers, samples, offloaded], block = _device_peak(folders, samples, offloaded)
    mib = {k: round(v / 2 ** 20, 1) for k, v in peaks.items()}
    # 12 more blocks: on the device, 12 blocks more; offloaded, less than one block (only the one at work is there)
    assert peaks[16, 8, False] - peaks[4, 8, False] > 11 * block, mib
    assert peaks[16, 8, True] - peaks[4, 8, True] < block, mib
    # 4× the calibration tokens: the streams (the two experts' rows, and the merged model's, which has them all)
    # grow by this much. Offloaded, they are on the host; what still passes through the device is the one-time
    # capture of the merged stream's block-0 inputs, half of it.
    streams = (32 - 8) * 2 * 256 * 384 * 4 * 2
    assert peaks[16, 32, False] - peaks[16, 8, False] > 0.9 * streams, mib
    assert peaks[16, 32, True] - peaks[16, 8, True] < 0.7 * streams, mib
