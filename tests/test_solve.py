"""The closed-form solves against float64 references and their defining properties."""

import pytest
import torch

from commerge_ui.errors import MergeError
from commerge_ui.solve import augment, com_terms, regmean_terms, shrink, solve_group, task_scale


def _data(seed: int, n: int = 50, d: int = 6, out: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(d + 1, out, generator=g)


def test_regmean_matches_float64_reference():
    tasks = [_data(s) for s in range(3)]
    alpha = 0.9
    terms = [task_scale(regmean_terms(augment(x, True), w, alpha), x.shape[0], "tokens", 1.0) for x, w in tasks]
    merged, warning = solve_group(terms)
    assert warning is None
    # W* = (Σ G̃_i)⁻¹ Σ G̃_i W_i, all in float64
    grams = [shrink(augment(x, True).double().T @ augment(x, True).double(), alpha) / x.shape[0] for x, _ in tasks]
    reference = torch.linalg.solve(sum(grams), sum(g @ w.double() for g, (_, w) in zip(grams, tasks)))
    torch.testing.assert_close(merged, reference, rtol=1e-5, atol=1e-6)


def test_com_with_unshifted_inputs_equals_regmean():
    tasks = [_data(s) for s in range(3)]
    reg = [regmean_terms(augment(x, True), w, 0.8) for x, w in tasks]
    com = [com_terms(augment(x, True), augment(x, True), w, 0.8, "expert_outputs") for x, w in tasks]
    torch.testing.assert_close(solve_group(reg)[0], solve_group(com)[0])


def test_com_output_route_equals_cross_gram_route():
    x_hat, _ = _data(7)
    x, w = _data(8)
    xa, xha = augment(x, True), augment(x_hat, True)
    via_cross = com_terms(xha, xa, w, 0.7, "expert_outputs")
    via_outputs = com_terms(xha, xa, w, 0.7, "expert_outputs", y=xa @ w)
    torch.testing.assert_close(via_cross.rhs, via_outputs.rhs, rtol=1e-4, atol=1e-4)


def test_com_recovers_expert_least_squares_target():
    # one task, α = 1: W* = argmin ‖X̂ W − X W_1‖², which is W_1 when X̂ = X
    x, w = _data(3)
    merged, _ = solve_group([com_terms(augment(x, True), augment(x, True), w, 1.0, "expert_outputs")])
    torch.testing.assert_close(merged.float(), w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ridge", [0.0, 0.05, 1.0])
def test_ridge_toward_average_keeps_identical_experts(ridge):
    x, w = _data(4)
    terms = [com_terms(augment(x, True), augment(x, True), w, 1.0, "expert_outputs") for _ in range(3)]
    merged, _ = solve_group(terms, ridge=ridge, anchor=w)
    torch.testing.assert_close(merged.float(), w, rtol=1e-4, atol=1e-4)


def test_singular_statistics_fall_back_to_ridge_with_warning():
    x = torch.ones(5, 4)  # rank one: every token the same
    w = torch.randn(5, 3)
    merged, warning = solve_group([regmean_terms(augment(x, True), w, 1.0)], where="block.0.dense")
    assert torch.isfinite(merged).all()
    assert warning is not None and "block.0.dense" in warning and "ridge" in warning


def test_nan_statistics_stop_with_the_layer_name():
    x, w = _data(5)
    x[0, 0] = float("nan")
    with pytest.raises(MergeError, match="layer.3.q"):
        solve_group([regmean_terms(x, w[:-1], 0.9)], where="layer.3.q")


def test_token_normalisation_balances_tasks_of_different_lengths():
    x, w = _data(6, n=40)
    long = torch.cat([x, x, x])  # the same task seen with three times the tokens
    a = task_scale(regmean_terms(x, w[:-1], 0.9), x.shape[0], "tokens", 1.0)
    b = task_scale(regmean_terms(long, w[:-1], 0.9), long.shape[0], "tokens", 1.0)
    torch.testing.assert_close(a.lhs, b.lhs, rtol=1e-5, atol=1e-5)
