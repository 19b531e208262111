"""Benchmark (not a test): float32 against float64 statistics for RegMean and CoM, on real experts.

    python benchmarks/stat_dtype.py [CONFIG] [--device cpu]

Merges the config (default: the demo) once per statistics dtype and prints, per method, the relative
difference of the merged weights (float64 taken as the reference), the change in average score, and the
merge time of each. The default `gram_dtype` is chosen from these figures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from safetensors.torch import load_file

from commerge_ui.api import run_merge
from commerge_ui.config import load_config
from commerge_ui.demo import DEMO_CONFIG, ensure_demo
from commerge_ui.reference import relative_difference

METHODS = ["com", "regmean"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", nargs="?", default=str(DEMO_CONFIG))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if Path(args.config).resolve() == DEMO_CONFIG:
        ensure_demo()
    config = load_config(args.config)
    reports, weights = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float64", "float32"):
            options = config.options.model_copy(update={"gram_dtype": dtype})
            out = Path(tmp) / dtype
            reports[dtype] = run_merge(config.model_copy(update={"methods": METHODS, "options": options}),
                                       out_dir=out, save=METHODS, device=args.device)
            weights[dtype] = {m: {k: v for f in sorted((out / m).glob("*.safetensors"))
                                  for k, v in load_file(str(f)).items()} for m in METHODS}
    print(f"device {args.device}; weights compared over every merged tensor, float64 statistics as reference")
    print("| method | relative weight difference | average score float64 / float32 | merge s float64 / float32 |")
    print("|---|---|---|---|")
    for m in METHODS:
        r64, r32 = reports["float64"].methods[m], reports["float32"].methods[m]
        rel = relative_difference(weights["float32"][m], weights["float64"][m], "")
        print(f"| {m} | {rel:.1e} | {r64.average_score:.4f} / {r32.average_score:.4f} | "
              f"{r64.seconds:.1f} / {r32.seconds:.1f} |")


if __name__ == "__main__":
    main()
