"""Every merge method, in one registry (docs/method.md §2-5). A method is one entry of METHODS; the engine asks it
what to read and how to merge, and never looks at its name.

- Data-free methods give a per-tensor `rule` (the experts' copies of one tensor → the merged tensor).
- Activation-based methods also give `group_terms`: one task's normal-equation terms for a layer group, from
  the inputs the engine gathered for it (`reads`). Everything they do not solve is merged by their `rule`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from .config import MergeOptions
from .methods_svd import iso_c, iso_cts, tsv_m
from .solve import GroupInputs, TaskTerms, com_terms, regmean_terms


def _mean(experts: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([e.float() for e in experts]).mean(dim=0)


def of_sum_average(base: torch.Tensor | None, mean: torch.Tensor, count: int, options: MergeOptions) -> torch.Tensor:
    return mean  # W = mean_i W_i


def of_sum_task_arithmetic(base: torch.Tensor | None, mean: torch.Tensor, count: int,
                           options: MergeOptions) -> torch.Tensor:
    assert base is not None
    b = base.float()
    return b + options.task_lambda * count * (mean - b)  # W_base + λ Σ_i (W_i − W_base)


def average(base: torch.Tensor | None, experts: list[torch.Tensor], options: MergeOptions, name: str = "") -> torch.Tensor:
    return of_sum_average(base, _mean(experts), len(experts), options)


def task_arithmetic(base: torch.Tensor, experts: list[torch.Tensor], options: MergeOptions,
                    name: str = "") -> torch.Tensor:
    return of_sum_task_arithmetic(base, _mean(experts), len(experts), options)


def _elect_and_sum(vectors: torch.Tensor, mean: bool = False) -> torch.Tensor:
    """TIES's sign election on [K, n] task vectors: the sign of their sum (a zero sum elects +); the sum of the
    entries that agree with it, or with `mean` their mean (the paper's disjoint mean; mergekit's `normalize`)."""
    sign = torch.where(vectors.sum(dim=0) >= 0, 1.0, -1.0)
    agree = (torch.sign(vectors) == sign) & (vectors != 0)
    total = (vectors * agree).sum(dim=0)
    return total / agree.sum(dim=0).clamp_min(1) if mean else total


def ties(base: torch.Tensor, experts: list[torch.Tensor], options: MergeOptions, name: str = "") -> torch.Tensor:
    """TIES (Yadav et al., "TIES-Merging: Resolving Interference When Merging Models", NeurIPS 2023): trim each
    task vector to its top k = ⌊density·n⌋ entries by magnitude, elect a sign per entry (the sign of the
    trimmed sum; a zero sum elects +), and sum the entries that agree.

    Conventions, as in mergekit: exactly k entries survive (entries of equal magnitude at the threshold are
    taken in index order); the disjoint *sum* is scaled by λ (FusionBench's default), or with `ties_mean` the
    disjoint mean (the paper's; mergekit's `normalize: true`).
    """
    b = base.float()
    flat = torch.stack([e.float() - b for e in experts]).reshape(len(experts), -1)
    keep = max(1, int(options.ties_density * flat.shape[1]))
    if keep < flat.shape[1]:
        top = torch.argsort(flat.abs(), dim=1, descending=True, stable=True)[:, :keep]
        flat = torch.zeros_like(flat).scatter_(1, top, flat.gather(1, top))
    return b + options.task_lambda * _elect_and_sum(flat, options.ties_mean).reshape(base.shape)


def dare_vectors(base: torch.Tensor, experts: list[torch.Tensor], options: MergeOptions, name: str) -> torch.Tensor:
    """DARE's drop and rescale: each task vector loses a random fraction p of its entries (p = `dare_drop`), and
    the rest are divided by 1 − p, so its expectation is unchanged. Seeded by the run's seed, the tensor's name
    and the expert's position: the same config gives the same merge, whatever order tensors are read in."""
    b = base.float()
    p = options.dare_drop
    out = []
    for i, expert in enumerate(experts):
        vector = expert.float() - b
        if p > 0:
            seed = zlib.crc32(f"{options.seed}:{name}:{i}".encode())
            generator = torch.Generator().manual_seed(seed)
            keep = torch.rand(vector.shape, generator=generator) >= p
            vector = torch.where(keep.to(vector.device), vector / (1 - p), torch.zeros_like(vector))
        out.append(vector)
    return torch.stack(out)


def dare(base: torch.Tensor, experts: list[torch.Tensor], options: MergeOptions, name: str = "") -> torch.Tensor:
    """DARE (Yu et al., "Language Models are Super Mario: Absorbing Abilities from Homologous Models as a Free
    Lunch", ICML 2024) with task arithmetic: W_base + λ Σ_i DARE(τ_i)."""
    return base.float() + options.task_lambda * dare_vectors(base, experts, options, name).sum(dim=0)


def dare_ties(base: torch.Tensor, experts: list[torch.Tensor], options: MergeOptions, name: str = "") -> torch.Tensor:
    """DARE-TIES (Yu et al., 2024): the DARE-sparsified task vectors replace TIES's magnitude trim; then TIES's
    sign election and disjoint sum, scaled by λ."""
    vectors = dare_vectors(base, experts, options, name).reshape(len(experts), -1)
    return base.float() + options.task_lambda * _elect_and_sum(vectors).reshape(base.shape)


# --- activation-based methods: one task's terms for a layer group ------------------------------------------------

def regmean_group(inputs: GroupInputs, alpha: float, options: MergeOptions) -> TaskTerms:
    """RegMean (Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023):
    Grams of the unmerged expert's own inputs."""
    assert inputs.x is not None
    return regmean_terms(inputs.x, inputs.w, inputs.w_mean, alpha)


def com_group(inputs: GroupInputs, alpha: float, options: MergeOptions) -> TaskTerms:
    """Chain of Merges, the reading that corrects drift: the partially merged model's inputs X̂ regressed onto
    the expert's outputs X_i W_i (argmin Σ_i ‖X̂_i W − X_i W_i‖²; docs/method.md §4)."""
    assert inputs.x_hat is not None and inputs.x is not None
    return com_terms(inputs.x_hat, inputs.x, inputs.w, inputs.w_mean, alpha, "expert_outputs")


def com_chain_group(inputs: GroupInputs, alpha: float, options: MergeOptions) -> TaskTerms:
    """Chain of Merges, the other reading: the same chain of merged inputs X̂, regressed onto X̂_i W_i (argmin
    Σ_i ‖X̂_i W − X̂_i W_i‖²): RegMean solved on the merged model's inputs, without the drift term."""
    assert inputs.x_hat is not None
    return com_terms(inputs.x_hat, inputs.x_hat, inputs.w, inputs.w_mean, alpha, "expert_weights")


def regmean_plusplus_group(inputs: GroupInputs, alpha: float, options: MergeOptions) -> TaskTerms:
    """RegMean++ (Nguyen et al., "Enhancing Effectiveness and Generalization of Regression Mean for Model
    Merging", arXiv 2508.03121): RegMean's solve on the Grams of expert i's own block run on the merged
    model's block input (the merged stream), so inter-block drift is seen; within a block nothing is
    re-merged, as in the paper's whole-block merge."""
    assert inputs.x_on_merged is not None
    return regmean_terms(inputs.x_on_merged, inputs.w, inputs.w_mean, alpha)


def shrink_only(options: MergeOptions) -> tuple[float, float]:
    return options.alpha, 0.0  # (α, ridge)


def com_regularization(options: MergeOptions) -> tuple[float, float]:
    """CoM's choice: the α-shrink, or (α = 1 and) a ridge toward the experts' mean weight."""
    return (1.0, options.ridge) if options.com_regularization == "ridge" else (options.alpha, 0.0)


# What an activation-based method reads, per layer group. In one pass the first two are always gathered (the
# shift is measured on them); the third costs one more expert forward per block and is run only for a method
# reading it. Micro-batched, each is gathered only for a method that reads it (the shift has its own pass).
EXPERT_INPUTS = "expert_inputs"  # X_i: expert i's own stream
MERGED_INPUTS = "merged_inputs"  # X̂_i: the partially merged model's stream
EXPERT_ON_MERGED = "expert_on_merged"  # expert i's block run on the merged stream's block input


@dataclass(frozen=True)
class Method:
    name: str
    title: str
    paper: str
    rule: Callable[..., torch.Tensor]  # (base, experts, options, name) → merged tensor
    of_sum: Callable[..., torch.Tensor] | None = None  # the same rule from the experts' mean: streamed
    needs_base: bool = True
    group_terms: Callable[[GroupInputs, float, MergeOptions], TaskTerms] | None = None
    reads: frozenset[str] = frozenset()
    regularization: Callable[[MergeOptions], tuple[float, float]] = shrink_only

    @property
    def regression(self) -> bool:
        """Linear layers in blocks are solved from activations."""
        return self.group_terms is not None

    def merge_tensor(self, base: torch.Tensor | None, experts: Iterable[torch.Tensor], options: MergeOptions,
                     name: str = "") -> torch.Tensor:
        """The rule applied to the experts' copies of one tensor. A rule with `of_sum` reads them one at a
        time: merging K embedding matrices never holds K of them."""
        if self.of_sum is None:
            experts = list(experts)
            return self.rule(base, experts, options, name).to(experts[0].dtype)
        total, count, dtype = None, 0, torch.float32
        for tensor in experts:
            # The first is copied: summing in place into an expert's own float32 tensor would change that expert.
            total = tensor.to(torch.float32, copy=True) if total is None else total.add_(tensor)
            count, dtype = count + 1, tensor.dtype
        assert total is not None, "no expert tensors"
        return self.of_sum(base, total / count, count, options).to(dtype)


_AVERAGE = {"rule": average, "of_sum": of_sum_average, "needs_base": False}
METHODS: dict[str, Method] = {m.name: m for m in [
    Method("com", "Chain of Merges", "Chain of Merges (CoM), docs/method.md §4", **_AVERAGE, group_terms=com_group,
           reads=frozenset({EXPERT_INPUTS, MERGED_INPUTS}), regularization=com_regularization),
    Method("com_chain", "CoM, chain only", "Chain of Merges (CoM) without its drift term, docs/method.md §4",
           **_AVERAGE, group_terms=com_chain_group, reads=frozenset({MERGED_INPUTS}),
           regularization=com_regularization),
    Method("regmean", "RegMean", "Jin et al., Dataless Knowledge Fusion by Merging Weights of Language Models, "
           "ICLR 2023", **_AVERAGE, group_terms=regmean_group, reads=frozenset({EXPERT_INPUTS})),
    Method("regmean_plusplus", "RegMean++", "Nguyen et al., Enhancing Effectiveness and Generalization of "
           "Regression Mean for Model Merging, arXiv 2508.03121", **_AVERAGE, group_terms=regmean_plusplus_group,
           reads=frozenset({EXPERT_ON_MERGED})),
    Method("task_arithmetic", "Task arithmetic", "Ilharco et al., Editing Models with Task Arithmetic, ICLR 2023",
           task_arithmetic, of_sum_task_arithmetic),
    Method("ties", "TIES", "Yadav et al., TIES-Merging: Resolving Interference When Merging Models, NeurIPS 2023",
           ties),
    Method("dare", "DARE", "Yu et al., Language Models are Super Mario: Absorbing Abilities from Homologous "
           "Models as a Free Lunch, ICML 2024", dare),
    Method("dare_ties", "DARE-TIES", "Yu et al., ICML 2024 (DARE) with Yadav et al., NeurIPS 2023 (TIES)", dare_ties),
    Method("tsv_m", "TSV-M", "Gargiulo et al., Task Singular Vectors: Reducing Task Interference in Model Merging, "
           "CVPR 2025", tsv_m),
    Method("iso_c", "Iso-C", "Marczak et al., No Task Left Behind: Isotropic Model Merging with Common and "
           "Task-Specific Subspaces, ICML 2025", iso_c),
    Method("iso_cts", "Iso-CTS", "Marczak et al., ICML 2025 (common and task-specific subspaces)", iso_cts),
    Method("average", "Average", "Wortsman et al., Model soups, ICML 2022", **_AVERAGE),
]}
