"""The closed-form solves against float64 references and their defining properties."""

import pytest
import torch

from commerge_ui.errors import MergeError
from commerge_ui.solve import augment, com_terms, mean_weight, regmean_terms, shrink, solve_group, task_scale


def _data(seed: int, n: int = 50, d: int = 6, out: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(d + 1, out, generator=g)


def _solve(terms_of, tasks, **kwargs):
    """terms_of(x, w, w_mean) per task, solved."""
    w_mean = mean_weight([w for _, w in tasks])
    return solve_group([terms_of(x, w, w_mean) for x, w in tasks], w_mean, **kwargs)


def test_regmean_matches_float64_reference():
    tasks = [_data(s) for s in range(3)]
    alpha = 0.9
    merged, warning = _solve(lambda x, w, m: task_scale(regmean_terms(augment(x, True), w, m, alpha), x.shape[0],
                                                         "tokens", 1.0), tasks)
    assert warning is None
    # W* = (Σ G̃_i)⁻¹ Σ G̃_i W_i, all in float64
    grams = [shrink(augment(x, True).double().T @ augment(x, True).double(), alpha) / x.shape[0] for x, _ in tasks]
    reference = torch.linalg.solve(sum(grams), sum(g @ w.double() for g, (_, w) in zip(grams, tasks)))
    torch.testing.assert_close(merged, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("out", [2, 30])  # outputs narrower than a third of the inputs take another route
def test_com_matches_float64_reference(out):
    g = torch.Generator().manual_seed(11)
    tasks = [(torch.randn(80, 12, generator=g), torch.randn(12, out, generator=g)) for _ in range(3)]
    x_hats = [x + 0.3 * torch.randn(x.shape, generator=g) for x, _ in tasks]
    alpha = 0.8
    w_mean = mean_weight([w for _, w in tasks])
    terms = [com_terms(xh, x, w, w_mean, alpha, "expert_outputs") for xh, (x, w) in zip(x_hats, tasks)]
    merged, _ = solve_group(terms, w_mean)
    # W* = (Σ shrink(X̂ᵀX̂))⁻¹ Σ shrink(X̂ᵀX) W_i, with X W_i the expert's own outputs
    lhs = sum(shrink(xh.double().T @ xh.double(), alpha) for xh in x_hats)
    rhs = sum(shrink(xh.double().T @ x.double(), alpha) @ w.double() for xh, (x, w) in zip(x_hats, tasks))
    torch.testing.assert_close(merged, torch.linalg.solve(lhs, rhs), rtol=1e-5, atol=1e-5)


def test_com_with_unshifted_inputs_equals_regmean():
    tasks = [_data(s) for s in range(3)]
    reg = _solve(lambda x, w, m: regmean_terms(augment(x, True), w, m, 0.8), tasks)[0]
    com = _solve(lambda x, w, m: com_terms(augment(x, True), augment(x, True), w, m, 0.8, "expert_outputs"), tasks)[0]
    torch.testing.assert_close(reg, com)


def test_com_recovers_expert_least_squares_target():
    # one task, α = 1: W* = argmin ‖X̂ W − X W_1‖², which is W_1 when X̂ = X
    x, w = _data(3)
    merged, _ = _solve(lambda x, w, m: com_terms(augment(x, True), augment(x, True), w, m, 1.0, "expert_outputs"),
                       [(x, w)])
    torch.testing.assert_close(merged.float(), w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ridge", [0.0, 0.05, 1.0])
def test_ridge_toward_average_keeps_identical_experts(ridge):
    x, w = _data(4)
    merged, _ = _solve(lambda x, w, m: com_terms(augment(x, True), augment(x, True), w, m, 1.0, "expert_outputs"),
                       [(x, w)] * 3, ridge=ridge)
    torch.testing.assert_close(merged.float(), w, rtol=1e-4, atol=1e-4)


def _ill_conditioned(seed: int, n: int = 400, d: int = 64) -> torch.Tensor:
    """Activations like a real LLM's: a few outlier channels 1000× the rest, and nearly collinear channels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x[:, :3] *= 1000.0
    x[:, 3:8] = x[:, 8:13] + 1e-3 * torch.randn(n, 5, generator=g)
    return x


@pytest.mark.parametrize("method", ["regmean", "com"])
def test_identical_experts_come_back_exactly_with_float32_statistics(method):
    x = _ill_conditioned(0)
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(1))
    w_mean = mean_weight([w, w, w])
    if method == "regmean":
        terms = [regmean_terms(x, w, w_mean, 0.9) for _ in range(3)]
    else:
        terms = [com_terms(x, x, w, w_mean, 0.9, "expert_outputs") for _ in range(3)]
    merged, _ = solve_group([task_scale(t, x.shape[0], "tokens", 1.0) for t in terms], w_mean)
    assert torch.equal(merged.float(), w)
    # The data is ill-conditioned enough to matter: the textbook form, B = Σ G̃ W formed in float32 and solved
    # in float64, is off by far more than float32 rounding.
    g = shrink(x.T @ x, 0.9)
    textbook = torch.linalg.solve(3 * g.double(), 3 * (g @ w).double())
    assert float((textbook.float() - w).abs().max() / w.abs().max()) > 1e-5


def test_singular_statistics_fall_back_to_ridge_with_warning():
    x = torch.ones(5, 4)  # rank one: every token the same
    w = torch.randn(5, 3)
    merged, warning = _solve(lambda x, w, m: regmean_terms(augment(x, True), w, m, 1.0),
                             [(x, w), (x, w + 1)], where="block.0.dense")
    assert torch.isfinite(merged).all()
    assert warning is not None and "block.0.dense" in warning and "ridge" in warning


def test_nan_statistics_stop_with_the_layer_name():
    x, w = _data(5)
    x[0, 0] = float("nan")
    with pytest.raises(MergeError, match="layer.3.q"):
        _solve(lambda x, w, m: regmean_terms(x, w, m, 0.9), [(x, w[:-1])], where="layer.3.q")


def test_token_normalisation_balances_tasks_of_different_lengths():
    x, w = _data(6, n=40)
    long = torch.cat([x, x, x])  # the same task seen with three times the tokens
    m = mean_weight([w[:-1]])
    a = task_scale(regmean_terms(x, w[:-1], m, 0.9), x.shape[0], "tokens", 1.0)
    b = task_scale(regmean_terms(long, w[:-1], m, 0.9), long.shape[0], "tokens", 1.0)
    torch.testing.assert_close(a.lhs, b.lhs, rtol=1e-5, atol=1e-5)
