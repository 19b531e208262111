"""The CUDA paths: a merge on the GPU matches the CPU's, bf16 runs there, and a real out-of-memory is a message.

Skipped where no CUDA GPU is present (CI); run on a GPU machine with `pytest tests/test_cuda.py`.
"""

import pytest
import torch
from conftest import make_setup
from tiny_families import make_clip_setup, make_lm_setup

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
