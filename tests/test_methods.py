"""Data-free rules: average, task arithmetic and TIES on hand-checked tensors."""

import torch

from commerge_ui.config import MergeOptions
from commerge_ui.methods import METHODS, average, task_arithmetic, ties


def test_average_and_task_arithmetic():
    base = torch.zeros(3)
    experts = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])]
    torch.testing.assert_close(average(base, experts, MergeOptions()), torch.tensor([2.0, 2.0, 2.0]))
    ta = task_arithmetic(base, experts, MergeOptions(**{"lambda": 0.5}))
    torch.testing.assert_close(ta, torch.tensor([2.0, 2.0, 2.0]))


def test_ties_trims_elects_sign_and_sums_agreeing_values():
    base = torch.zeros(4)
    experts = [torch.tensor([4.0, -1.0, 0.1, 2.0]), torch.tensor([2.5, 5.0, -0.1, -3.0])]
    merged = ties(base, experts, MergeOptions(**{"lambda": 1.0, "ties_density": 0.5}))
    # kept: e1 {4, 2}, e2 {5, -3}; elected signs +, +, 0, - (2 - 3 < 0), so the 2 at index 3 drops
    torch.testing.assert_close(merged, torch.tensor([4.0, 5.0, 0.0, -3.0]))


def test_ties_keeps_exactly_k_with_ties_at_the_threshold_and_a_zero_sum_elects_plus():
    base = torch.zeros(6)
    experts = [torch.tensor([1.0, -1.0, 1.0, 1.0, 0.5, 3.0]),   # four entries tie at |1| for 2 places left
               torch.tensor([-2.0, 2.0, 0.0, 0.0, 0.0, -3.0])]
    merged = ties(base, experts, MergeOptions(**{"lambda": 1.0, "ties_density": 0.5}))  # k = ⌊0.5·6⌋ = 3
    # by hand: e1 keeps 3 (index 5) and the first two of the tied ones (indices 0, 1): [1, -1, 0, 0, 0, 3];
    # e2 keeps -3, -2, 2 (indices 5, 0, 1). Sums: [-1, 1, 0, 0, 0, 0] → signs [-, +, +, +, +, +]
    # (a zero sum elects +): index 0 keeps -2, index 1 keeps 2, index 5 keeps 3 (the -3 disagrees).
    torch.testing.assert_close(merged, torch.tensor([-2.0, 2.0, 0.0, 0.0, 0.0, 3.0]))
    assert ties(base, experts, MergeOptions(**{"lambda": 1.0, "ties_density": 0.4})).count_nonzero() <= 2


def test_registry_marks_regression_methods():
    assert {n for n, m in METHODS.items() if m.regression} == {"com", "regmean"}
    assert not METHODS["average"].needs_base and METHODS["ties"].needs_base


def test_linear_rules_stream_the_experts_and_match_the_stacked_rule():
    torch.manual_seed(0)
    base = torch.randn(5, 7)
    experts = [base + torch.randn(5, 7) for _ in range(4)]
    options = MergeOptions(**{"lambda": 0.4})
    for name, rule in (("average", average), ("task_arithmetic", task_arithmetic)):
        read = []

        def one_at_a_time():
            for e in experts:
                read.append(e)
                yield e.to(torch.bfloat16)

        merged = METHODS[name].merge_tensor(base, one_at_a_time(), options)
        assert merged.dtype == torch.bfloat16 and len(read) == 4
        expected = rule(base, [e.to(torch.bfloat16) for e in experts], options)
        torch.testing.assert_close(merged.float(), expected.to(torch.bfloat16).float())
    before = [e.clone() for e in experts]
    METHODS["average"].merge_tensor(base, experts, options)  # float32 experts: summed into a copy, not in place
    assert all(torch.equal(a, b) for a, b in zip(before, experts))
    ties_merged = METHODS["ties"].merge_tensor(base, iter(experts), options)  # a non-linear rule takes a list
    torch.testing.assert_close(ties_merged, ties(base, experts, options))
