"""Draw reports' covariate-shift curves to a PNG (the figures of README and docs/results.md; needs matplotlib). Methods from several
reports of the same model and samples (e.g. the study's regression and data-free runs) share one plot.

    python scripts/shift_figure.py out/demo/report.json [more reports ...] assets/demo_shift.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"com": ("Chain of Merges", "#d62728", 2.6), "regmean": ("RegMean", "#1f77b4", 2.0),
         "regmean_plusplus": ("RegMean++", "#ff7f0e", 2.0),
         "average": ("Average", "#7f7f7f", 1.2), "task_arithmetic": ("Task arithmetic", "#2ca02c", 1.2),
         "ties": ("TIES", "#9467bd", 1.2)}


def main(report_paths: list[str], png_path: str) -> None:
    reports = [json.load(open(p)) for p in report_paths]
    report = reports[0]
    layers = report["layers"]
    methods = {name: m for r in reports for name, m in r["methods"].items()}
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=120)
    for name, method in methods.items():
        label, colour, width = STYLE.get(name, (name, None, 1.0))
        curves = list(method["shift"].values())
        mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(layers))]
        ax.plot(range(len(layers)), mean, label=label, color=colour, linewidth=width, marker="o", markersize=3,
                linestyle="-" if name in STYLE else ":")
    blocks = sorted({l.split(".")[2] for l in layers}, key=int)
    per_block = len(layers) // len(blocks)
    for b in range(1, len(blocks)):
        ax.axvline(b * per_block - 0.5, color="#dddddd", linewidth=0.8, zorder=0)
    ax.set_xticks([b * per_block + (per_block - 1) / 2 for b in range(len(blocks))], [f"block {b}" for b in blocks])
    ax.set_ylabel("input shift ‖X̂ − X‖ / ‖X‖\n(mean over tasks)")
    ax.set_title("Covariate shift at each layer group's input, merged model vs expert (calibration tokens)")
    ax.legend(frameon=False, fontsize=8, ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)


if __name__ == "__main__":
    main(sys.argv[1:-1], sys.argv[-1])
