"""TSV-M, Iso-C and Iso-CTS against what their definitions imply, checked by hand-built matrices."""

import torch

from commerge_ui.config import MergeOptions
from commerge_ui.methods_svd import iso_c, iso_cts, polar, tsv_m

OPTIONS = MergeOptions()  # svd_scale 1.0


def orthonormal(n: int, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return q


def test_polar_gives_orthonormal_columns_and_keeps_an_orthonormal_matrix():
    a = torch.randn(6, 3, dtype=torch.float64)
    torch.testing.assert_close(polar(a).T @ polar(a), torch.eye(3, dtype=torch.float64))
    q = orthonormal(5, 0)[:, :3]
    torch.testing.assert_close(polar(q), q)


def test_tsv_of_task_vectors_with_orthogonal_low_rank_supports_is_their_sum():
    u, v = orthonormal(6, 1), orthonormal(6, 2)
    # task 1 lives on directions 0-2, task 2 on 3-5: each rank 3 = 6 / 2 tasks, mutually orthogonal
    tau1 = u[:, :3] @ torch.diag(torch.tensor([5.0, 2.0, 1.0], dtype=torch.float64)) @ v[:, :3].T
    tau2 = u[:, 3:] @ torch.diag(torch.tensor([4.0, 3.0, 0.5], dtype=torch.float64)) @ v[:, 3:].T
    base = torch.randn(6, 6)
    merged = tsv_m(base, [base + tau1.float(), base + tau2.float()], OPTIONS, "layer.weight")
    torch.testing.assert_close(merged, base + (tau1 + tau2).float(), atol=1e-5, rtol=1e-5)


def test_tsv_keeps_only_each_tasks_top_share_of_the_rank():
    u, v = orthonormal(4, 3), orthonormal(4, 4)

    def of(values, cols):
        return u[:, cols] @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v[:, cols].T

    tau1 = of([4.0, 3.0, 2.0, 1.0], [0, 1, 2, 3])  # full rank; keeps its top 4 / 2 tasks = 2 directions
    tau2 = of([5.0, 0.5], [2, 3])  # lives where τ1 is weakest
    merged = tsv_m(torch.zeros(4, 4), [tau1.float(), tau2.float()], OPTIONS, "w").double()
    # by hand: τ1's directions 2 and 3 (values 2 and 1) are dropped, not added to τ2's
    torch.testing.assert_close(merged, of([4.0, 3.0, 5.0, 0.5], [0, 1, 2, 3]), atol=1e-5, rtol=1e-5)


def test_iso_c_of_one_task_vector_keeps_its_singular_vectors_at_their_mean_value():
    u, v = orthonormal(5, 5), orthonormal(4, 6)
    s = torch.tensor([6.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    tau = u[:, :4] @ torch.diag(s) @ v.T
    merged = iso_c(torch.zeros(5, 4), [tau.float()], OPTIONS, "w").double()
    expected = u[:, :4] @ (torch.eye(4, dtype=torch.float64) * s.mean()) @ v.T  # by hand: mean 3.0
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.linalg.svdvals(merged), torch.full((4,), 3.0, dtype=torch.float64))


def test_iso_cts_with_an_all_common_subspace_is_iso_c():
    torch.manual_seed(0)
    base = torch.randn(8, 6)
    experts = [base + torch.randn(8, 6) for _ in range(3)]
    all_common = MergeOptions(iso_common_fraction=1.0)
    torch.testing.assert_close(iso_cts(base, experts, all_common, "w"), iso_c(base, experts, all_common, "w"),
                               atol=1e-5, rtol=1e-5)
    merged = iso_cts(base, experts, MergeOptions(), "w") - base  # the default: 0.8 common, 3 × 0.4 → 1 each
    values = torch.linalg.svdvals(merged.double())
    torch.testing.assert_close(values, torch.full_like(values, float(values.mean())), atol=1e-4, rtol=1e-4)


def test_biases_embeddings_and_thin_matrices_get_the_mean_task_vector():
    base = torch.zeros(3)
    experts = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 0.0, 1.0])]
    for rule in (tsv_m, iso_c, iso_cts):
        torch.testing.assert_close(rule(base, experts, OPTIONS, "bias"), torch.tensor([2.0, 1.0, 2.0]))
        table = [torch.randn(10, 4), torch.randn(10, 4)]
        torch.testing.assert_close(rule(torch.zeros(10, 4), table, OPTIONS, "embeddings.word_embeddings.weight"),
                                   (table[0] + table[1]) / 2)


def low_rank_experts(noise: float, seed: int = 7) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A 96×64 base and three experts whose task vectors have rank 4 (as the text demo's rank-16 deltas), plus
    entry noise of `noise` × the task vector's typical entry: what storing base + delta in float32 leaves."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(96, 64, generator=generator, dtype=torch.float64)
    experts = []
    for _ in range(3):
        tau = torch.randn(96, 4, generator=generator, dtype=torch.float64) @ \
            torch.randn(4, 64, generator=generator, dtype=torch.float64) * 0.05
        jitter = noise * tau.abs().mean() * torch.randn(96, 64, generator=generator, dtype=torch.float64)
        experts.append(base + tau + jitter)
    return base, experts


def test_svd_merges_of_low_rank_task_vectors_are_not_set_by_rounding_noise():
    """Noise of float32 rounding size (1e-7 of an entry) must not move a merge: with the numerical rank (the
    default `svd_rank_tol` 1e-5) the merges with and without it agree to 1e-5 relative, where the change a
    perturbation of ε makes to the kept singular subspaces is of order ε / (the smallest kept σ), ~1e-6 here. Kept
    whole (tol 0, the reference code's convention), the noise directions are task directions to TSV-M and are
    raised to the mean singular value by Iso-C, and the merge moves by far more."""
    base, clean = low_rank_experts(0.0)
    _, noisy = low_rank_experts(1e-7)
    rounding = MergeOptions(svd_rank_tol=0.0)
    for method in (tsv_m, iso_c, iso_cts):
        def relative(options: MergeOptions) -> float:
            a = method(base, clean, options, "layer.weight").double() - base
            b = method(base, noisy, options, "layer.weight").double() - base
            return float((a - b).norm() / a.norm())

        assert relative(OPTIONS) < 1e-5, method.__name__
        assert relative(rounding) > 1e-2, method.__name__
