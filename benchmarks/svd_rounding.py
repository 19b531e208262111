"""How far rounding noise sets the SVD merges on the text demo's experts (not a test).

    python benchmarks/svd_rounding.py [--eps 1e-9] [--layers 0,3,5]

The demo's experts are rank-16 deltas stored in float32, so past the 16th singular value a task vector is rounding.
For a few weight matrices this perturbs every task vector by `--eps` per entry (Gaussian) and prints how far that
moves each SVD merge's task-vector part M (‖M(τ + ε) − M(τ)‖ / ‖M(τ)‖), and the share of ‖M‖ outside the span of
the tasks' top-16 singular directions, with every singular value kept (`svd_rank_tol` 0, the reference code's
convention) and with the default numerical rank (1e-5).
"""

from __future__ import annotations

import argparse

import torch
from safetensors.torch import load_file

from commerge_ui.config import MergeOptions
from commerge_ui.demo import DEMO_DIR, ensure_demo
from commerge_ui.methods_svd import iso_c_matrix, iso_cts_matrix, tsv_matrix

RULES = {"TSV-M": tsv_matrix, "Iso-C": iso_c_matrix, "Iso-CTS": iso_cts_matrix}
EXPERTS = ["tweets", "movies", "amazon", "nyt", "dialogue", "language"]


def outside_share(merged: torch.Tensor, vectors: list[torch.Tensor], rank: int = 16) -> float:
    """‖M − P M Q‖ / ‖M‖: the part of M outside the tasks' top-`rank` left and right singular subspaces."""
    us, vs = [], []
    for v in vectors:
        u, _, vh = torch.linalg.svd(v, full_matrices=False)
        us.append(u[:, :rank])
        vs.append(vh[:rank].T)
    p, _ = torch.linalg.qr(torch.cat(us, dim=1))
    q, _ = torch.linalg.qr(torch.cat(vs, dim=1))
    inside = p @ (p.T @ merged @ q) @ q.T
    return float((merged - inside).norm() / merged.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eps", type=float, default=1e-9)
    parser.add_argument("--layers", default="0,3,5")
    args = parser.parse_args()
    ensure_demo()
    base = load_file(DEMO_DIR / "models" / "base" / "model.safetensors")
    experts = [load_file(DEMO_DIR / "models" / name / "model.safetensors") for name in EXPERTS]
    generator = torch.Generator().manual_seed(0)
    print(f"{'matrix':<44}{'method':<9}{'tol':>7}{'moved by eps':>14}{'outside the span':>18}")
    for layer in args.layers.split(","):
        for part in ("attention.self.query", "intermediate.dense", "output.dense"):
            name = f"encoder.layer.{layer}.{part}.weight"
            key = next(k for k in experts[0] if k.endswith(name))
            b = base[name if name in base else key].double()
            vectors = [e[key].float().double() - b for e in experts]
            noisy = [v + args.eps * torch.randn(v.shape, generator=generator, dtype=torch.float64) for v in vectors]
            for method, rule in RULES.items():
                for tol in (0.0, 1e-5):
                    options = MergeOptions(svd_rank_tol=tol)
                    merged, perturbed = rule(vectors, options), rule(noisy, options)
                    moved = float((perturbed - merged).norm() / merged.norm())
                    print(f"{name:<44}{method:<9}{tol:>7g}{moved:>14.2e}{outside_share(merged, vectors):>18.3f}")


if __name__ == "__main__":
    main()
