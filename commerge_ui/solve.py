"""The closed-form solves of RegMean and Chain of Merges (docs/method.md §3-5), for one layer group.

Conventions: a group's weight is W [d_in (+1), d_out] with y = [x, 1] W; X are rows of real tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

from .errors import MergeError, NonFiniteError

if TYPE_CHECKING:
    from .config import MergeOptions


@dataclass
class TaskTerms:
    """One task's contribution to the normal equations A Δ = B of a layer group, where W* = W̄ + Δ.

    B = rhs + Σ_k M_k V_k. The products are formed once, at the solve: M_k [d, d] are sums over tokens that add
    up across micro-batches, V_k [d, d_out] (float64) are fixed per task, so a micro-batch costs its Grams and
    not a float64 [d, d] × [d, d_out] product each (docs/method.md §6b). M_k None stands for A itself."""

    lhs: torch.Tensor  # A_i [d, d], in the statistics dtype
    rhs: torch.Tensor | None = None  # the part of B_i formed per token batch [d, d_out], float64
    products: tuple[tuple[torch.Tensor | None, torch.Tensor], ...] = ()  # (M_k or None for A_i, V_k)

    def b(self, lhs64: torch.Tensor | None = None) -> torch.Tensor:
        """B_i, formed (`lhs64`: A_i already in float64, where the caller has it)."""
        total = self.rhs
        a = self.lhs.double() if lhs64 is None else lhs64
        for m, v in self.products:
            part = (a if m is None else m.double()) @ v
            total = part if total is None else total + part
        assert total is not None, "terms without a right-hand side"
        return total

    def scaled(self, scale: float) -> "TaskTerms":
        return TaskTerms(self.lhs * scale, None if self.rhs is None else self.rhs * scale,
                         tuple((None if m is None else m * scale, v) for m, v in self.products))

    def __add__(self, other: "TaskTerms") -> "TaskTerms":
        """The same task's terms from more tokens (another micro-batch): the sums add, the V_k are shared."""
        assert len(self.products) == len(other.products)
        rhs = other.rhs if self.rhs is None else self.rhs if other.rhs is None else self.rhs + other.rhs
        products = tuple((None if m is None else m + n, v) for (m, v), (n, _) in zip(self.products, other.products))
        return TaskTerms(self.lhs + other.lhs, rhs, products)


@dataclass
class GroupInputs:
    """What one task brings to a layer group's solve. Rows are its real tokens; with `bias: regress` every
    input has a column of ones appended and W a bias row. Micro-batched, only what the method `reads` is
    gathered; the rest is None."""

    x: torch.Tensor | None  # X_i: the group's inputs in expert i, on its own stream
    x_hat: torch.Tensor | None  # X̂_i: the group's inputs in the partially merged model
    x_on_merged: torch.Tensor | None  # expert i's block run on the merged block input (RegMean++), if read
    w: torch.Tensor  # W_i [d_in (+1), d_out]
    w_mean: torch.Tensor  # W̄, float64
    weight: float = 1.0  # the task's importance λ_i


def augment(x: torch.Tensor, with_bias: bool) -> torch.Tensor:
    """[x, 1]: a column of ones makes the bias part of the exact regression."""
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1) if with_bias else x


def shrink(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    # G̃ = α·G + (1−α)·diag(G): the off-diagonal scaled by α, the diagonal kept (exactly, as FusionBench's)
    out = alpha * gram
    out.diagonal().copy_(gram.diagonal())
    return out


def mean_weight(weights: list[torch.Tensor]) -> torch.Tensor:
    """W̄ in float64: exact for identical experts, so their merge is the expert to the last bit."""
    return torch.stack([w.double() for w in weights]).mean(dim=0)


# Why Δ = W* − W̄ and not W* itself: the statistics are float32 by default and real LLM activations make A
# ill-conditioned. Solving A W* = Σ G_i W_i with B formed in float32 mixes A's rounding with B's, and the
# solve amplifies the mismatch (3e-3 relative on SmolLM2 for identical experts). B below is built in float64
# from differences (W_i − W̄, X − X̂) that are exactly zero when the experts agree, so identical experts give
# Δ = 0 whatever the statistics dtype, and otherwise rounding only touches the (small) correction.

def regmean_terms(x: torch.Tensor, w: torch.Tensor, w_mean: torch.Tensor, alpha: float) -> TaskTerms:
    # RegMean: A_i = G̃_i, B_i = G̃_i (W_i − W̄), with G_i = X_iᵀX_i from the unmerged expert
    g = shrink(x.T @ x, alpha)
    return TaskTerms(g, products=((None, w.double() - w_mean),))


def com_terms(x_hat: torch.Tensor, x: torch.Tensor, w: torch.Tensor, w_mean: torch.Tensor, alpha: float,
              target: str) -> TaskTerms:
    """CoM: W* = argmin Σ_i ‖X̂_i W − X_i W_i‖², the α-shrink applied alike to X̂ᵀX̂ and X̂ᵀX."""
    # A_i = shrink(X̂ᵀX̂);  B_i = shrink(X̂ᵀX) W_i − A_i W̄ = shrink(X̂ᵀX̂)(W_i − W̄) + shrink(X̂ᵀ(X − X̂)) W_i
    gram = x_hat.T @ x_hat
    a = shrink(gram, alpha)
    step = w.double() - w_mean
    if target == "expert_weights":  # per-layer RegMean++: pull toward W_i under the merged inputs' Gram
        return TaskTerms(a, products=((None, step),))
    drift = x - x_hat  # zero where the merged prefix reproduces the expert's inputs
    d_in, d_out = w.shape
    if 3 * d_out < d_in:  # narrow outputs: X̂ᵀ[(X − X̂)W_i] costs 2·N·d_in·d_out, less than X̂ᵀ(X − X̂)
        cross = x_hat.T @ (drift @ w.to(drift.dtype))
        diagonal = (x_hat * drift).sum(dim=0)
        rhs = alpha * cross.double() + (1 - alpha) * diagonal.double()[:, None] * w.double()
        return TaskTerms(a, rhs, ((None, step),))
    return TaskTerms(a, products=((None, step), (shrink(x_hat.T @ drift, alpha), w.double())))


def task_scale(terms: TaskTerms, tokens: int, normalize: str, weight: float) -> TaskTerms:
    """Normalise a task's statistics (by token count or trace) and apply its importance weight λ_i."""
    if normalize == "tokens":
        scale = weight / max(tokens, 1)
    elif normalize == "trace":
        scale = weight * terms.lhs.shape[0] / float(torch.trace(terms.lhs).clamp_min(1e-12))
    else:
        scale = weight
    return terms.scaled(scale)


def solve_group(terms: list[TaskTerms], w_mean: torch.Tensor, ridge: float = 0.0,
                where: str = "layer") -> tuple[torch.Tensor, str | None]:
    """W* = W̄ + (Σ A_i + μI)⁻¹ Σ B_i, μ = ridge·mean(diag Σ A_i) (a ridge toward W̄); returns W* (float64)
    and a warning if any.

    Solved in float64 with a Cholesky factorisation; a singular system gets a growing ridge (toward W̄) and a
    warning naming the layer.
    """
    lhs64 = [t.lhs.double() for t in terms]
    lhs = sum(lhs64)
    rhs = sum(t.b(a) for t, a in zip(terms, lhs64))
    # A sum is finite only if every entry is (a NaN or an Inf carries through it): one reduction, not a mask
    if not (torch.isfinite(lhs.sum()) and torch.isfinite(rhs.sum())):
        raise NonFiniteError(f"{where}: the calibration statistics contain NaN or Inf")
    scale = float(torch.diagonal(lhs).mean().clamp_min(1e-12))
    eye = torch.eye(lhs.shape[0], dtype=lhs.dtype, device=lhs.device)
    # The asked ridge first; if the system is still singular, growing ones above it, up to the mean diagonal
    for attempt, share in enumerate([ridge] + [10.0 ** k for k in range(-6, 1) if 10.0 ** k > ridge]):
        factor, info = torch.linalg.cholesky_ex(lhs + share * scale * eye)
        if int(info) == 0:
            merged = w_mean + torch.cholesky_solve(rhs, factor)
            if torch.isfinite(merged.sum()):
                warning = None if attempt == 0 else (
                    f"{where}: singular or ill-conditioned statistics (too few or duplicated samples?); "
                    f"added a ridge of {share:.0e} × mean diagonal")
                return merged, warning
    raise MergeError(f"{where}: could not solve the merge even with a ridge; check the calibration samples")


class GroupMethod(Protocol):
    def group_terms(self, inputs: GroupInputs, alpha: float, options: MergeOptions) -> TaskTerms: ...

    def regularization(self, options: MergeOptions) -> tuple[float, float]: ...


def add_terms(total: TaskTerms | None, part: TaskTerms) -> TaskTerms:
    """Terms are sums over tokens: a micro-batch's terms add to the others' (docs/method.md §6b)."""
    return part if total is None else total + part


def solve_layer_group(method: GroupMethod, terms: list[TaskTerms], tokens: list[int], weights: list[float],
                      w_mean: torch.Tensor, options: MergeOptions,
                      where: str = "layer") -> tuple[torch.Tensor, str | None]:
    """Each task's terms (summed over all its tokens) normalised and weighted, then solved, with at least the
    `ridge_floor` (docs/method.md §5)."""
    _, ridge = method.regularization(options)
    ridge = max(ridge, options.ridge_floor)
    scaled = [task_scale(t, n, options.normalize, w) for t, n, w in zip(terms, tokens, weights)]
    return solve_group(scaled, w_mean, ridge=ridge, where=where)


def merge_layer_group(method: GroupMethod, inputs: list[GroupInputs], options: MergeOptions,
                      where: str = "layer") -> tuple[torch.Tensor, str | None]:
    """One layer group merged from all its tokens at once: each task's terms from the method, normalised and
    weighted, then solved. Returns W* [d_in (+1), d_out] in float64 and a warning if the system needed a ridge."""
    alpha, _ = method.regularization(options)
    terms = [method.group_terms(g, alpha, options) for g in inputs]
    return solve_layer_group(method, terms, [g.x.shape[0] for g in inputs], [g.weight for g in inputs],
                             inputs[0].w_mean, options, where)
