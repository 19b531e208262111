"""Forwards of one block over several streams, run in lockstep at chosen modules (docs/method.md §6).

A solve inside the merged pass (CoM's) must see every sample's inputs to a layer group before the group runs
on any of them; one forward over all rows does that, but runs their padding. Here each bucket's forward is a
thread, and the threads meet at the pre-hook of every stop module: once all have arrived, `meet` runs (the
solve), then all go on. One thread computes at a time (a baton), so the work is that of the forwards, run
one after another: the threads only let a forward wait mid-block, which a hook cannot do by itself.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch import nn

from .layers import pre_hooks


def lockstep(block: nn.Module, run: Callable[[int], torch.Tensor], count: int, stops: list[str],
             meet: Callable[[int, list[torch.Tensor]], None]) -> list[torch.Tensor]:
    """`run(i)` (a forward of `block`) for i < count, meeting at the pre-hook of each module in `stops`, in
    order: there `meet(k, inputs)` gets each forward's first argument at stop k, before any forward goes on.
    Returns each forward's output. An error in any forward or in `meet` stops them all and is raised here."""
    if count == 1:  # nothing to wait for
        return _single(block, run, stops, meet)
    baton = threading.Lock()
    arrived: list[torch.Tensor | None] = [None] * count
    state = threading.local()
    errors: list[BaseException] = []
    outputs: list[torch.Tensor | None] = [None] * count
    barriers = [threading.Barrier(count, action=_meeting(k, arrived, meet)) for k in range(len(stops))]

    def stop_at(k: int):
        def hook(module: nn.Module, args: tuple) -> None:
            if k in state.passed:  # a module run twice in one forward meets once
                return
            state.passed.add(k)
            arrived[state.index] = args[0]
            baton.release()
            try:
                barriers[k].wait()
            finally:
                baton.acquire()
        return hook

    def worker(index: int) -> None:
        state.index, state.passed = index, set()
        with baton:
            try:
                with torch.no_grad():
                    outputs[index] = run(index)
                if len(state.passed) < len(stops):  # the others would wait for it at a stop forever
                    missed = stops[min(set(range(len(stops))) - state.passed)]
                    raise RuntimeError(f"a forward ended without reaching '{missed}', where the others wait")
            except BaseException as error:  # noqa: BLE001 - handed to the caller below
                errors.append(error)
                for barrier in barriers:
                    barrier.abort()

    with pre_hooks(block, {name: stop_at(k) for k, name in enumerate(stops)}):
        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    first = next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)), None)
    if first is not None:
        raise first
    if errors:
        raise errors[0]
    return [out for out in outputs if out is not None]


def _meeting(k: int, arrived: list[torch.Tensor | None], meet: Callable[[int, list[torch.Tensor]], None]):
    def action() -> None:
        meet(k, [x for x in arrived if x is not None])
        arrived[:] = [None] * len(arrived)
    return action


def _single(block: nn.Module, run: Callable[[int], torch.Tensor], stops: list[str],
            meet: Callable[[int, list[torch.Tensor]], None]) -> list[torch.Tensor]:
    passed: set[int] = set()

    def stop_at(k: int):
        def hook(module: nn.Module, args: tuple) -> None:
            if k not in passed:
                passed.add(k)
                meet(k, [args[0]])
        return hook

    with pre_hooks(block, {name: stop_at(k) for k, name in enumerate(stops)}), torch.no_grad():
        return [run(0)]
