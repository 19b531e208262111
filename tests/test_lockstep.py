"""Forwards in lockstep (commerge_ui/lockstep.py): they meet at each stop before any runs it, and errors end
them all."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from commerge_ui.lockstep import lockstep


def _block() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


@pytest.mark.parametrize("count", [1, 5])
def test_each_stop_is_met_with_every_input_before_any_forward_runs_it(count):
    block = _block()
    inputs = [torch.randn(i + 2, 4) for i in range(count)]
    with torch.no_grad():
        plain = [block(x) for x in inputs]
    seen = []
    threads = threading.active_count()

    def meet(k: int, arrived: list[torch.Tensor]) -> None:
        seen.append((k, [x.shape[0] for x in arrived]))
        if k == 1:  # what a solve does: the module at this stop is rewritten before anyone runs it
            block[2].weight.mul_(2.0)

    outs = lockstep(block, lambda i: block(inputs[i]), count, ["0", "2"], meet)
    assert seen == [(0, [i + 2 for i in range(count)]), (1, [i + 2 for i in range(count)])]
    for out, before in zip(outs, plain):
        # every forward ran the rewritten last layer: out = 2·W·h + b, before = W·h + b
        assert torch.allclose(out - block[2].bias, 2 * (before - block[2].bias), atol=1e-6)
    assert not block[0]._forward_pre_hooks and not block[2]._forward_pre_hooks
    assert threading.active_count() == threads  # every forward's thread has ended


def test_an_error_in_a_meeting_ends_every_forward_and_is_raised():
    block = _block()

    def meet(k: int, arrived: list[torch.Tensor]) -> None:
        if k == 1:
            raise ValueError("the solve failed")

    ran = []

    def run(i: int) -> torch.Tensor:
        out = block(torch.randn(3, 4))
        ran.append(i)
        return out

    with pytest.raises(ValueError, match="the solve failed"):
        lockstep(block, run, 4, ["0", "2"], meet)
    assert ran == []  # no forward went past the failed meeting
    assert not block[0]._forward_pre_hooks and not block[2]._forward_pre_hooks


def test_an_error_in_one_forward_ends_the_others_and_is_raised():
    block = _block()
    met = []
    inputs = [torch.randn(3, 4), torch.randn(3, 5), torch.randn(3, 4)]  # the second does not fit the block

    with pytest.raises(RuntimeError, match="shapes|size"):
        lockstep(block, lambda i: block(inputs[i]), 3, ["0", "2"], lambda k, xs: met.append(k))
    assert met == [0]  # the first stop is met (the bad forward fails inside its first layer), the second never


def test_a_forward_that_skips_a_stop_is_an_error_not_a_hang():
    block = _block()

    def run(i: int) -> torch.Tensor:
        x = block[1](block[0](torch.randn(3, 4)))
        return block[2](x) if i != 1 else x  # the second forward never reaches the last layer

    with pytest.raises(RuntimeError, match="without reaching '2'"):
        lockstep(block, run, 3, ["0", "2"], lambda k, xs: None)
