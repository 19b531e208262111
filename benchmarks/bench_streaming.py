"""Benchmark (not a test): does merging K causal-LM experts hold K models in memory? It should not.

    python benchmarks/bench_streaming.py [--hidden 512] [--layers 12] [--experts 2,4,8] [--dtype float32]
    python benchmarks/bench_streaming.py --tokens-scale 1,4 --merge-batch 0,8 --experts 3   # micro-batches

Builds a Llama-style decoder (grouped-query attention) and K perturbed experts on disk, then merges them with
RegMean and CoM through the engine (no scoring) and reports the peak memory of the merge next to the size of
one model. With block streaming the peak grows by about one block per expert, not one model per expert.
With --tokens-scale and --merge-batch it also multiplies the calibration samples and compares one pass
(merge batch 0) with micro-batches: one pass grows with the tokens, micro-batches should not (#15).
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
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
from commerge_ui.resources import DTYPES, PeakMemory
from commerge_ui.sources import SafetensorsWeights

FAMILY = CausalLM()


def build(root: Path, hidden: int, layers: int, experts: int) -> tuple[Path, list[Path], int]:
    config = LlamaConfig(vocab_size=4000, hidden_size=hidden, intermediate_size=int(2.75 * hidden),
                         num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    base.save_pretrained(root / "base")
    size = sum(p.numel() * p.element_size() for p in base.parameters())
    folders = []
    for i in range(experts):
        torch.manual_seed(100 + i)
        with torch.no_grad():
            expert = LlamaForCausalLM(config)
            expert.load_state_dict(base.state_dict())
            for p in expert.parameters():
                p.add_(0.3 * p.std() * torch.randn_like(p))
        expert.save_pretrained(root / f"e{i}")
        folders.append(root / f"e{i}")
        del expert
    return root / "base", folders, size


def calibration(experts: int, samples: int, tokens: int) -> tuple[EncodedSamples, list[slice]]:
    g = torch.Generator().manual_seed(0)
    n = experts * samples
    ids = torch.randint(5, 4000, (n, tokens), generator=g)
    lengths = torch.randint(tokens // 2, tokens + 1, (n,), generator=g)
    mask = (torch.arange(tokens)[None, :] < lengths[:, None]).long()
    return EncodedSamples({"input_ids": ids, "attention_mask": mask}, mask.bool()), \
        [slice(i * samples, (i + 1) * samples) for i in range(experts)]


def measure(name: str, base_folder: Path, folders: list[Path], args, samples: int,
            merge_batch: int) -> tuple[float, int, int]:
    """One merge: (seconds, memory with the merged model loaded, peak memory during the merge)."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    encoded, rows = calibration(len(folders), samples, args.tokens)
    memory = PeakMemory(device)
    backbone = FAMILY.load_backbone(base_folder, dtype, device)
    names = [n for n, _ in backbone.named_parameters()]
    base = find_source(SafetensorsWeights(base_folder), names, "model.", "base")
    tasks = [EngineTask(f"t{i}", find_source(SafetensorsWeights(f), names, "model.", f"e{i}"), r)
             for i, (f, r) in enumerate(zip(folders, rows))]
    memory.sample()
    before = memory.result()
    began = time.perf_counter()
    merge(METHODS[name], FAMILY, backbone, base, tasks, encoded.to(device), MergeOptions(merge_batch=merge_batch),
          memory=memory)
    return time.perf_counter() - began, before, memory.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--experts", default="2,4,8")
    parser.add_argument("--samples", type=int, default=32, help="calibration samples per expert")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--tokens-scale", default="1", help="calibration samples × each of these")
    parser.add_argument("--merge-batch", default="0", help="samples per forward while merging; 0: one pass")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    print(f"device={device} dtype={args.dtype} hidden={args.hidden} layers={args.layers} "
          f"samples/expert={args.samples} tokens={args.tokens} torch={torch.__version__}")
    print(f"\n{'experts':>7} {'samples':>7} {'batch':>5} {'model MiB':>9} {'K x model':>9} {'method':>8} "
          f"{'seconds':>8} {'peak MiB':>9} {'peak - before':>13}")
    scales = [int(k) for k in args.tokens_scale.split(",")]
    batches = [int(b) for b in args.merge_batch.split(",")]
    for experts in map(int, args.experts.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            base_folder, folders, size = build(Path(tmp), args.hidden, args.layers, experts)
            size = size * torch.finfo(dtype).bits // 32
            for scale in scales:
                for batch in batches:
                    for name in ("regmean", "com"):
                        # A fresh process per merge: the allocator keeps what building the models used, which
                        # would blur the baseline.
                        with multiprocessing.get_context("spawn").Pool(1) as pool:
                            seconds, before, peak = pool.apply(
                                measure, (name, base_folder, folders, args, args.samples * scale, batch))
                        print(f"{experts:>7} {args.samples * scale:>7} {batch:>5} {size / 2**20:>9.0f} "
                              f"{experts * size / 2**20:>9.0f} {name:>8} {seconds:>8.1f} {peak / 2**20:>9.0f} "
                              f"{(peak - before) / 2**20:>13.0f}", flush=True)
    print("\npeak: allocated GPU memory on CUDA, anonymous resident memory on CPU (sampled per layer group), "
          "each merge in a fresh process; 'before': the merged model loaded, ready to merge.")


if __name__ == "__main__":
    sys.exit(main())
