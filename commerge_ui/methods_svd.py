"""Data-free merges in the task vectors' singular bases (docs/method.md §2): TSV-M, Iso-C and Iso-CTS.

Each acts on one weight matrix at a time; a tensor that is not a matrix (biases, norms), an embedding table
(by name: token and position tables and heads; the reference code differs, see docs/method.md §2), or a matrix
narrower than the number of experts gets the mean task vector instead. The merged weight is
W_base + α·M, α = `svd_scale` (1.0: the papers pick it on held-out data, which this tool does not tune).

Singular values below `svd_rank_tol` × the largest of their decomposition are treated as zero (the numerical
rank): a task vector stored as a low-rank delta in float32 has, past its rank, only rounding noise, which TSV-M
would keep as task directions and Iso-C would raise to the mean singular value. 0 keeps every direction, as the
reference implementations do.
"""

from __future__ import annotations

import torch

from .config import MergeOptions

_NOT_MATRICES = ("embed", "wte", "wpe", "lm_head", "position", "token_type")


def _is_matrix(name: str, vectors: list[torch.Tensor]) -> bool:
    shape = vectors[0].shape
    return len(shape) == 2 and min(shape) >= len(vectors) and not any(key in name for key in _NOT_MATRICES)


def polar(a: torch.Tensor) -> torch.Tensor:
    """The orthogonal factor of A (the nearest matrix with orthonormal columns, or rows if wide): P Qᵀ for
    A = P Σ Qᵀ."""
    p, _, qh = torch.linalg.svd(a, full_matrices=False)
    return p @ qh


def _merge(base: torch.Tensor, experts: list[torch.Tensor], options: MergeOptions, name: str, matrix_rule) -> torch.Tensor:
    b = base.float()
    vectors = [e.float() - b for e in experts]
    if _is_matrix(name, vectors):
        merged = matrix_rule([v.double() for v in vectors], options).float()
    else:
        merged = torch.stack(vectors).mean(dim=0)
    return b + options.svd_scale * merged


def numerical_rank(s: torch.Tensor, tol: float, top: float | None = None) -> int:
    """How many of the singular values `s` (descending) are at least `tol` × `top` (default: the largest)."""
    top = float(s[0]) if top is None and len(s) else (top or 0.0)
    if tol <= 0 or top <= 0:
        return len(s) if top > 0 or tol <= 0 else 0
    return int((s >= tol * top).sum())


def tsv_matrix(vectors: list[torch.Tensor], options: MergeOptions) -> torch.Tensor:
    # each τ_i keeps its top r = ⌊min(m, n)/K⌋ singular triplets (fewer where its numerical rank is lower); the
    # stacked bases are orthogonalised (polar) and the kept singular values reused:
    # M = polar([U_1..U_K]) diag(S_1..S_K) polar([V_1..V_K])
    rank = min(vectors[0].shape) // len(vectors)
    us, ss, vs = [], [], []
    for vector in vectors:
        u, s, vh = torch.linalg.svd(vector, full_matrices=False)
        keep = min(rank, numerical_rank(s, options.svd_rank_tol))
        us.append(u[:, :keep])
        ss.append(s[:keep])
        vs.append(vh[:keep])
    if not sum(len(s) for s in ss):
        return torch.zeros_like(vectors[0])
    return polar(torch.cat(us, dim=1)) @ torch.diag(torch.cat(ss)) @ polar(torch.cat(vs, dim=0))


def iso_c_matrix(vectors: list[torch.Tensor], options: MergeOptions) -> torch.Tensor:
    # Σ_i τ_i = U S Vᵀ  →  M = U (mean(S) I) Vᵀ: every direction of the sum (its numerical rank), at one strength
    u, s, vh = torch.linalg.svd(sum(vectors), full_matrices=False)
    keep = numerical_rank(s, options.svd_rank_tol)
    if not keep:
        return torch.zeros_like(vectors[0])
    return (u[:, :keep] * s[:keep].mean()) @ vh[:keep]


def iso_cts_matrix(vectors: list[torch.Tensor], options: MergeOptions) -> torch.Tensor:
    """The top k = fraction·min(m, n) directions of Σ τ_i (the common subspace, k adjusted so the rest splits
    evenly), plus each task's top directions outside it; the union orthogonalised, at one common strength."""
    count, width = len(vectors), min(vectors[0].shape)
    common = int(width * options.iso_common_fraction)
    per_task = round((width - common) / count)
    common = width - per_task * count
    tol = options.svd_rank_tol
    u, s, vh = torch.linalg.svd(sum(vectors), full_matrices=False)
    common = min(common, numerical_rank(s, tol))
    us, ss, vs = [u[:, :common]], [s[:common]], [vh[:common]]
    for vector in vectors:
        rest = vector - us[0] @ (us[0].T @ vector)  # τ_i outside the common subspace
        ut, st, vth = torch.linalg.svd(rest, full_matrices=False)
        # numerical rank against τ_i's own scale: a rest that is only rounding noise adds no direction
        keep = min(per_task, numerical_rank(st, tol, top=float(torch.linalg.matrix_norm(vector, ord=2))))
        us.append(ut[:, :keep])
        ss.append(st[:keep])
        vs.append(vth[:keep])
    if not sum(len(x) for x in ss):
        return torch.zeros_like(vectors[0])
    return (polar(torch.cat(us, dim=1)) * torch.cat(ss).mean()) @ polar(torch.cat(vs, dim=0))


def tsv_m(base: torch.Tensor, experts: list[torch.Tensor], options: MergeOptions, name: str = "") -> torch.Tensor:
    """TSV-M (Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging", CVPR 2025)."""
    return _merge(base, experts, options, name, tsv_matrix)


def iso_c(base: torch.Tensor, experts: list[torch.Tensor], options: MergeOptions, name: str = "") -> torch.Tensor:
    """Iso-C (Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and Task-Specific
    Subspaces", ICML 2025): the sum of task vectors with a flat singular spectrum."""
    return _merge(base, experts, options, name, iso_c_matrix)


def iso_cts(base: torch.Tensor, experts: list[torch.Tensor], options: MergeOptions, name: str = "") -> torch.Tensor:
    """Iso-CTS (Marczak et al., ICML 2025): Iso-C's common subspace plus task-specific subspaces."""
    return _merge(base, experts, options, name, iso_cts_matrix)
