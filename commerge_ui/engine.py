"""The sequential engine (docs/method.md §6, §8): one merge method, block by block, with per-layer shift.

Two kinds of stream advance through the network one block at a time:
- an expert stream per task: the block's inputs as expert i sees them (expert i's weights all the way);
- one merged stream holding every task's rows: the inputs as the model merged so far sees them.
Per block, each expert's block is read from its safetensors files into a scratch copy and run once on its
stream (capturing every layer group's inputs X_i); then the merged block runs once on the merged stream,
and a pre-hook on each layer group solves and writes that group's weights *before* the group runs, so later
groups of the same block already see merged inputs (CoM's X̂). A method that reads nothing of the merged
stream (RegMean) is solved from the experts' inputs first, and its merged pass only advances the stream and
measures the shift. Cost: one expert forward per task and one merged forward per block, plus the Gram work;
the merged prefix is never re-run. Every pass runs by buckets: a few samples of similar length cut to their
longest (docs/method.md §6), so that padding is not run; where the groups are solved inside the merged
pass, the buckets' forwards run in lockstep (lockstep.py) and meet at each group.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from .config import MergeOptions
from .errors import Cancelled
from .families.base import EncodedSamples, Family
from .layers import (LayerGroup, find_layer_groups, group_weight, has_bias, linear_shape, pre_hooks,
                     set_group_weight)
from .methods import EXPERT_INPUTS, EXPERT_ON_MERGED, MERGED_INPUTS, Method
from .lockstep import lockstep
from .offload import Placement, on_device
from .progress import PHASE_DONE, PHASE_RUNNING, PHASES, ProgressEvent  # noqa: F401 (re-exported)
from .resources import PeakMemory
from .solve import GroupInputs, TaskTerms, add_terms, augment, mean_weight, merge_layer_group, solve_layer_group
from .sources import ModelSource

# What makes a method's groups be solved inside the merged block's one forward (CoM, RegMean++); the others
# are solved from the experts' inputs before it.
MERGED_STREAM_READS = frozenset({MERGED_INPUTS, EXPERT_ON_MERGED})


@dataclass
class EngineTask:
    name: str
    source: ModelSource
    rows: slice  # this task's rows in the calibration batch
    weight: float = 1.0


@dataclass
class MergeTrace:
    layers: list[str] = field(default_factory=list)
    shift: dict[str, list[float]] = field(default_factory=dict)  # task -> per layer group
    block_shift: dict[str, list[float]] = field(default_factory=dict)  # task -> per block output
    warnings: list[str] = field(default_factory=list)
    merge_batch: int | None = None  # samples per forward when the statistics were micro-batched; None: one pass


@dataclass
class Stream:
    """What enters a block: hidden states plus the other arguments the model passes (mask, positions)."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict

    def to(self, device: torch.device) -> "Stream":
        """The same stream on `device` (a no-op where it already is): host-kept streams come in by micro-batch."""
        return Stream(self.hidden.to(device), *_mapped(self.args, self.kwargs, lambda t: t.to(device)))


BUCKET_SAMPLES = 8  # samples per forward in one pass, at least
MAX_BUCKETS = 64  # in one pass, at most: CoM's merged pass runs a thread per bucket (lockstep.py)


@dataclass
class Bucket:
    """Samples of one task that run through a block together: neighbouring rows of its streams (each task's
    rows are ordered by length, `by_length`) cut to the first `width` positions, which hold all their real
    tokens, so that little padding is run. `args` and `kwargs` are the block's other arguments (masks,
    positions) captured for exactly these rows and this width."""

    rows: slice  # rows of the task's expert stream; the merged stream's are offset by the task's first row
    width: int
    args: tuple
    kwargs: dict

    def at(self, offset: int) -> slice:
        """Its rows in a stream where the task's rows start at `offset`."""
        return slice(self.rows.start + offset, self.rows.stop + offset)

    def of(self, stream: Stream, offset: int = 0) -> Stream:
        return Stream(stream.hidden[self.at(offset), :self.width], self.args, self.kwargs)

    def write(self, stream: Stream, out: torch.Tensor, offset: int = 0) -> None:
        """The block's output for these samples, in place (onto the host where the stream is kept there); the
        positions past `width` hold padding, which no real token reads."""
        stream.hidden[self.at(offset), :self.width] = out


class _StopForward(Exception):
    pass


def capture_block_inputs(family: Family, backbone: nn.Module, first_block: nn.Module,
                         inputs: dict[str, torch.Tensor]) -> Stream:
    """Run the backbone up to its first block and keep that block's inputs (GPTQ-style capture)."""
    seen: dict[str, object] = {}

    def stop(module: nn.Module, args: tuple, kwargs: dict):
        seen["args"], seen["kwargs"] = args, kwargs
        raise _StopForward

    handle = first_block.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        family.run_backbone(backbone, inputs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    args = seen["args"]
    return Stream(args[0], tuple(args[1:]), dict(seen["kwargs"]))  # type: ignore[index, arg-type]


def run_block(block: nn.Module, stream: Stream) -> torch.Tensor:
    out = block(stream.hidden, *stream.args, **stream.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def input_at(block: nn.Module, group: LayerGroup, stream: Stream, mask: torch.Tensor,
             dtype: torch.dtype) -> torch.Tensor:
    """The group's input on the stream's real tokens: the block runs up to the group and stops there."""
    seen: dict[str, torch.Tensor] = {}

    def stop(module: nn.Module, args: tuple) -> None:
        seen["x"] = args[0][mask].to(dtype)
        raise _StopForward

    with pre_hooks(block, {group.names[0]: stop}):
        try:
            run_block(block, stream)
        except _StopForward:
            pass
    return seen["x"]


def plan_buckets(family: Family, backbone: nn.Module, first_block: nn.Module, calibration: EncodedSamples,
                 task: EngineTask, size: int, store: torch.device) -> list[Bucket]:
    """A task's buckets of `size` samples, each with the block arguments captured for its rows and width (the
    embeddings run once more per bucket; masks and positions do not depend on the weights)."""
    mask = calibration.token_mask[task.rows]
    count, total = mask.shape
    buckets = []
    for start in range(0, count, size):
        rows = slice(start, min(start + size, count))
        real = mask[rows].any(dim=0).nonzero()
        width = int(real.max()) + 1 if len(real) else 1  # padding is on the right: past the last real token
        absolute = slice(task.rows.start + rows.start, task.rows.start + rows.stop)
        inputs = {k: v[absolute][:, :width] if v.dim() > 1 and v.shape[1] == total else v[absolute]
                  for k, v in calibration.inputs.items()}
        captured = capture_block_inputs(family, backbone, first_block, inputs)
        args, kwargs = _mapped(captured.args, captured.kwargs, lambda t: t.to(store))
        buckets.append(Bucket(rows, width, args, kwargs))
    return buckets


def by_length(calibration: EncodedSamples, tasks: list[EngineTask]) -> EncodedSamples:
    """Each task's samples reordered by their number of real tokens, so that a bucket of neighbours has little
    padding. The statistics are sums over tokens and the shift a ratio of norms: neither depends on the order."""
    lengths = calibration.token_mask.sum(dim=1)
    order = torch.arange(len(lengths), device=lengths.device)
    for task in tasks:
        order[task.rows] = task.rows.start + torch.argsort(lengths[task.rows], stable=True)
    rows = len(order)
    inputs = {k: v[order] if v.dim() > 0 and v.shape[0] == rows else v for k, v in calibration.inputs.items()}
    return EncodedSamples(inputs, calibration.token_mask[order])


def rows_stream(stream: Stream, rows: slice) -> Stream:
    return Stream(stream.hidden[rows], *_rows_of(stream, rows))


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    # shift = ‖X̂ − X‖_F / ‖X‖_F
    return float(torch.linalg.vector_norm(approx - exact) / torch.linalg.vector_norm(exact).clamp_min(1e-12))


def load_block(template: nn.Module, source: ModelSource, path: str, dtype: torch.dtype) -> nn.Module:
    """A scratch copy of a block holding one model's weights, read from its files for this block only."""
    block = copy.deepcopy(template)
    with torch.no_grad():
        for name, param in block.named_parameters():
            param.copy_(source.get(f"{path}.{name}").to(dtype))
    return block


class _BlockMerger:
    """Merges one block: expert passes, then the merged pass with a solve at each layer group."""

    def __init__(self, method: Method, options: MergeOptions, tasks: list[EngineTask], masks: list[torch.Tensor],
                 trace: MergeTrace, on_group: Callable[[str], None], on_batch: Callable[[str], None],
                 device: torch.device, buckets: list[list[Bucket]]) -> None:
        self.method, self.options, self.tasks, self.masks = method, options, tasks, masks
        self.buckets = buckets  # per task: its samples in forwards of a few (one pass) or of a micro-batch
        self.trace, self.on_group, self.on_batch = trace, on_group, on_batch
        self.device = device  # where the block runs; micro-batches of host-kept streams are brought here
        self.stat_dtype = torch.float64 if options.gram_dtype == "float64" else torch.float32

    def bucket_pass(self, block: nn.Module, stream: Stream, buckets: list[Bucket], mask: torch.Tensor,
                    groups: list[LayerGroup], offset: int = 0,
                    advance: bool = True) -> dict[LayerGroup, torch.Tensor]:
        """`block` run on one task's rows of `stream` bucket by bucket, its output written back in place unless
        `advance` is False; returns each group's inputs on the statistics tokens (`mask`), in the order one
        forward over all rows gives."""
        parts: dict[LayerGroup, list[torch.Tensor]] = {g: [] for g in groups}
        for bucket in buckets:
            out, xs = self.expert_pass(block, bucket.of(stream, offset).to(self.device),
                                       mask[bucket.rows, :bucket.width], groups)
            if advance:
                bucket.write(stream, out, offset)
            for group in groups:
                parts[group].append(xs[group])
        return {g: torch.cat(p) for g, p in parts.items()}

    def with_bias(self, modules: list[nn.Module]) -> bool:
        return self.options.bias == "regress" and has_bias(modules)

    def merge_block(self, block: nn.Module, path: str, groups: list[LayerGroup], labels: list[str],
                    expert_streams: list[Stream], merged_stream: Stream,
                    merge_tensor: Callable[[str, Iterable[torch.Tensor], torch.Tensor], None]) -> None:
        """Advance every stream through one block, merging it on the way: each expert's block (read from its
        files) runs on its stream, by buckets; the block is first merged by the method's rule (LayerNorms stay
        so), then its layer groups are solved in order and the merged stream advanced (merged_pass, or
        solved_then_run where the method reads nothing of the merged stream) and the block output's shift kept."""
        dtype = next(block.parameters()).dtype
        expert_blocks, xs, expert_outs = [], [], []
        for task, stream, mask, buckets in zip(self.tasks, expert_streams, self.masks, self.buckets):
            expert_block = load_block(block, task.source, path, dtype)
            xs.append(self.bucket_pass(expert_block, stream, buckets, mask, groups))
            expert_blocks.append(expert_block)
            expert_outs.append(stream.hidden[mask].to(self.stat_dtype))
        for name, param in block.named_parameters():
            merge_tensor(f"{path}.{name}", [b.get_parameter(name) for b in expert_blocks], param)
        if self.method.reads & MERGED_STREAM_READS:
            self.merged_pass(block, merged_stream, groups, labels, expert_blocks, xs)
        else:
            self.solved_then_run(block, merged_stream, groups, labels, expert_blocks, xs)
        for task, mask, expert_out in zip(self.tasks, self.masks, expert_outs):
            merged_out = merged_stream.hidden[task.rows][mask].to(self.stat_dtype)
            self.trace.block_shift[task.name].append(relative_error(merged_out, expert_out))

    def merge_block_batched(self, block: nn.Module, path: str, groups: list[LayerGroup], labels: list[str],
                            expert_streams: list[Stream], merged_stream: Stream,
                            merge_tensor: Callable[[str, Iterable[torch.Tensor], torch.Tensor], None]) -> None:
        """merge_block in micro-batches of `batch` samples (docs/method.md §6b): memory no longer grows with the
        calibration set. Per layer group, each micro-batch runs the expert's block up to that group, and for a
        method that reads X̂ (CoM) the merged block too (earlier groups already merged); the group is solved
        once all micro-batches are in. Then every stream advances through the finished block, micro-batch by
        micro-batch, and the shifts are measured on the way."""
        dtype = next(block.parameters()).dtype
        expert_blocks = [load_block(block, task.source, path, dtype) for task in self.tasks]
        for name, param in block.named_parameters():
            merge_tensor(f"{path}.{name}", [b.get_parameter(name) for b in expert_blocks], param)
        if self.method.regression:
            for group, label in zip(groups, labels):
                self.solve_batched(group, label, block, expert_blocks, expert_streams, merged_stream)
        self.advance_batched(block, groups, expert_blocks, expert_streams, merged_stream)
        if not self.method.regression:
            for label in labels:
                self.on_group(label)

    def advance_batched(self, block: nn.Module, groups: list[LayerGroup], expert_blocks: list[nn.Module],
                        expert_streams: list[Stream], merged_stream: Stream) -> None:
        """Every stream through the merged block, micro-batch by micro-batch, measuring each group's shift and
        the block output's. A group's X̂ here is the one its solve saw: only earlier groups shape it."""
        for task, mask, expert_block, stream, buckets in zip(self.tasks, self.masks, expert_blocks, expert_streams,
                                                             self.buckets):
            shifts, block_shift = {g: ShiftSum() for g in groups}, ShiftSum()
            offset = task.rows.start
            for bucket in buckets:
                real = mask[bucket.rows, :bucket.width]
                out, xs = self.expert_pass(expert_block, bucket.of(stream).to(self.device), real, groups)
                merged_out, x_hats = self.expert_pass(block, bucket.of(merged_stream, offset).to(self.device), real,
                                                      groups)
                for group in groups:
                    shifts[group].add(x_hats[group], xs[group])
                block_shift.add(merged_out[real].to(self.stat_dtype), out[real].to(self.stat_dtype))
                # In place (onto the host where streams are kept there): no other micro-batch reads these
                # rows, and a second copy of a stream would grow with the calibration set.
                bucket.write(stream, out)
                bucket.write(merged_stream, merged_out, offset)
            self.trace.shift[task.name].extend(shifts[g].value() for g in groups)
            self.trace.block_shift[task.name].append(block_shift.value())

    def solve_batched(self, group: LayerGroup, label: str, block: nn.Module, expert_blocks: list[nn.Module],
                      expert_streams: list[Stream], merged_stream: Stream) -> None:
        """One layer group from micro-batches: its terms summed over them, then one solve. Only what the method
        reads is run: the merged block's prefix for X̂ (CoM), the expert's on the merged stream (RegMean++)."""
        reads = self.method.reads
        assert self.method.group_terms is not None
        bias = self.with_bias(group.modules(block))
        weights = [group_weight(group.modules(b), bias).to(self.stat_dtype) for b in expert_blocks]
        w_mean = mean_weight(weights)
        alpha, _ = self.method.regularization(self.options)
        terms, tokens = [], []
        for task, mask, expert_block, stream, w, buckets in zip(self.tasks, self.masks, expert_blocks, expert_streams,
                                                                weights, self.buckets):
            total: TaskTerms | None = None
            count = 0
            for number, bucket in enumerate(buckets, 1):
                real = mask[bucket.rows, :bucket.width]
                merged_rows = bucket.of(merged_stream, task.rows.start).to(self.device)

                def read(what: str, run_on: nn.Module, stream_rows: Stream) -> torch.Tensor | None:
                    if what not in reads:
                        return None
                    return augment(input_at(run_on, group, stream_rows, real, self.stat_dtype), bias)

                x = read(EXPERT_INPUTS, expert_block, bucket.of(stream).to(self.device))
                x_hat = read(MERGED_INPUTS, block, merged_rows)
                z = read(EXPERT_ON_MERGED, expert_block, merged_rows)
                count += int(real.sum())
                part = GroupInputs(x, x_hat, z, w, w_mean, task.weight)
                total = add_terms(total, self.method.group_terms(part, alpha, self.options))
                self.on_batch(f"{label} · {task.name} micro-batch {number}/{len(buckets)}")
            assert total is not None
            terms.append(total)
            tokens.append(count)
        merged, warning = solve_layer_group(self.method, terms, tokens, [t.weight for t in self.tasks], w_mean,
                                            self.options, where=label)
        if warning:
            self.trace.warnings.append(warning)
        set_group_weight(group.modules(block), merged, bias)
        self.on_group(label)

    def expert_pass(self, expert_block: nn.Module, stream: Stream, mask: torch.Tensor,
                    groups: list[LayerGroup]) -> tuple[torch.Tensor, dict[LayerGroup, torch.Tensor]]:
        """Run one expert's block on its stream; returns its output and each group's inputs X_i."""
        inputs: dict[LayerGroup, torch.Tensor] = {}

        def keep_input(group: LayerGroup):
            def hook(module: nn.Module, args: tuple) -> None:
                inputs.setdefault(group, args[0][mask].to(self.stat_dtype))
            return hook

        with pre_hooks(expert_block, {g.names[0]: keep_input(g) for g in groups}):
            out = run_block(expert_block, stream)
        return out, inputs

    def solve(self, group: LayerGroup, label: str, merged_modules: list[nn.Module],
              expert_blocks: list[nn.Module], x_hats: list[torch.Tensor | None], xs: list[torch.Tensor],
              on_merged: list[torch.Tensor | None]) -> None:
        """Gather one layer group's inputs per task, merge it (merge_layer_group), write it into the merged block."""
        bias = self.with_bias(merged_modules)
        weights = [group_weight(g, bias).to(self.stat_dtype) for g in (group.modules(b) for b in expert_blocks)]
        w_mean = mean_weight(weights)
        inputs = [GroupInputs(augment(x, bias), None if x_hat is None else augment(x_hat, bias),
                              None if z is None else augment(z, bias), w, w_mean, task.weight)
                  for task, x_hat, x, z, w in zip(self.tasks, x_hats, xs, on_merged, weights)]
        merged, warning = merge_layer_group(self.method, inputs, self.options, where=label)
        if warning:
            self.trace.warnings.append(warning)
        set_group_weight(merged_modules, merged, bias)

    def merged_pass(self, block: nn.Module, stream: Stream, groups: list[LayerGroup], labels: list[str],
                    expert_blocks: list[nn.Module], xs: list[dict[LayerGroup, torch.Tensor]]) -> None:
        """The merged pass of a method that reads the merged stream (CoM, RegMean++): the merged block runs on
        every bucket of every task in lockstep (lockstep.py). At each layer group the forwards meet: the
        group's X̂ from all of them is gathered, the shift measured, the group solved and written; then every
        bucket runs it, so later groups of the block see merged inputs. The outputs are written back in place.
        Where no bucket has padding to cut, one forward over every row does the same without the threads."""
        on_merged = self.experts_on_merged(stream, expert_blocks, groups)
        if any(b.width < stream.hidden.shape[1] for buckets in self.buckets for b in buckets):
            # (bucket, where its rows start in the merged stream)
            pieces = [(b, task.rows.start) for task, buckets in zip(self.tasks, self.buckets) for b in buckets]
        else:
            pieces = [(Bucket(slice(0, len(stream.hidden)), stream.hidden.shape[1], stream.args, stream.kwargs), 0)]

        def run(i: int) -> torch.Tensor:
            bucket, offset = pieces[i]
            return run_block(block, bucket.of(stream, offset).to(self.device))

        def task_rows(t: int, arrived: list[torch.Tensor]) -> torch.Tensor:
            """Task t's X̂ on its statistics tokens, in row order, from the forwards' inputs at a group."""
            task, mask, parts = self.tasks[t], self.masks[t], []
            for (bucket, offset), x_hat in zip(pieces, arrived):
                rows = bucket.at(offset)
                lo, hi = max(rows.start, task.rows.start), min(rows.stop, task.rows.stop)
                if lo < hi:
                    real = mask[lo - task.rows.start:hi - task.rows.start, :bucket.width]
                    parts.append(x_hat[lo - rows.start:hi - rows.start][real].to(self.stat_dtype))
            return torch.cat(parts)

        def meet(k: int, arrived: list[torch.Tensor]) -> None:
            group, label = groups[k], labels[k]
            x_hats = [task_rows(t, arrived) for t in range(len(self.tasks))]
            expert_x = [x[group] for x in xs]
            for task, x_hat, x in zip(self.tasks, x_hats, expert_x):
                self.trace.shift[task.name].append(relative_error(x_hat, x))
            if self.method.regression:
                self.solve(group, label, group.modules(block), expert_blocks, x_hats, expert_x,
                           [z[group] if z is not None else None for z in on_merged])
            self.on_group(label)

        outs = lockstep(block, run, len(pieces), [g.names[0] for g in groups], meet)
        for (bucket, offset), out in zip(pieces, outs):
            bucket.write(stream, out, offset)

    def solved_then_run(self, block: nn.Module, stream: Stream, groups: list[LayerGroup], labels: list[str],
                        expert_blocks: list[nn.Module], xs: list[dict[LayerGroup, torch.Tensor]]) -> None:
        """The merged pass of a method that reads nothing of the merged stream (RegMean; a data-free method's
        shift): every group is solved from the experts' inputs first, then the merged block runs by buckets,
        as the expert passes do, and each group's shift is measured on the way."""
        for group, label in zip(groups, labels):
            if self.method.regression:
                self.solve(group, label, group.modules(block), expert_blocks, [None] * len(xs),
                           [x[group] for x in xs], [None] * len(xs))
                self.on_group(label)
        for task, mask, buckets, x in zip(self.tasks, self.masks, self.buckets, xs):
            x_hats = self.bucket_pass(block, stream, buckets, mask, groups, offset=task.rows.start)
            self.trace.shift[task.name].extend(relative_error(x_hats[g], x[g]) for g in groups)
        if not self.method.regression:
            for label in labels:
                self.on_group(label)

    def experts_on_merged(self, stream: Stream, expert_blocks: list[nn.Module],
                          groups: list[LayerGroup]) -> list[dict[LayerGroup, torch.Tensor] | None]:
        """For methods that read it (RegMean++): each expert's own block run on its task's rows of the merged
        block input, keeping every group's inputs. One more expert forward per task and block, by buckets; the
        merged stream is read, not advanced."""
        if EXPERT_ON_MERGED not in self.method.reads:
            return [None] * len(self.tasks)
        return [self.bucket_pass(expert_block, stream, buckets, mask, groups, offset=task.rows.start, advance=False)
                for task, mask, expert_block, buckets in zip(self.tasks, self.masks, expert_blocks, self.buckets)]


def initial_streams(family: Family, backbone: nn.Module, tasks: list[EngineTask], calibration: EncodedSamples,
                    merge_tensor: Callable[[str, Iterable[torch.Tensor], torch.Tensor], None],
                    store: torch.device) -> tuple[list[Stream], Stream]:
    """Block-0 inputs: each expert's own embeddings give its stream; then everything outside the blocks is
    merged (`merge_tensor(name, experts' tensors, parameter)`) and the merged stream is captured. Each stream
    goes to `store` as soon as it is captured (the host, when offloaded: one stream at a time on the device)."""
    block_path, blocks = family.blocks(backbone)
    params = {n: p for n, p in backbone.named_parameters() if not n.startswith(block_path + ".")}
    expert_streams = []
    for task in tasks:
        for name, param in params.items():
            param.copy_(task.source.get(name))
        rows = {k: v[task.rows] for k, v in calibration.inputs.items()}
        expert_streams.append(capture_block_inputs(family, backbone, blocks[0], rows).to(store))
    for name, param in params.items():
        merge_tensor(name, expert_tensors(tasks, name, param), param)
    return expert_streams, capture_block_inputs(family, backbone, blocks[0], calibration.inputs).to(store)


def merge(method: Method, family: Family, backbone: nn.Module, base: ModelSource, tasks: list[EngineTask],
          calibration: EncodedSamples | None, options: MergeOptions,
          progress: Callable[[ProgressEvent], None] | None = None,
          cancel: Callable[[], bool] | None = None, memory: PeakMemory | None = None,
          placement: Placement | None = None) -> MergeTrace:
    """Merge the experts into `backbone` (loaded with the base's weights) in place, with `method`.
    With an offloading `placement` the backbone's blocks and the streams stay on the host (offload.py) and
    each block is merged on the device; the calibration inputs are on the device."""
    block_path, blocks = family.blocks(backbone)
    placement = placement or Placement(next(backbone.parameters()).device)
    trace = MergeTrace(shift={t.name: [] for t in tasks}, block_shift={t.name: [] for t in tasks})
    memory = memory or PeakMemory(placement.device)
    counter = {"step": 0, "total": 0}

    def on_group(label: str) -> None:
        counter["step"] += 1
        memory.sample()
        if progress:
            progress(ProgressEvent(method.name, counter["step"], counter["total"], label))
        if cancel and cancel():
            raise Cancelled(f"{method.name}: cancelled after {label}")

    def on_batch(detail: str) -> None:
        """A micro-batch of a layer group done: progress and cancel inside long groups; nothing is written yet."""
        memory.sample()
        if progress:
            progress(ProgressEvent(method.name, counter["step"], counter["total"], "", detail=detail))
        if cancel and cancel():
            raise Cancelled(f"{method.name}: cancelled during {detail}")

    def merge_tensor(name: str, experts: Iterable[torch.Tensor], param: torch.Tensor) -> None:
        base_tensor = base.get(name).to(param.device, param.dtype) if method.needs_base else None
        param.copy_(method.merge_tensor(base_tensor, experts, options, name))

    if not method.regression and not options.data_free_shift:
        # As mergekit does: every tensor by the method's rule, no calibration forwards, no layers or shift in
        # the trace. Progress counts tensors.
        params = list(backbone.named_parameters())
        counter["total"] = len(params)
        with torch.no_grad():
            for name, param in params:
                work = param.to(placement.device)  # the parameter itself unless it is kept on the host
                merge_tensor(name, expert_tensors(tasks, name, work), work)
                if work is not param:
                    param.copy_(work)
                on_group(name)
        return MergeTrace()

    assert calibration is not None, "a merge with forwards needs calibration samples"
    calibration = by_length(calibration, tasks)
    sink = family.sink_tokens if options.sink_tokens is None else options.sink_tokens
    masks = [statistics_mask(calibration.token_mask[t.rows], sink) for t in tasks]
    device, store = placement.device, placement.store
    with torch.no_grad():
        expert_streams, merged_stream = initial_streams(family, backbone, tasks, calibration, merge_tensor, store)
        memory.sample()

        buckets: list[list[Bucket]] = []  # per task, planned at block 0
        for index, block in enumerate(blocks):
            if cancel and cancel():
                raise Cancelled(f"{method.name}: cancelled before block {index}")
            path = f"{block_path}.{index}"
            with on_device(block, placement):
                probe = rows_stream(merged_stream, slice(0, 1)).to(device)
                groups = find_layer_groups(block, lambda: run_block(block, probe))
                labels = [g.label(path) for g in groups]
                counter["total"] = counter["total"] or len(groups) * len(blocks)
                trace.layers.extend(labels)
                if index == 0:
                    held = 2 * merged_stream.hidden.numel() * merged_stream.hidden.element_size()
                    trace.merge_batch = plan_batch(options, groups, block, calibration, method,
                                                   streams_bytes=held if placement.offload else 0)
                    size = trace.merge_batch or max(BUCKET_SAMPLES, -(-len(calibration.token_mask) // MAX_BUCKETS))
                    buckets = [plan_buckets(family, backbone, block, calibration, t, size, store) for t in tasks]
                merger = _BlockMerger(method, options, tasks, masks, trace, on_group, on_batch, device, buckets)
                if trace.merge_batch is None:
                    # One pass: the whole streams come to the device for the block (a no-op unless offloaded).
                    here, merged_here = [s.to(device) for s in expert_streams], merged_stream.to(device)
                    merger.merge_block(block, path, groups, labels, here, merged_here, merge_tensor)
                    for stream, done in zip([*expert_streams, merged_stream], [*here, merged_here]):
                        stream.hidden = done.hidden.to(store)
                else:
                    merger.merge_block_batched(block, path, groups, labels, expert_streams, merged_stream,
                                               merge_tensor)
                memory.sample()
    return trace


def expert_tensors(tasks: list[EngineTask], name: str, like: torch.Tensor) -> Iterator[torch.Tensor]:
    """The experts' copies of one tensor, read one at a time (embeddings can be GiBs each), as `like` is."""
    return (t.source.get(name).to(like.device, like.dtype) for t in tasks)


def _rows_of(stream: Stream, rows: slice) -> tuple[tuple, dict]:
    """The block's other arguments restricted to `rows` (tensors whose first axis is the batch)."""
    total = stream.hidden.shape[0]
    return _mapped(stream.args, stream.kwargs,
                   lambda t: t[rows] if t.dim() > 0 and t.shape[0] == total else t)


def _mapped(args: tuple, kwargs: dict, fn: Callable[[torch.Tensor], torch.Tensor]) -> tuple[tuple, dict]:
    """`fn` applied to every tensor among a block's other arguments (inside tuples too)."""
    def each(value):
        if isinstance(value, torch.Tensor):
            return fn(value)
        if isinstance(value, tuple):
            return tuple(each(v) for v in value)
        return value

    return tuple(each(a) for a in args), {k: each(v) for k, v in kwargs.items()}


def statistics_mask(token_mask: torch.Tensor, sink_tokens: int) -> torch.Tensor:
    """The tokens the statistics and the shift are computed on: real tokens, less each sample's first
    `sink_tokens` (they still run through every block, so the others see them)."""
    if not sink_tokens:
        return token_mask
    return token_mask & (token_mask.cumsum(dim=1) > sink_tokens)


class ShiftSum:
    """‖X̂ − X‖ / ‖X‖ over all micro-batches, from the summed squares: the same figure as one pass gives."""

    def __init__(self) -> None:
        self.diff, self.norm = 0.0, 0.0

    def add(self, approx: torch.Tensor, exact: torch.Tensor) -> None:
        self.diff += float(torch.sum((approx - exact).double() ** 2))
        self.norm += float(torch.sum(exact.double() ** 2))

    def value(self) -> float:
        return (self.diff ** 0.5) / max(self.norm ** 0.5, 1e-12)


def plan_batch(options: MergeOptions, groups: list[LayerGroup], block: nn.Module, calibration: EncodedSamples,
               method: Method, streams_bytes: int = 0) -> int | None:
    """Samples per forward while merging, or None for one pass over all of them (the fastest). One pass holds
    every group's inputs for every real token of every task at once (twice with RegMean++'s extra read), and,
    when the streams are kept on the host, brings the streams (`streams_bytes`) to the device; when that
    exceeds options.merge_memory_gb, micro-batches as large as the budget allows. merge_batch overrides."""
    if options.merge_batch:
        return options.merge_batch
    element = 8 if options.gram_dtype == "float64" else 4
    width = sum(linear_shape(g.modules(block)[0])[0] for g in groups)
    copies = 2 if EXPERT_ON_MERGED in method.reads else 1
    tokens = int(calibration.token_mask.sum())
    need = tokens * width * element * copies + streams_bytes
    budget = options.merge_memory_gb * 2 ** 30
    if need <= budget:
        return None
    rows = calibration.token_mask.shape[0]
    return max(1, int(rows * budget / need))
