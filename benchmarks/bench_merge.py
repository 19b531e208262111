"""Benchmark (not a test): CoM vs RegMean wall time and memory, naive vs cached CoM, scaling.

    python benchmarks/bench_merge.py [--hidden 256] [--samples 64] [--tokens 64] [--device cpu]

Every figure in one table comes from the same models and samples in one run; ratios are what to quote.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

from commerge_ui.config import MergeOptions
from commerge_ui.engine import (EngineTask, ModelSource, Stream, _BlockMerger, load_block, _rows_of,
                                initial_streams, merge, run_block)
from commerge_ui.families import EncodedSamples
from commerge_ui.families.text_classification import TextClassification
from commerge_ui.layers import find_layer_groups, pre_hooks
from commerge_ui.methods import METHODS
from commerge_ui.resources import PeakMemory
from commerge_ui.sources import SafetensorsWeights

FAMILY = TextClassification()


def build(root: Path, layers: int, experts: int, hidden: int) -> tuple[Path, list[Path]]:
    config = BertConfig(vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=4 * hidden, max_position_embeddings=512, num_labels=2)
    torch.manual_seed(0)
    base = BertModel(config)
    base.save_pretrained(root / "base")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(995)]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(root / "base")
    folders = []
    for i in range(experts):
        torch.manual_seed(100 + i)
        model = BertForSequenceClassification(config)
        model.bert.load_state_dict(base.state_dict())
        with torch.no_grad():
            for p in model.bert.parameters():
                p.add_(0.3 * p.std() * torch.randn_like(p))
        model.save_pretrained(root / f"e{i}")
        folders.append(root / f"e{i}")
    return root / "base", folders


def calibration(experts: int, samples: int, tokens: int, device: torch.device) -> tuple[EncodedSamples, list[slice]]:
    g = torch.Generator().manual_seed(0)
    n = experts * samples
    ids = torch.randint(5, 1000, (n, tokens), generator=g)
    lengths = torch.randint(tokens // 2, tokens + 1, (n,), generator=g)
    mask = (torch.arange(tokens)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return EncodedSamples(inputs, mask.bool()).to(device), [slice(i * samples, (i + 1) * samples) for i in range(experts)]


def naive_com(backbone, base: ModelSource, tasks: list[EngineTask], encoded: EncodedSamples,
              options: MergeOptions) -> None:
    """CoM without the cached merged stream: the merged prefix is re-run from block 0 for every layer group."""
    method = METHODS["com"]
    block_path, blocks = FAMILY.blocks(backbone)
    dtype = next(backbone.parameters()).dtype
    masks = [encoded.token_mask[t.rows] for t in tasks]

    def average(name: str, experts: Iterable[torch.Tensor], param: torch.Tensor) -> None:
        param.copy_(torch.stack(list(experts)).mean(0))

    with torch.no_grad():
        expert_streams, start = initial_streams(FAMILY, backbone, tasks, encoded, average, encoded.token_mask.device)
        for index, block in enumerate(blocks):
            path = f"{block_path}.{index}"
            probe = Stream(start.hidden[:1], *_rows_of(start, slice(0, 1)))
            groups = find_layer_groups(block, lambda: run_block(block, probe))
            merger = _BlockMerger(method, options, tasks, masks, _Trace(tasks), lambda label: None,
                                  lambda detail: None, encoded.token_mask.device)
            expert_blocks, xs = [], []
            for task, stream, mask in zip(tasks, expert_streams, masks):
                expert_block = load_block(block, task.source, path, dtype)
                out, x = merger.expert_pass(expert_block, stream, mask, groups)
                stream.hidden = out
                expert_blocks.append(expert_block)
                xs.append(x)
            for name, param in block.named_parameters():
                param.copy_(torch.stack([b.get_parameter(name) for b in expert_blocks]).mean(0))
            for group in groups:
                hidden = start.hidden
                for earlier in blocks[:index]:  # the re-run that the cached engine avoids
                    hidden = run_block(earlier, Stream(hidden, start.args, start.kwargs))
                seen = {}

                def grab(module, args):
                    seen["x"] = args[0]
                    raise StopIteration

                with pre_hooks(block, {group.names[0]: grab}):
                    try:
                        run_block(block, Stream(hidden, start.args, start.kwargs))
                    except StopIteration:
                        pass
                x_hats = [seen["x"][t.rows][m].float() for t, m in zip(tasks, masks)]
                merger.solve(group, path, group.modules(block), expert_blocks, x_hats, [x[group] for x in xs],
                             [None] * len(tasks))


class _Trace:
    def __init__(self, tasks):
        self.warnings, self.shift = [], {t.name: [] for t in tasks}


def timed(fn, device: torch.device) -> tuple[float, int]:
    gc.collect()
    memory = PeakMemory(device)
    began = time.perf_counter()
    fn(memory)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began, memory.result()


def run_case(layers: int, experts: int, args, with_naive: bool) -> dict[str, tuple[float, int]]:
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        base_folder, folders = build(Path(tmp), layers, experts, args.hidden)
        encoded, rows = calibration(experts, args.samples, args.tokens, device)
        base = ModelSource(SafetensorsWeights(base_folder), "")
        tasks = [EngineTask(f"t{i}", ModelSource(SafetensorsWeights(f), "bert."), r)
                 for i, (f, r) in enumerate(zip(folders, rows))]
        options = MergeOptions()
        results = {}
        names = ["regmean", "com", "regmean", "com"]  # each twice, interleaved; the second run is kept
        for name in names:
            backbone = FAMILY.load_backbone(base_folder, torch.float32, device)
            results[name] = timed(lambda m: merge(METHODS[name], FAMILY, backbone, base, tasks, encoded, options,
                                                  memory=m), device)
        if with_naive:
            backbone = FAMILY.load_backbone(base_folder, torch.float32, device)
            results["naive_com"] = timed(lambda m: naive_com(backbone, base, tasks, encoded, options), device)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--samples", type=int, default=64, help="calibration samples per expert")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--depths", default="2,4,8,16")
    parser.add_argument("--experts", default="2,4,8")
    parser.add_argument("--naive-up-to", type=int, default=16, help="deepest stack on which the naive CoM runs")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"device={args.device} hidden={args.hidden} samples/expert={args.samples} tokens={args.tokens} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"\n{'blocks':>6} {'experts':>7} {'regmean s':>10} {'com s':>8} {'com/reg':>8} {'naive s':>8} "
          f"{'naive/com':>9} {'reg MiB':>8} {'com MiB':>8}")
    cases = [(d, 3) for d in map(int, filter(None, args.depths.split(",")))]
    cases += [(4, e) for e in map(int, filter(None, args.experts.split(",")))]
    for layers, experts in cases:
        r = run_case(layers, experts, args, with_naive=experts == 3 and layers <= args.naive_up_to)
        reg, com = r["regmean"], r["com"]
        naive_s, naive_ratio = (f"{r['naive_com'][0]:.2f}", f"{r['naive_com'][0] / com[0]:.2f}") if "naive_com" in r else ("-", "-")
        print(f"{layers:>6} {experts:>7} {reg[0]:>10.2f} {com[0]:>8.2f} {com[0] / reg[0]:>8.2f} {naive_s:>8} "
              f"{naive_ratio:>9} {reg[1] / 2**20:>8.0f} {com[1] / 2**20:>8.0f}", flush=True)
    print("\nMiB: peak allocated GPU memory on CUDA; peak process RSS sampled per layer group on CPU.")


if __name__ == "__main__":
    sys.exit(main())
