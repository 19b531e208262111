"""Benchmark (not a test): does merging K causal-LM experts hold K models in memory? It should not.

    python benchmarks/bench_streaming.py [--hidden 512] [--layers 12] [--experts 2,4,8] [--dtype float32]
    python benchmarks/bench_streaming.py --tokens-scale 1,4 --merge-batch 0,8 --experts 3   # micro-batches
    python benchmarks/bench_streaming.py --preset llama3-8b --offload on   # #15's 8B-dimension figures (GPU)

Builds a Llama-style decoder (grouped-query attention) and K perturbed experts on disk, then merges them with
RegMean and CoM through the engine (no scoring) and reports the peak memory of the merge next to the size of
one model. With block streaming the peak grows by about one block per expert, not one model per expert.
With --tokens-scale and --merge-batch it also multiplies the calibration samples and compares one pass
(merge batch 0) with micro-batches: one pass grows with the tokens, micro-batches should not (#15).

--preset llama3-8b takes Llama-3-8B's layer dimensions (hidden 4096, 32 heads over 8 KV heads, MLP 14336,
vocabulary 128256, untied head; bfloat16) with 4 blocks, 3 experts and 128 samples × 512 tokens per task;
--offload on keeps the blocks and the streams in host memory (offload.py). Each row gives the wall time, the
time per block and its 32-block projection, the peak device memory (allocated, on CUDA) and the peak host
memory (anonymous RSS, sampled every 50 ms), and the memory that loading every model and Gram matrix at
once (FusionBench's RegMean) would take for the full 32-block model.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from commerge_ui.compat import find_source
from commerge_ui.config import MergeOptions
from commerge_ui.engine import EngineTask, merge
from commerge_ui.families import EncodedSamples
from commerge_ui.families.causal_lm import CausalLM
from commerge_ui.methods import METHODS
from commerge_ui.offload import Placement
from commerge_ui.resources import DTYPES, PeakMemory, rss_bytes
from commerge_ui.sources import SafetensorsWeights

FAMILY = CausalLM()


PRESETS = {"llama3-8b": dict(hidden=4096, mlp=14336, heads=32, kv_heads=8, vocab=128256, layers=4, experts="3",
                              samples=128, tokens=512, dtype="bfloat16")}
FULL_DEPTH = 32  # Llama-3-8B's blocks: what the per-block time is projected to


def llama_config(args, layers: int) -> LlamaConfig:
    return LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.mlp or int(2.75 * args.hidden),
                       num_hidden_layers=layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                       max_position_embeddings=max(512, args.tokens), tie_word_embeddings=False)


def build(root: Path, args, experts: int) -> tuple[Path, list[Path], int]:
    """The base and `experts` perturbed copies on disk, in the benchmark's dtype (so 8B widths fit the disk)."""
    config = llama_config(args, args.layers)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).to(dtype)
    base.save_pretrained(root / "base")
    size = sum(p.numel() * p.element_size() for p in base.parameters())
    folders = []
    for i in range(experts):
        torch.manual_seed(100 + i)
        with torch.no_grad():
            expert = LlamaForCausalLM(config).to(dtype)
            expert.load_state_dict(base.state_dict())
            for p in expert.parameters():
                p.add_((0.3 * p.float().std() * torch.randn(p.shape)).to(dtype))
        expert.save_pretrained(root / f"e{i}")
        folders.append(root / f"e{i}")
        del expert
    return root / "base", folders, size


def all_at_once_bytes(args, experts: int, depth: int) -> int:
    """Loading every model and every expert's Gram matrices at once, as FusionBench's RegMean does (one float32
    Gram per nn.Linear input: q, k, v, o, gate, up of width hidden, down of width MLP), for `depth` blocks."""
    config = llama_config(args, depth)
    with torch.device("meta"):
        params = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    element = torch.finfo(DTYPES[args.dtype]).bits // 8
    grams = depth * (6 * config.hidden_size ** 2 + config.intermediate_size ** 2) * 4
    return (experts + 1) * params * element + experts * grams


class HostPeak:
    """Peak anonymous resident memory of this process, sampled every 50 ms in a thread."""

    def __init__(self) -> None:
        self.peak, self._stop = rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, rss_bytes())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, rss_bytes())


def calibration(experts: int, samples: int, tokens: int, vocab: int) -> tuple[EncodedSamples, list[slice]]:
    g = torch.Generator().manual_seed(0)
    n = experts * samples
    ids = torch.randint(5, vocab, (n, tokens), generator=g)
    lengths = torch.randint(tokens // 2, tokens + 1, (n,), generator=g)
    mask = (torch.arange(tokens)[None, :] < lengths[:, None]).long()
    return EncodedSamples({"input_ids": ids, "attention_mask": mask}, mask.bool()), \
        [slice(i * samples, (i + 1) * samples) for i in range(experts)]


def measure(name: str, base_folder: Path, folders: list[Path], args, samples: int,
            merge_batch: int) -> tuple[float, int, int, int, int | None]:
    """One merge: (seconds, memory with the merged model loaded, peak memory during the merge (the device's on
    CUDA), peak host memory, the samples per forward the engine used)."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    placement = Placement(device, args.offload == "on" and device.type == "cuda")
    encoded, rows = calibration(len(folders), samples, args.tokens, args.vocab)
    host = HostPeak()
    memory = PeakMemory(device)
    backbone = FAMILY.load_backbone(base_folder, dtype, device, placement.offload)
    names = [n for n, _ in backbone.named_parameters()]
    base = find_source(SafetensorsWeights(base_folder), names, "model.", "base")
    tasks = [EngineTask(f"t{i}", find_source(SafetensorsWeights(f), names, "model.", f"e{i}"), r)
             for i, (f, r) in enumerate(zip(folders, rows))]
    memory.sample()
    before = memory.result()
    began = time.perf_counter()
    trace = merge(METHODS[name], FAMILY, backbone, base, tasks, encoded.to(device),
                  MergeOptions(merge_batch=merge_batch, merge_memory_gb=args.merge_memory_gb), memory=memory,
                  placement=placement)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - began, before, memory.result(), host.stop(), trace.merge_batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=list(PRESETS), help="sets the dimensions and sizes below at once")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--mlp", type=int, default=0, help="MLP width; 0: 2.75 × hidden")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4000)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--experts", default="2,4,8")
    parser.add_argument("--samples", type=int, default=32, help="calibration samples per expert")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--tokens-scale", default="1", help="calibration samples × each of these")
    parser.add_argument("--merge-batch", default="0", help="samples per forward while merging; 0: one pass if "
                        "the captured inputs fit --merge-memory-gb, else the engine's micro-batches")
    parser.add_argument("--merge-memory-gb", type=float, default=2.0)
    parser.add_argument("--offload", choices=["off", "on"], default="off")
    parser.add_argument("--methods", default="regmean,com")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.preset:
        given = {a.lstrip("-").split("=")[0].replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
        for key, value in PRESETS[args.preset].items():
            if key not in given:  # what is given on the command line wins over the preset
                setattr(args, key, value)
    device = torch.device(args.device)
    print(f"device={device} dtype={args.dtype} hidden={args.hidden} mlp={args.mlp or int(2.75 * args.hidden)} "
          f"heads={args.heads}/{args.kv_heads} vocab={args.vocab} layers={args.layers} "
          f"samples/expert={args.samples} tokens={args.tokens} offload={args.offload} torch={torch.__version__}")
    print(f"\n{'experts':>7} {'samples':>7} {'batch':>5} {'model MiB':>9} {'method':>8} {'seconds':>8} "
          f"{'s/block':>7} {f'{FULL_DEPTH}-block s':>11} {'peak MiB':>9} {'peak - before':>13} {'host MiB':>9}")
    scales = [int(k) for k in args.tokens_scale.split(",")]
    batches = [int(b) for b in args.merge_batch.split(",")]
    methods = args.methods.split(",")
    for experts in map(int, args.experts.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            base_folder, folders, size = build(Path(tmp), args, experts)
            for scale in scales:
                for batch in batches:
                    seconds = {}
                    for name in methods:
                        # A fresh process per merge: the allocator keeps what building the models used, which
                        # would blur the baseline.
                        with multiprocessing.get_context("spawn").Pool(1) as pool:
                            seconds[name], before, peak, host, used = pool.apply(
                                measure, (name, base_folder, folders, args, args.samples * scale, batch))
                        per_block = seconds[name] / args.layers
                        print(f"{experts:>7} {args.samples * scale:>7} {used or 'all':>5} {size / 2**20:>9.0f} "
                              f"{name:>8} {seconds[name]:>8.1f} {per_block:>7.2f} {per_block * FULL_DEPTH:>11.0f} "
                              f"{peak / 2**20:>9.0f} {(peak - before) / 2**20:>13.0f} {host / 2**20:>9.0f}",
                              flush=True)
                    if "com" in seconds and "regmean" in seconds:
                        print(f"{'':>7} CoM / RegMean wall time: {seconds['com'] / seconds['regmean']:.2f}×")
            print(f"{'':>7} all at once (every model and Gram matrix, {FULL_DEPTH} blocks, FusionBench's way): "
                  f"{all_at_once_bytes(args, experts, FULL_DEPTH) / 2**30:.1f} GiB; this model at "
                  f"{args.layers} blocks: {all_at_once_bytes(args, experts, args.layers) / 2**30:.1f} GiB")
    print("\npeak: allocated GPU memory on CUDA, anonymous resident memory on CPU (sampled per layer group), "
          "each merge in a fresh process; 'before': the merged model loaded, ready to merge; host: the process's "
          f"peak anonymous resident memory. {FULL_DEPTH}-block s: seconds per block × {FULL_DEPTH} (embeddings and "
          "head are merged once, so this slightly overstates).")


if __name__ == "__main__":
    sys.exit(main())
