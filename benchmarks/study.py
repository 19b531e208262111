"""Study (not a test): CoM against RegMean and the data-free merges on the real-text demo, over seeds.

    python benchmarks/study.py [--config assets/demo/demo.yaml] [--seeds 0,1,2] [--samples 16,64,256]
                               [--out out/study] [--parts grid,free,options,heldout] [drift]

The same study runs on the language-model demo (`--config examples/smollm2-domains.yaml --samples 32,64
--parts grid,drift`): its scores are perplexities, summarised by their geometric mean over the domains (lower is
better), where the classifiers' accuracies are averaged and shown in percent.

One rule for every method: the config's options (the demo's: α 0.9, λ 0.3, TIES density 0.2, DARE drop 0.5,
SVD scale 1.0, max_length 64), never tuned per method. A seed picks each task's calibration subset (the experts
are fixed; for the LM demo, `python -m commerge_ui.demo lm --seed S --out DIR` trains another set, and a copy of
its config pointing at DIR runs the study on them). Parts:
- grid: calibration samples × seeds for the activation-based methods (CoM, CoM chain only, RegMean, RegMean++);
- free (with grid): the data-free methods at the first sample count (their weights do not depend on the
  calibration samples, only their measured shift does), at the first seed, or at every seed where a seed also
  draws the evaluation samples (the LM demo caps them: `evaluation_samples`), so that they are scored on the same
  draws as the other methods (the LM demo on 2 CPU cores: 14 min a seed for the eight);
- drift (with grid): besides each grid merge's calibration shift, its last block's output shift on the evaluation
  samples it is scored on (every report holds it: commerge_ui/heldout.py): does the correction carry over to
  text the merge never saw? A cell cached before reports held it is merged again;
- options: at the last sample count (64 for the results' table), each seed, one option changed at a time for CoM
  and RegMean alike (α 0.5, α 1.0, normalize none, CoM's ridge regularisation;
  --variants picks some). An option only CoM reads is run for CoM alone; RegMean's row is then its defaults run;
- heldout: at 64 samples, each seed, the last block's output shift on the evaluation texts (never calibrated on),
  for CoM, RegMean, RegMean++ and averaging.
Each run's report is kept as JSON under --out, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from commerge_ui.api import run_merge
from commerge_ui.config import MergeConfig, load_config
from commerge_ui.demo import DEMO_CONFIG, ensure_demo
from commerge_ui.report import in_percent, last_shift

REGRESSION = ["com", "com_chain", "regmean", "regmean_plusplus"]
DATA_FREE = ["task_arithmetic", "ties", "dare", "dare_ties", "tsv_m", "iso_c", "iso_cts", "average"]
VARIANTS = {"alpha 0.5": {"alpha": 0.5}, "alpha 1.0": {"alpha": 1.0}, "normalize none": {"normalize": "none"},
            "ridge": {"com_regularization": "ridge"}}
# Options that only CoM reads: RegMean's merge under them is the defaults' merge, so it is not run again.
COM_ONLY = {"ridge"}


def at(config: MergeConfig, methods: list[str], samples: int, seed: int, **options) -> MergeConfig:
    """The config with these methods, calibration samples, seed (and any other options) in place."""
    updated = config.options.model_copy(update={"calibration_samples": samples, "seed": seed, **options})
    return config.model_copy(update={"methods": methods, "options": updated})


def run(config: MergeConfig, out: Path, key: str, methods: list[str], samples: int, seed: int, **options) -> dict:
    """One merge (cached by key): the report as a dict."""
    path = out / f"{key}.json"
    if path.is_file():
        return json.loads(path.read_text())
    began = time.perf_counter()
    report = run_merge(at(config, methods, samples, seed, **options), device="cpu")
    data = json.loads(report.to_json())
    path.write_text(json.dumps(data))
    print(f"  {key}: {time.perf_counter() - began:.0f}s", flush=True)
    return data


def heldout_last(report: dict, cached: Path, method: str) -> float:
    """A method's held-out shift at the last block's output, mean over tasks: from the report (every run measures
    it, commerge_ui/heldout.py), or from what an older study measured on the saved models and cached."""
    if cached.is_file():
        return statistics.mean(json.loads(cached.read_text())[method].values())
    return statistics.mean(values[-1] for values in report["methods"][method]["heldout_shift"].values())


def held_for(report: dict, cached: Path, method: str) -> bool:
    """Whether this method ran in this report and its held-out shift is at hand (heldout_last can read it)."""
    if cached.is_file():
        return method in json.loads(cached.read_text())
    return bool(report["methods"].get(method, {}).get("heldout_shift"))


def heldout_known(report: dict, cached: Path) -> bool:
    """Whether a run's held-out shift is at hand for all its methods: in its report, or measured by an older study
    from saved models."""
    return all(held_for(report, cached, m) for m in report["methods"])


def summary(report: dict, scores: dict[str, float]) -> float:
    """One number for a model's per-task scores: mean accuracy, or the geometric mean of the perplexities."""
    values = list(scores.values())
    if in_percent(report):
        return statistics.mean(values)
    return statistics.geometric_mean(values)


def pm(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    values = [v * scale for v in values]
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--samples", default="16,64,256")
    parser.add_argument("--out", type=Path, default=Path("out/study"))
    parser.add_argument("--parts", default="grid,free,options,heldout")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="the options part's settings, comma-separated: " + ", ".join(VARIANTS))
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if Path(args.config).resolve() == DEMO_CONFIG:
        ensure_demo()
    config = load_config(args.config)
    seeds = [int(s) for s in args.seeds.split(",")]
    counts = [int(n) for n in args.samples.split(",")]
    parts = args.parts.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    tasks = [e.name for e in config.experts]

    def grid_run(n: int, s: int) -> dict:
        key = f"grid-{n}-{s}"
        report = run(config, args.out, key, REGRESSION, n, s)
        if "drift" in parts and not heldout_known(report, args.out / f"{key}-drift.json"):
            (args.out / f"{key}.json").unlink()  # cached before reports carried the held-out shift: merged again
            report = run(config, args.out, key, REGRESSION, n, s)
        return report

    grid = {(n, s): grid_run(n, s) for n in counts for s in seeds} if "grid" in parts else {}
    if grid:
        if "free" in parts:
            # The data-free merges' weights depend on no calibration sample: merged at the first count only (their
            # measured shift alone would differ at another), and at the first seed only unless a seed also draws
            # the evaluation samples (`evaluation_samples` caps them: the LM demo), where they are scored on each
            # seed's draw as the experts and the base are.
            drawn = seeds if config.options.evaluation_samples else seeds[:1]
            for s in drawn:
                key = f"free-{counts[0]}" + (f"-{s}" if s else "")  # seed 0's name as before: its cache holds
                free = run(config, args.out, key, DATA_FREE, counts[0], s)
                grid[(counts[0], s)]["methods"].update(free["methods"])
        first = grid[(counts[0], seeds[0])]
        shown = REGRESSION + (DATA_FREE if "free" in parts else [])
        percent = in_percent(first)
        scale = 100 if percent else 1
        label = "Average accuracy (%)" if percent else "Perplexity (geometric mean, lower is better)"

        # A seed draws the evaluation samples too where `evaluation_samples` caps them (the LM demo): the experts
        # and the base are scored on each seed's draw, so they are shown as the merges are, over the seeds.
        def experts(n: int, s: int) -> dict[str, float]:
            return {t: grid[(n, s)]["experts"][t]["score"] for t in tasks}

        def base(n: int, s: int) -> dict[str, float]:
            return {t: grid[(n, s)]["base"]["scores"][t] for t in tasks}

        def overall(n: int, s: int, m: str) -> float:
            return summary(first, grid[(n, s)]["methods"][m]["scores"])

        print(f"\n## {label} over {len(tasks)} tasks, and last-group shift; mean ± std over seeds {args.seeds}\n")
        print(f"experts {pm([summary(first, experts(counts[0], s)) for s in seeds], scale)}, base"
              + (" with each expert's head" if percent else "")
              + f" {pm([summary(first, base(counts[0], s)) for s in seeds], scale)}\n")
        print("| method | " + " | ".join(f"{'accuracy' if percent else 'perplexity'} ({n})" for n in counts)
              + " | " + " | ".join(f"shift ({n})" for n in counts) + " |")
        print("|---|" + "---|" * (2 * len(counts)))
        for m in shown:
            score, shift = [], []
            for n in counts:
                ran = [s for s in seeds if m in grid[(n, s)]["methods"]]
                score.append(pm([overall(n, s, m) for s in ran], scale) if ran else f"as at {counts[0]}")
                shift.append(pm([last_shift(grid[(n, s)]["methods"][m]) for s in ran], 1, 3) if ran else "")
            print(f"| {m} | " + " | ".join(score + shift) + " |")
        unit = "points" if percent else "perplexity"
        for rival in REGRESSION[1:]:
            per_count = []
            for n in counts:
                diffs = [overall(n, s, "com") - overall(n, s, rival) for s in seeds]
                better = [d >= 0 if percent else d <= 0 for d in diffs]
                per_count.append(f"{n}: {pm(diffs, scale)} (CoM as good or better in {sum(better)}/{len(diffs)})")
            print(f"\nCoM − {rival}, {unit} per seed: " + "; ".join(per_count))
        for n in counts:
            print(f"\n## Per task at {n} samples ({'accuracy %' if percent else 'perplexity'}, mean over seeds)\n")
            print("| | " + " | ".join(tasks) + " | merge s |")
            print("|---|" + "---|" * (len(tasks) + 1))
            print(("| base + expert head | " if percent else "| base | ")
                  + " | ".join(f"{scale * statistics.mean(base(n, s)[t] for s in seeds):.1f}" for t in tasks) + " |")
            print("| expert | " + " | ".join(f"{scale * statistics.mean(experts(n, s)[t] for s in seeds):.1f}"
                                             for t in tasks) + " |")
            for m in shown:
                runs = [grid[(n, s)]["methods"][m] for s in seeds if m in grid[(n, s)]["methods"]]
                if runs:
                    print(f"| {m} | " + " | ".join(f"{scale * statistics.mean(r['scores'][t] for r in runs):.1f}"
                                                   for t in tasks)
                          + f" | {statistics.mean(r['seconds'] for r in runs):.0f} |")

        if "drift" in parts:
            print("\n## Last block's output shift, held-out against calibration (mean over tasks, ± std over seeds)\n")
            print("| method | " + " | ".join(f"held-out ({n}) | calibration ({n})" for n in counts) + " |")
            print("|---|" + "---|" * (2 * len(counts)))
            for m in shown:
                cells = []
                for n in counts:
                    ran = [s for s in seeds if held_for(grid[(n, s)], args.out / f"grid-{n}-{s}-drift.json", m)]
                    held = [heldout_last(grid[(n, s)], args.out / f"grid-{n}-{s}-drift.json", m) for s in ran]
                    calib = [statistics.mean(b[-1] for b in grid[(n, s)]["methods"][m]["block_shift"].values())
                             for s in ran]
                    cells += [pm(held, 1, 3), pm(calib, 1, 3)] if ran else ["", ""]
                print(f"| {m} | " + " | ".join(cells) + " |")

    if "options" in parts:
        n = counts[-1]
        rows = {"defaults": [run(config, args.out, f"grid-{n}-{s}", REGRESSION, n, s) for s in seeds]}
        percent = in_percent(rows["defaults"][0])
        scale, what = (100, "accuracy") if percent else (1, "perplexity")
        pair = ["com", "regmean"]
        for name in variants:
            changed = ["com"] if name in COM_ONLY else pair
            rows[name] = []
            for s, defaults in zip(seeds, rows["defaults"]):
                report = run(config, args.out, f"option-{n}-{name.replace(' ', '_')}-{s}", changed, n, s,
                             **VARIANTS[name])
                for m in pair:  # a method the option does not change: its merge under the defaults
                    report["methods"].setdefault(m, defaults["methods"][m])
                rows[name].append(report)
        unit = "average accuracy %" if percent else "geometric-mean perplexity"
        print(f"\n## One option changed, {n} samples ({unit}, last-group shift, held-out shift of the last block; "
              "mean ± std over seeds)\n")
        print(f"| setting | CoM {what} | RegMean {what} | CoM shift | RegMean shift | CoM held-out | RegMean held-out |")
        print("|---|---|---|---|---|---|---|")
        for name, reports in rows.items():
            score = {m: [summary(r, r["methods"][m]["scores"]) for r in reports] for m in pair}
            shift = {m: [last_shift(r["methods"][m]) for r in reports] for m in pair}
            cached = [args.out / f"grid-{n}-{s}-drift.json" if name == "defaults" else args.out / "-" for s in seeds]
            held = {m: [heldout_last(r, c, m) if heldout_known(r, c) else float("nan") for r, c in zip(reports, cached)]
                    for m in pair}
            print(f"| {name} | {pm(score['com'], scale)} | {pm(score['regmean'], scale)} | "
                  f"{pm(shift['com'], 1, 3)} | {pm(shift['regmean'], 1, 3)} | {pm(held['com'], 1, 3)} | "
                  f"{pm(held['regmean'], 1, 3)} |")

    if "heldout" in parts:
        saved = ["com", "regmean", "regmean_plusplus", "average"]
        reports = {s: run(config, args.out, f"heldout-{s}", saved, 64, s) for s in seeds}
        print("\n## Shift on the evaluation texts (last block output; mean over tasks, ± std over seeds)\n")
        print("| method | held-out shift | calibration shift (block output) |")
        print("|---|---|---|")
        for m in saved:
            held = [heldout_last(reports[s], args.out / f"heldout-{s}-shift.json", m) for s in seeds]
            calib = [statistics.mean(b[-1] for b in reports[s]["methods"][m]["block_shift"].values()) for s in seeds]
            print(f"| {m} | {pm(held, 1, 3)} | {pm(calib, 1, 3)} |")

if __name__ == "__main__":
    main()
