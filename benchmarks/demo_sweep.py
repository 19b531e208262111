"""Experiment (not a test): which demo recipe makes the merge methods' scores differ?

    python benchmarks/demo_sweep.py --tasks sentiment,topic,tense,intent --recipes 80:2e-4,200:4e-4 \
        --calibration 64,256 --device cuda --out /tmp/sweep

Fine-tunes the demo's experts from all-MiniLM-L6-v2 with each recipe (steps:lr; cached under --out), merges
them with every method for each calibration sample count, and prints one row per (recipe, samples): the
experts' held-out accuracy, each method's average accuracy, and CoM's and RegMean's last-layer shift.
The samples come from the same seeded generators as assets/demo/data (calibration seed 1000 + the task's
index in TASKS, evaluation 2000 + index), so a row for the shipped recipe reproduces the shipped demo.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from commerge_ui.api import run_merge
from commerge_ui.config import parse_config
from commerge_ui.demo.build import RECIPE, base_model_folder, fine_tune, write_task_samples
from commerge_ui.demo.sentences import TASKS

METHODS = ["com", "regmean", "ties", "task_arithmetic", "average"]


def expert(out: Path, base: Path, task: str, steps: int, lr: float, device: str) -> Path:
    folder = out / f"{task}-{steps}-{lr:g}"
    if not (folder / "config.json").is_file():
        recipe = {**RECIPE, "steps": steps, "lr": lr}
        began = time.perf_counter()
        accuracy = fine_tune(base, task, folder, seed=RECIPE["seed"] + list(TASKS).index(task), recipe=recipe,
                             device=device)
        print(f"  fine-tuned {folder.name}: held-out {accuracy:.3f} in {time.perf_counter() - began:.0f}s", flush=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--recipes", default=f"{RECIPE['steps']}:{RECIPE['lr']}", help="steps:lr,steps:lr,...")
    parser.add_argument("--calibration", default="64", help="calibration sample counts, comma-separated")
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--lam", type=float, default=0.3)
    parser.add_argument("--base", type=Path, default=None, help="a base folder (default: the packaged MiniLM)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    base = args.base or base_model_folder()
    tasks = args.tasks.split(",")
    print(f"base {base}; tasks {tasks}", flush=True)
    header = ["recipe", "samples", "experts"] + METHODS + ["shift com", "shift regmean", "com s", "regmean s",
                                         "com MiB", "regmean MiB"]
    rows = []
    samples = {task: write_task_samples(args.out / "data", task) for task in tasks}
    for recipe in args.recipes.split(","):
        steps, lr = int(recipe.split(":")[0]), float(recipe.split(":")[1])
        folders = {task: expert(args.out, base, task, steps, lr, args.device) for task in tasks}
        experts = [{"name": task, "model": str(folders[task]), "calibration": str(samples[task][0]),
                    "evaluation": str(samples[task][1])} for task in tasks]
        for count in [int(c) for c in args.calibration.split(",")]:
            config = parse_config({"base": str(base), "family": "text-classification", "experts": experts,
                                   "methods": METHODS, "options": {"calibration_samples": count, "alpha": args.alpha,
                                                                   "lambda": args.lam, "max_length": 48, "seed": 0}})
            report = run_merge(config, device=args.device)
            expert_avg = sum(e["score"] for e in report.experts.values()) / len(tasks)

            def last(method: str) -> float:
                shift = report.methods[method].shift
                return sum(s[-1] for s in shift.values()) / len(shift)

            row = [recipe, str(count), f"{100 * expert_avg:.2f}"]
            row += [f"{100 * report.methods[m].average_score:.2f}" for m in METHODS]
            row += [f"{last('com'):.3f}", f"{last('regmean'):.3f}"]
            row += [f"{report.methods[m].seconds:.1f}" for m in ("com", "regmean")]
            row += [f"{report.methods[m].peak_memory_bytes / 2**20:.0f}" for m in ("com", "regmean")]
            rows.append(row)
            per_task = {m: {t: round(100 * s, 1) for t, s in report.methods[m].scores.items()} for m in METHODS}
            print(f"  {recipe} n={count} per task: {json.dumps(per_task)}", flush=True)
            print(f"  experts: {json.dumps({t: round(100 * e['score'], 1) for t, e in report.experts.items()})}",
                  flush=True)
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
