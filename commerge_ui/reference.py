"""A naive CoM (both readings), RegMean and RegMean++, independent of the engine, for checking it (tests,
benchmarks/peer_check.py).

Every expert is run whole for its inputs X_i; for CoM the merged model is re-run from the embeddings for
every layer group, and for RegMean++ a copy of the merged model with expert i's block swapped in is run for
every block: quadratic in depth, and sharing no code with engine.py or solve.py. Float64 throughout.
"""

from __future__ import annotations

import copy

import torch

from .config import MergeOptions

BERT_GROUPS = [("attention.self.query", "attention.self.key", "attention.self.value"), ("attention.output.dense",),
               ("intermediate.dense",), ("output.dense",)]
GPT2_GROUPS = [("attn.c_attn",), ("attn.c_proj",), ("mlp.c_fc",), ("mlp.c_proj",)]


def _weight(module: torch.nn.Module, with_bias: bool) -> torch.Tensor:
    """[d_in (+1), d_out] so that y = [x, 1] W, whichever way the layer stores it."""
    w = module.weight.detach().double()
    w = w if type(module).__name__ == "Conv1D" else w.T
    return torch.cat([w, module.bias.detach().double()[None]]) if with_bias else w


def _write(modules: list[torch.nn.Module], merged: torch.Tensor, with_bias: bool) -> None:
    start = 0
    with torch.no_grad():
        for m in modules:
            width = m.weight.shape[1] if type(m).__name__ == "Conv1D" else m.weight.shape[0]
            part = merged[:, start:start + width]
            start += width
            w = part[:-1] if with_bias else part
            m.weight.copy_(w if type(m).__name__ == "Conv1D" else w.T)
            if with_bias:
                m.bias.copy_(part[-1])


def _inputs_of(model: torch.nn.Module, path: str, batch: dict, mask: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = model.get_submodule(path).register_forward_pre_hook(lambda m, a: seen.append(a[0][mask].double()))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    return seen[0]


def without_first_tokens(mask: torch.Tensor, n: int) -> torch.Tensor:
    """`mask` [rows, tokens] with each row's first n marked tokens unmarked (the `sink_tokens` option)."""
    out = mask.clone()
    for row in range(len(out)):
        for column in out[row].nonzero().flatten()[:n]:
            out[row, column] = False
    return out


def naive(method: str, merged: torch.nn.Module, experts: list[torch.nn.Module], blocks: str, layers: int,
          groups: list[tuple[str, ...]], batches: list[tuple[dict, torch.Tensor]], bias: str,
          alpha: float = 0.9, floor: float = MergeOptions().ridge_floor) -> None:
    """`merged` holds the experts' average; its block groups are overwritten one by one, in network order.

    CoM:       W* = (Σ shrink(X̂ᵀX̂)/n_i + μI)⁻¹ (Σ shrink(X̂ᵀX) W_i / n_i + μW̄)   (X̂ from the partly merged model)
    CoM chain: W* = (Σ shrink(X̂ᵀX̂)/n_i + μI)⁻¹ (Σ shrink(X̂ᵀX̂) W_i / n_i + μW̄)
    RegMean:   W* = (Σ shrink(XᵀX)/n_i + μI)⁻¹ (Σ shrink(XᵀX) W_i / n_i + μW̄)
    RegMean++: RegMean, with X_i read in expert i's block fed the merged model's input to that block
               (captured for the whole block before any of its groups is written)
    μ = floor × the mean diagonal of the left-hand sum (the `ridge_floor` option); W̄ the experts' mean.
    """
    def shrink(g):
        return alpha * g + (1 - alpha) * torch.diag(torch.diagonal(g))

    for layer in range(layers):
        swapped = []
        if method == "regmean_plusplus":
            for expert, (batch, mask) in zip(experts, batches):
                hybrid = copy.deepcopy(merged)
                block = f"{blocks}.{layer}"
                hybrid.get_submodule(block).load_state_dict(expert.get_submodule(block).state_dict())
                swapped.append([_inputs_of(hybrid, f"{block}.{g[0]}", batch, mask) for g in groups])
        for index, group in enumerate(groups):
            paths = [f"{blocks}.{layer}.{name}" for name in group]
            regress = bias == "regress" and all(merged.get_submodule(p).bias is not None for p in paths)
            lhs, rhs, w_sum = 0, 0, 0
            for k, (expert, (batch, mask)) in enumerate(zip(experts, batches)):
                x = swapped[k][index] if swapped else _inputs_of(expert, paths[0], batch, mask)
                x_hat = _inputs_of(merged, paths[0], batch, mask) if method in ("com", "com_chain") else x
                if regress:
                    x, x_hat = (torch.cat([t, t.new_ones(len(t), 1)], dim=1) for t in (x, x_hat))
                w = torch.cat([_weight(expert.get_submodule(p), regress) for p in paths], dim=1)
                lhs = lhs + shrink(x_hat.T @ x_hat) / len(x)
                target = x_hat if method == "com_chain" else x  # the chain alone: X̂_i W_i, not X_i W_i
                rhs = rhs + shrink(x_hat.T @ target) @ w / len(x)
                w_sum = w_sum + w
            mu = floor * torch.diagonal(lhs).mean()
            eye = torch.eye(len(lhs), dtype=lhs.dtype)
            solved = torch.linalg.solve(lhs + mu * eye, rhs + mu * w_sum / len(experts))
            _write([merged.get_submodule(p) for p in paths], solved, regress)


def averaged(models: list[torch.nn.Module], into: torch.nn.Module) -> torch.nn.Module:
    states = [m.state_dict() for m in models]
    into.load_state_dict({k: torch.stack([s[k].double() for s in states]).mean(0).float() for k in states[0]})
    return into


def relative_difference(ours: dict, reference: dict, prefix: str) -> float:
    """‖ours − reference‖_F / ‖reference‖_F over the tensors whose names start with `prefix`."""
    names = [n for n in reference if n.startswith(prefix) and n in ours]
    diff = sum(float((ours[n].double() - reference[n].double()).norm() ** 2) for n in names) ** 0.5
    return diff / sum(float(reference[n].double().norm() ** 2) for n in names) ** 0.5
