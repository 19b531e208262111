"""Layer discovery inside a block: linear layers grouped by the input they read, in execution order."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

try:  # GPT-2 style Conv1D: y = x W + b with W stored as [d_in, d_out]
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover
    Conv1D = ()  # type: ignore[assignment]


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


@dataclass(frozen=True)
class LayerGroup:
    """Linear layers of one block that read the same input (e.g. q, k, v); solved in one step."""

    names: tuple[str, ...]  # module paths inside the block, in execution order

    def label(self, block_path: str) -> str:
        if len(self.names) == 1:
            return f"{block_path}.{self.names[0]}"
        stems = [n.rsplit(".", 1) for n in self.names]
        parents = {s[0] for s in stems if len(s) == 2}
        if len(parents) == 1 and all(len(s) == 2 for s in stems):
            return f"{block_path}.{parents.pop()}.({','.join(s[1] for s in stems)})"
        return f"{block_path}.({','.join(self.names)})"

    def modules(self, block: nn.Module) -> list[nn.Module]:
        return [block.get_submodule(n) for n in self.names]


def find_layer_groups(block: nn.Module, run: Callable[[], object]) -> list[LayerGroup]:
    """Run the block once (`run`) and group its linear layers by the tensor they read, in call order."""
    order: list[tuple[str, tuple]] = []
    alive: list[torch.Tensor] = []  # a freed input's memory could be reused by a later one with the same key

    def recorder(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            alive.append(x)
            order.append((name, (x.data_ptr(), tuple(x.shape), x.stride())))
        return hook

    handles = [m.register_forward_pre_hook(recorder(n)) for n, m in block.named_modules() if is_linear(m)]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    groups: dict[tuple, list[str]] = {}
    for name, key in order:
        members = groups.setdefault(key, [])
        if name not in members:
            members.append(name)
    return [LayerGroup(tuple(names)) for names in groups.values()]


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a linear layer, whichever way it stores its weight."""
    rows, cols = module.weight.shape
    return (rows, cols) if isinstance(module, Conv1D) else (cols, rows)


def has_bias(modules: list[nn.Module]) -> bool:
    return all(m.bias is not None for m in modules)


def group_weight(modules: list[nn.Module], with_bias: bool) -> torch.Tensor:
    """The group's weights as one matrix W [d_in (+1 bias row), Σ d_out] so that y = [x, 1] W."""
    columns = []
    for m in modules:
        w = m.weight.detach()
        w = w if isinstance(m, Conv1D) else w.T
        if with_bias:
            w = torch.cat([w, m.bias.detach()[None, :]], dim=0)
        columns.append(w)
    return torch.cat(columns, dim=1)


def set_group_weight(modules: list[nn.Module], merged: torch.Tensor, with_bias: bool) -> None:
    """Write W [d_in (+1), Σ d_out] back into the group's layers, in their own dtype and layout."""
    start = 0
    with torch.no_grad():
        for m in modules:
            width = linear_shape(m)[1]
            part = merged[:, start:start + width]
            start += width
            w = part[:-1] if with_bias else part
            m.weight.copy_(w if isinstance(m, Conv1D) else w.T)
            if with_bias:
                m.bias.copy_(part[-1])


@contextmanager
def pre_hooks(block: nn.Module, hooks: dict[str, Callable]):
    """Forward pre-hooks on named submodules, removed on exit."""
    handles = [block.get_submodule(name).register_forward_pre_hook(fn) for name, fn in hooks.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
