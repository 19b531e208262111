"""Draw a report's covariate-shift curves to a PNG (used for README's figure; needs matplotlib).

    python scripts/shift_figure.py out/demo/report.json assets/demo_shift.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STYLE = {"com": ("Chain of Merges", "#d62728", 2.6), "regmean": ("RegMean", "#1f77b4", 2.0),
         "average": ("Average", "#7f7f7f", 1.2), "task_arithmetic": ("Task arithmetic", "#2ca02c", 1.2),
         "ties": ("TIES", "#9467bd", 1.2)}


def main(report_path: str, png_path: str) -> None:
    report = json.load(open(report_path))
    layers = report["layers"]
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=120)
    for name, method in report["methods"].items():
        label, colour, width = STYLE.get(name, (name, None, 1.0))
        curves = list(method["shift"].values())
        mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(layers))]
        ax.plot(range(len(layers)), mean, label=label, color=colour, linewidth=width, marker="o", markersize=3)
    blocks = sorted({l.split(".")[2] for l in layers}, key=int)
    per_block = len(layers) // len(blocks)
    for b in range(1, len(blocks)):
        ax.axvline(b * per_block - 0.5, color="#dddddd", linewidth=0.8, zorder=0)
    ax.set_xticks([b * per_block + (per_block - 1) / 2 for b in range(len(blocks))], [f"block {b}" for b in blocks])
    ax.set_ylabel("input shift ‖X̂ − X‖ / ‖X‖\n(mean over tasks)")
    ax.set_title("Covariate shift at each layer group's input, merged model vs expert (calibration tokens)")
    ax.legend(frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)


if __name__ == "__main__":
    main(*sys.argv[1:3])
