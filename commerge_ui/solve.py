"""The closed-form solves of RegMean and Chain of Merges (design.md §2-3), for one layer group.

Conventions: a group's weight is W [d_in (+1), d_out] with y = [x, 1] W; X are rows of real tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import MergeError


@dataclass
class TaskTerms:
    """One task's contribution to the normal equations A W = B of a layer group."""

    lhs: torch.Tensor  # A_i [d, d]
    rhs: torch.Tensor  # B_i [d, d_out]


def augment(x: torch.Tensor, with_bias: bool) -> torch.Tensor:
    """[x, 1]: a column of ones makes the bias part of the exact regression."""
    return torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1) if with_bias else x


def shrink(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    # G̃ = α·G + (1−α)·diag(G)
    return alpha * gram + (1 - alpha) * torch.diag_embed(torch.diagonal(gram))


def regmean_terms(x: torch.Tensor, w: torch.Tensor, alpha: float) -> TaskTerms:
    # RegMean: A_i = G̃_i, B_i = G̃_i W_i, with G_i = X_iᵀX_i from the unmerged expert
    g = shrink(x.T @ x, alpha)
    return TaskTerms(g, g @ w)


def com_terms(x_hat: torch.Tensor, x: torch.Tensor, w: torch.Tensor, alpha: float, target: str,
              y: torch.Tensor | None = None) -> TaskTerms:
    # CoM: A_i = shrink(X̂_iᵀX̂_i), B_i = shrink(X̂_iᵀX_i) W_i = α·X̂_iᵀY_i + (1−α)·diag(X̂_iᵀX_i) W_i
    a = shrink(x_hat.T @ x_hat, alpha)
    if target == "expert_weights":  # per-layer RegMean++: pull toward W_i under the merged inputs' Gram
        return TaskTerms(a, a @ w)
    if y is not None:  # X̂ᵀY is cheaper than X̂ᵀX when the group's outputs are narrower than its inputs
        diag = (x_hat * x).sum(dim=0)
        return TaskTerms(a, alpha * (x_hat.T @ y) + (1 - alpha) * diag[:, None] * w)
    return TaskTerms(a, shrink(x_hat.T @ x, alpha) @ w)


def task_scale(terms: TaskTerms, tokens: int, normalize: str, weight: float) -> TaskTerms:
    """Normalise a task's statistics (by token count or trace) and apply its importance weight λ_i."""
    if normalize == "tokens":
        scale = weight / max(tokens, 1)
    elif normalize == "trace":
        scale = weight * terms.lhs.shape[0] / float(torch.trace(terms.lhs).clamp_min(1e-12))
    else:
        scale = weight
    return TaskTerms(terms.lhs * scale, terms.rhs * scale)


def solve_group(terms: list[TaskTerms], ridge: float = 0.0, anchor: torch.Tensor | None = None,
                where: str = "layer") -> tuple[torch.Tensor, str | None]:
    """W* = (Σ A_i + μI)⁻¹ (Σ B_i + μ·anchor), μ = ridge·mean(diag Σ A_i); returns W* and a warning if any.

    Solved in float64 with a Cholesky factorisation; a singular system gets a growing ridge toward
    `anchor` (or zero) and a warning naming the layer.
    """
    lhs = sum(t.lhs for t in terms).double()
    rhs = sum(t.rhs for t in terms).double()
    if not (torch.isfinite(lhs).all() and torch.isfinite(rhs).all()):
        raise MergeError(f"{where}: the calibration statistics contain NaN or Inf (overflow in the "
                         "activations?); try float32 instead of float16/bfloat16")
    anchor64 = anchor.double() if anchor is not None else torch.zeros_like(rhs)
    scale = float(torch.diagonal(lhs).mean().clamp_min(1e-12))
    eye = torch.eye(lhs.shape[0], dtype=lhs.dtype, device=lhs.device)
    warning = None
    mu = ridge * scale
    for attempt in range(8):
        factor, info = torch.linalg.cholesky_ex(lhs + mu * eye)
        if int(info) == 0:
            merged = torch.cholesky_solve(rhs + mu * anchor64, factor)
            if torch.isfinite(merged).all():
                return merged, warning
        mu = scale * 10.0 ** (attempt - 6) if attempt < 7 else scale
        warning = (f"{where}: singular or ill-conditioned statistics (too few or duplicated samples?); "
                   f"added a ridge of {mu / scale:.0e} × mean diagonal")
    raise MergeError(f"{where}: could not solve the merge even with a ridge; check the calibration samples")
