"""The merge methods behind one registry: data-free rules per tensor, and which methods solve regressions."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .config import MergeOptions


def average(base: torch.Tensor | None, experts: list[torch.Tensor], options: MergeOptions) -> torch.Tensor:
    # W = mean_i W_i
    return torch.stack([e.float() for e in experts]).mean(dim=0)


def task_arithmetic(base: torch.Tensor, experts: list[torch.Tensor], options: MergeOptions) -> torch.Tensor:
    # W = W_base + λ Σ_i (W_i − W_base)
    b = base.float()
    return b + options.task_lambda * torch.stack([e.float() - b for e in experts]).sum(dim=0)


def ties(base: torch.Tensor, experts: list[torch.Tensor], options: MergeOptions) -> torch.Tensor:
    """TIES (Yadav et al., 2023): trim each task vector to its top k = ⌊density·n⌋ entries by magnitude, elect a
    sign per entry (the sign of the trimmed sum; a zero sum elects +), and sum the entries that agree.

    Conventions, as in mergekit: exactly k entries survive (entries of equal magnitude at the threshold are
    taken in index order); the disjoint *sum* is scaled by λ (FusionBench's default; the paper's disjoint mean
    with λ≈1 is close).
    """
    b = base.float()
    vectors = torch.stack([e.float() - b for e in experts])
    flat = vectors.reshape(len(experts), -1)
    keep = max(1, int(options.ties_density * flat.shape[1]))
    if keep < flat.shape[1]:
        top = torch.argsort(flat.abs(), dim=1, descending=True, stable=True)[:, :keep]
        flat = torch.zeros_like(flat).scatter_(1, top, flat.gather(1, top))
    sign = torch.where(flat.sum(dim=0) >= 0, 1.0, -1.0)
    agree = (torch.sign(flat) == sign) & (flat != 0)
    merged = (flat * agree).sum(dim=0).reshape(base.shape)
    return b + options.task_lambda * merged


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    regression: bool  # linear layers in blocks are solved from activations (RegMean, CoM)
    rule: object  # the per-tensor rule for everything not solved by regression

    @property
    def needs_base(self) -> bool:
        return self.rule is not average

    def merge_tensor(self, base: torch.Tensor | None, experts: Iterable[torch.Tensor],
                     options: MergeOptions) -> torch.Tensor:
        """The rule applied to the experts' tensors. Averaging and task arithmetic depend on them only through
        their sum, so they take one at a time: merging K embedding matrices never holds K of them."""
        if self.rule not in (average, task_arithmetic):
            experts = list(experts)
            return self.rule(base, experts, options).to(experts[0].dtype)  # type: ignore[operator]
        total, count, dtype = None, 0, torch.float32
        for tensor in experts:
            # The first is copied: summing in place into an expert's own float32 tensor would change that expert.
            total = tensor.to(torch.float32, copy=True) if total is None else total.add_(tensor)
            count, dtype = count + 1, tensor.dtype
        assert total is not None, "no expert tensors"
        mean = total / count
        if self.rule is average:  # W = mean_i W_i
            return mean.to(dtype)
        b = base.float()  # type: ignore[union-attr]
        return (b + options.task_lambda * count * (mean - b)).to(dtype)  # W_base + λ Σ_i (W_i − W_base)


METHODS: dict[str, Method] = {
    "com": Method("com", "Chain of Merges", True, average),
    "regmean": Method("regmean", "RegMean", True, average),
    "task_arithmetic": Method("task_arithmetic", "Task arithmetic", False, task_arithmetic),
    "ties": Method("ties", "TIES", False, ties),
    "average": Method("average", "Average", False, average),
}
